"""A real, throw-away OpenStack cloud on loopback for Atrium's tests.

:class:`LocalCloud` starts Keystone, Glance, Placement, Neutron and Nova (API, conductor,
scheduler, compute with the harness driver) from the services venv built by
``install.sh``, against the machine's PostgreSQL and RabbitMQ:

* fresh databases ``atrium_os_<suffix>_*`` and a fresh RabbitMQ vhost per cloud, dropped
  by :meth:`LocalCloud.stop` (and by the next start if a crashed run left them behind);
* every API on a free 127.0.0.1 port; state, configs and logs in ``/tmp/atrium-openstack/
  <suffix>`` (``ATRIUM_OS_RUN_BASE``), removed on stop unless ``ATRIUM_OS_KEEP=1``. Nothing
  is written anywhere else but the harness cache (services venv, Keystone's key
  repositories): every option a service could default to a host path (/etc/keystone,
  /var/lib/nova, ...) is set in ``etc/*.conf`` (checked by ``system_paths.py``);
* bootstrap: an ``atrium`` project and user (member role, unlimited quotas), a normal and
  a too-big flavour, a tiny public image, a network with a 127.42.0.0/24 subnet, and a
  security group opening the JupyterLab port.

:meth:`LocalCloud.start` returns :class:`CloudSettings` for openstacksdk.
Manual use: ``python -m tests.harness.openstack.cloud`` starts a cloud, prints its
settings and stops it on Ctrl-C.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import string
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tests.harness.openstack import bootstrap, keystone_keys, procs, schema
from tests.harness.openstack.bootstrap import CloudSettings
from tests.harness.openstack.procs import HarnessError

HERE = Path(__file__).resolve().parent
RUN_BASE = Path(os.environ.get("ATRIUM_OS_RUN_BASE", "/tmp/atrium-openstack"))
PASSWORD = "secret"  # service users' password: loopback-only throw-away cloud
SERVICE_USERS = ("nova", "placement", "glance", "neutron")
# Keystone's template database holds the catalogue with these placeholder hosts; each cloud
# rewrites them to its own ports. Bump SEED_VERSION when _seed_keystone changes.
SEED_VERSION = "1"
PLACEHOLDER = "http://{}.atrium-harness.invalid"
CATALOGUE = {  # service type -> (service name = key of LocalCloud.ports, URL path)
    "compute": ("nova", "/v2.1"),
    "placement": ("placement", ""),
    "image": ("glance", ""),
    "network": ("neutron", ""),
}


# Where services would keep state by default: a cloud must leave these as it found them.
_SERVICES = ("keystone", "nova", "glance", "neutron", "placement")
HOST_PATHS = (*(f"/etc/{name}" for name in _SERVICES),
              *(f"/var/{kind}/{name}" for kind in ("lib", "log", "run") for name in _SERVICES),
              "/tmp/staging")


def default_venv() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return Path(os.environ.get("ATRIUM_OPENSTACK_VENV", cache / "atrium/openstack-venv"))


def install(timeout: float = 900) -> Path:
    """Run install.sh (a no-op when the cached venv is current); return the venv path."""
    proc = subprocess.run(["bash", str(HERE / "install.sh")], stdout=subprocess.PIPE,
                          stderr=None, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise HarnessError(f"install.sh failed with {proc.returncode}")
    return Path(proc.stdout.strip().splitlines()[-1])


def _authtoken(user: str, keystone: str) -> str:
    """The ``[keystone_authtoken]`` / service-auth body for one service user."""
    return "\n".join([
        f"www_authenticate_uri = {keystone}/v3",
        f"auth_url = {keystone}/v3",
        "auth_type = password",
        "project_domain_name = Default",
        "user_domain_name = Default",
        "project_name = service",
        f"username = {user}",
        f"password = {PASSWORD}",
    ])


class LocalCloud:
    """One test cloud. Use as a context manager, or call :meth:`start` / :meth:`stop`."""

    def __init__(self, venv: Path | None = None) -> None:
        self.venv = venv or default_venv()
        self.suffix = secrets.token_hex(4)
        self.run_dir = RUN_BASE / self.suffix
        self.etc = self.run_dir / "etc"
        self.logs = self.run_dir / "logs"
        self.data = self.run_dir / "data"
        self.dbs = {name: f"atrium_os_{self.suffix}_{name}" for name in schema.DATABASES}
        self.vhost = f"atrium-os-{self.suffix}"
        self.ports = {name: procs.free_port()
                      for name in ("keystone", "glance", "placement", "neutron", "nova")}
        self.services: list[procs.Service] = []
        self._lock = threading.Lock()
        self._vhost_created = False
        self.settings: CloudSettings | None = None
        self._keys = Path()  # Keystone's cached key repositories (build_templates)
        # which HOST_PATHS existed before this cloud started (a test compares after)
        self.host_paths_before = {p for p in HOST_PATHS if Path(p).exists()}
        self.timings: dict[str, float] = {}

    # -- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> CloudSettings:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 240) -> CloudSettings:
        """Start and bootstrap the cloud; on any failure stop what was started, then raise."""
        t0 = time.monotonic()
        if not (self.venv / "bin" / "nova-manage").exists():
            raise HarnessError(f"no services venv at {self.venv}: run install.sh")
        reap_stale_sessions()
        try:
            self._prepare()
            self._mark("databases ready", t0)
            with ThreadPoolExecutor(max_workers=5, thread_name_prefix="os-up") as pool:
                futures = [pool.submit(self._timed, chain, t0) for chain in (
                    self._keystone, self._glance, self._placement, self._neutron,
                    self._nova_control)]
                for fut in futures:
                    fut.result(timeout=timeout)
            self._mark("apis up", t0)
            self._start_compute()
            settings = self._bootstrap_resources()
            self._mark("bootstrapped", t0)
            self._wait_compute_ready(timeout=90)
            self._mark("compute ready", t0)
            self.settings = settings
            return settings
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop every process, drop the databases and the vhost, remove the run dir."""
        with self._lock:
            services, self.services = self.services, []
        # nothing to save in a throw-away cloud: a short grace, then SIGKILL
        procs.stop_groups(services, procs.groups_tagged(self.run_dir), grace=3)
        # a session process may have been started while we were stopping nova-compute
        procs.stop_groups([], procs.groups_tagged(self.run_dir), grace=2)
        vhost = None
        if self._vhost_created:  # rabbitmqctl is slow to start: overlap it with the drops
            vhost = threading.Thread(target=procs.delete_vhost, args=(self.vhost,))
            vhost.start()
        procs.drop_databases(list(self.dbs.values()))
        if vhost is not None:
            vhost.join()
        if os.environ.get("ATRIUM_OS_KEEP") != "1":
            shutil.rmtree(self.run_dir, ignore_errors=True)

    # -- outages, for tests of how clients cope ------------------------------------------

    def _service(self, name: str) -> procs.Service:
        with self._lock:
            for svc in self.services:
                if svc.name == name:
                    return svc
        raise HarnessError(f"no service {name!r} in this cloud")

    def stop_service(self, name: str) -> None:
        """Kill one API (e.g. "nova-api", "keystone") to simulate an outage."""
        procs.stop_groups([self._service(name)], grace=2)

    def start_service(self, name: str, timeout: float = 90) -> None:
        """Start a service stopped by :meth:`stop_service` again; wait until it answers."""
        old = self._service(name)
        if old.proc.poll() is None:
            return
        new = old.respawn()
        with self._lock:
            self.services[self.services.index(old)] = new
        self._write_session()
        port = {"nova-api": "nova"}.get(name, name)
        if port in self.ports:
            self._wait_http(new, self.ports[port], timeout)

    def _timed(self, chain: Callable[[], None], t0: float) -> None:
        chain()
        self._mark(chain.__name__.strip("_"), t0)

    def _mark(self, what: str, t0: float) -> None:
        self.timings[what] = round(time.monotonic() - t0, 1)

    # -- preparation -------------------------------------------------------------------

    def build_templates(self, prefix: str = schema.PREFIX) -> dict[str, str]:
        """Keystone's keys and the template databases (cached: built only when missing)."""
        cache = default_venv().parent
        self.logs.mkdir(parents=True, exist_ok=True)
        self._keys = keystone_keys.ensure(self.venv, cache, self._env())
        return schema.ensure_templates(
            self.venv, self._render_template, cache, self._env(),
            seed=self._seed_keystone, seed_key=SEED_VERSION, prefix=prefix)

    def _prepare(self) -> None:
        for d in (self.etc, self.logs, self.data / "locks", self.data / "neutron",
                  self.data / "nova" / "instances"):
            d.mkdir(parents=True, exist_ok=True)
        self._write_session()
        templates = self.build_templates()
        keystone_keys.install(self._keys, self.data)
        schema.clone(templates, self.dbs)
        self._vhost_created = procs.create_vhost(self.vhost)
        self._render(self.etc, self.dbs)
        # what `nova-manage cell_v2 map_cell0` and `create_cell` would write, without
        # paying two interpreter starts
        procs.psql(
            "INSERT INTO cell_mappings (created_at, uuid, name, transport_url,"
            " database_connection, disabled) VALUES"
            f" (now(), '{uuid.UUID(int=0)}', 'cell0', 'none:///',"
            f" '{procs.pg_url(self.dbs['nova_cell0'])}', false),"
            f" (now(), '{uuid.uuid4()}', 'cell1', '{self._transport_url()}',"
            f" '{procs.pg_url(self.dbs['nova_cell1'])}', false)",
            db=self.dbs["nova_api"])
        # the seeded catalogue, pointed at this cloud's ports
        url = "url"
        for name in ("keystone", *(name for name, _ in CATALOGUE.values())):
            url = (f"replace({url}, '{PLACEHOLDER.format(name)}',"
                   f" 'http://127.0.0.1:{self.ports[name]}')")
        procs.psql(f"UPDATE endpoint SET url = {url}", db=self.dbs["keystone"])

    def _render_template(self, etc: Path, dbs: dict[str, str]) -> None:
        """The configs of a template build: its state beside ``etc``, in its temp dir."""
        self._render(etc, dbs, data=etc.parent / "data")

    def _seed_keystone(self, etc: Path, dbs: dict[str, str]) -> None:
        """Seed Keystone's template: admin, service users and roles, the catalogue.

        Runs once per template (not per cloud): `keystone-manage bootstrap`, then a
        short-lived Keystone on a spare port for the API calls. URLs are placeholders.
        ``etc`` holds configs from :meth:`_render_template`.
        """
        keystone_keys.install(self._keys, etc.parent / "data")
        identity = PLACEHOLDER.format("keystone") + "/v3"
        procs.run([self._bin("keystone-manage"), "--config-file", str(etc / "keystone.conf"),
                   "bootstrap", "--bootstrap-password", PASSWORD,
                   "--bootstrap-admin-url", identity, "--bootstrap-internal-url", identity,
                   "--bootstrap-public-url", identity, "--bootstrap-region-id", "RegionOne"],
                  log=self.logs / "keystone-seed.log", env=self._env())
        port = procs.free_port()
        seeder = procs.Service(
            "keystone-seed", self._gunicorn_argv(port),
            env=self._env(ATRIUM_OS_SERVICE="keystone", ATRIUM_OS_ETC=str(etc)),
            log=self.logs / "keystone-seed.out", cwd=self.run_dir)
        try:
            self._wait_http(seeder, port)
            bootstrap.keystone_catalogue(
                f"http://127.0.0.1:{port}/v3", PASSWORD, SERVICE_USERS,
                {kind: (name, PLACEHOLDER.format(name) + path)
                 for kind, (name, path) in CATALOGUE.items()})
        finally:
            procs.stop_groups([seeder], grace=2)

    def _write_session(self) -> None:
        """What reap_stale_sessions needs if this process dies without stop()."""
        with self._lock:
            groups = [[svc.pid, svc.start_ticks] for svc in self.services]
            tmp = self.run_dir / "session.json.tmp"
            tmp.write_text(json.dumps({
                "owner_pid": os.getpid(), "owner_ticks": procs.start_ticks(os.getpid()),
                "databases": list(self.dbs.values()), "vhost": self.vhost, "groups": groups}))
            tmp.replace(self.run_dir / "session.json")

    def _transport_url(self) -> str:
        return procs.rabbit_url(self.vhost if self._vhost_created else "")

    def _render(self, etc: Path, dbs: dict[str, str], data: Path | None = None) -> None:
        """Write every service's config for databases ``dbs`` into ``etc``.

        State goes to ``data`` (default: this cloud's data dir), configs and the files
        they name (empty policy files: the services' defaults) to ``etc``.
        """
        etc.mkdir(parents=True, exist_ok=True)
        keystone = f"http://127.0.0.1:{self.ports['keystone']}"
        values = {
            "logs": str(self.logs), "data": str(data or self.data), "etc": str(etc),
            "venv": str(self.venv),
            "transport_url": self._transport_url(),
            # without our own vhost, isolate clouds by exchange names on "/"
            "exchange_prefix": "" if self._vhost_created else f"atrium-{self.suffix}-",
            **{f"{name}_port": str(port) for name, port in self.ports.items()},
            **{f"db_{name}": procs.pg_url(db) for name, db in dbs.items()},
            **{f"authtoken_{u}": _authtoken(u, keystone) for u in SERVICE_USERS},
            **{f"service_auth_{u}": _authtoken(u, keystone).split("\n", 1)[1]
               for u in SERVICE_USERS},
        }
        for tmpl in (HERE / "etc").glob("*.conf"):
            text = string.Template(tmpl.read_text()).substitute(values)
            (etc / tmpl.name).write_text(text)
        (etc / "policy.yaml").write_text("{}\n")
        # nova's WSGI app loads its paste pipeline from the first file of its config dir
        shutil.copy(self.venv / "etc" / "nova" / "api-paste.ini", etc / "api-paste.ini")

    def _env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("OS_", "PYTHON", "VIRTUAL_ENV"))}
        env["PATH"] = f"{self.venv / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"
        env["ATRIUM_OS_RUN"] = str(self.run_dir)
        env.update(extra)
        return env

    def _bin(self, name: str) -> str:
        return str(self.venv / "bin" / name)

    def _run(self, log: str, *argv: str) -> None:
        procs.run(argv, log=self.logs / f"{log}.setup.log", env=self._env())

    def _spawn(self, name: str, argv: list[str], **env: str) -> procs.Service:
        svc = procs.Service(name, argv, env=self._env(**env),
                            log=self.logs / f"{name}.out", cwd=self.run_dir)
        with self._lock:
            self.services.append(svc)
        self._write_session()
        return svc

    def _gunicorn_argv(self, port: int) -> list[str]:
        return [self._bin("gunicorn"), "--no-control-socket", "-w", "1", "--threads", "4",
                "--timeout", "120", "--graceful-timeout", "2", "-b", f"127.0.0.1:{port}",
                "--chdir", str(HERE), "wsgi_app:application"]

    def _gunicorn(self, service: str, port: int) -> procs.Service:
        argv = self._gunicorn_argv(port)
        return self._spawn(service, argv, ATRIUM_OS_SERVICE=service,
                           ATRIUM_OS_ETC=str(self.etc))

    def _wait_http(self, svc: procs.Service, port: int, timeout: float = 90) -> None:
        def up() -> bool:
            svc.check_alive()
            return procs.http_answers(port)
        procs.wait_for(f"{svc.name} on port {port}", up, timeout,
                       on_timeout=lambda: procs.tail(svc.log))

    # -- one chain per service (run in parallel) ----------------------------------------

    def _keystone(self) -> None:
        # admin, service users and catalogue come with the template database
        self._wait_http(self._gunicorn("keystone", self.ports["keystone"]),
                        self.ports["keystone"])

    def _glance(self) -> None:
        self._wait_http(self._gunicorn("glance", self.ports["glance"]), self.ports["glance"])

    def _placement(self) -> None:
        self._wait_http(self._gunicorn("placement", self.ports["placement"]),
                        self.ports["placement"])

    def _neutron(self) -> None:
        self._wait_http(self._gunicorn("neutron", self.ports["neutron"]),
                        self.ports["neutron"])

    def _nova_control(self) -> None:
        # (service users exist from the start: a conductor or scheduler that finds Keystone
        # not up yet carries on; a 401 would have been fatal to them)
        conf = ["--config-file", str(self.etc / "nova.conf")]
        self._spawn("nova-conductor", [self._bin("nova-conductor"), *conf])
        self._spawn("nova-scheduler", [self._bin("nova-scheduler"), *conf])
        self._wait_http(self._gunicorn("nova-api", self.ports["nova"]), self.ports["nova"])

    def _start_compute(self) -> None:
        # nova-compute's first RPC call to the conductor is lost if the conductor has not
        # declared its queue yet (then compute waits a full RPC timeout): wait for its
        # first heartbeat, written once its RPC server runs
        def conductor_up() -> bool:
            self._service("nova-conductor").check_alive()
            return procs.psql(
                "SELECT count(*) FROM services WHERE \"binary\" = 'nova-conductor'"
                " AND last_seen_up IS NOT NULL", db=self.dbs["nova_cell1"]) != "0"
        procs.wait_for("nova-conductor", conductor_up, 90, interval=0.5,
                       on_timeout=lambda: procs.tail(self.logs / "nova-conductor.log"))
        # the lab driver runs sessions' commands: jupyter from the test interpreter's venv,
        # start-desktop.sh from images/desktop
        lab_path = f"{Path(sys.executable).parent}:{HERE.parents[2] / 'images' / 'desktop'}"
        self._spawn("nova-compute",
                    [self._bin("python"), str(HERE / "nova_compute.py"),
                     "--config-file", str(self.etc / "nova.conf")],
                    ATRIUM_LAB_PATH=os.environ.get("ATRIUM_LAB_PATH", lab_path),
                    ATRIUM_LAB_PYTHONPATH=str(HERE.parents[2]))

    def _wait_compute_ready(self, timeout: float) -> None:
        """Wait until the compute node is mapped to cell1 and has inventory in placement."""
        def ready() -> bool:
            for svc in self.services:
                svc.check_alive()
            mapped = procs.psql("SELECT count(*) FROM host_mappings",
                                db=self.dbs["nova_api"])
            inventory = procs.psql("SELECT count(*) FROM inventories",
                                   db=self.dbs["placement"])
            return mapped != "0" and inventory != "0"
        procs.wait_for("nova-compute registration", ready, timeout, interval=0.5,
                       on_timeout=lambda: procs.tail(self.logs / "nova-compute.log"))

    def _bootstrap_resources(self) -> CloudSettings:
        return bootstrap.project_resources(
            auth_url=f"http://127.0.0.1:{self.ports['keystone']}/v3",
            admin_password=PASSWORD, run_dir=self.run_dir)


def reap_stale_sessions() -> None:
    """Clean up after harness runs whose owner process died without stopping its cloud."""
    if not RUN_BASE.is_dir():
        return
    for run_dir in RUN_BASE.iterdir():
        meta_path = run_dir / "session.json"
        try:
            meta: dict[str, Any] = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            continue
        owner = int(meta.get("owner_pid", 0))
        if owner > 0 and procs.start_ticks(owner) == meta.get("owner_ticks", -1):
            continue  # its test run is still going
        for pgid, ticks in meta.get("groups", []):
            procs.kill_recorded_group(pgid, ticks, signal.SIGKILL)
        procs.stop_groups([], procs.groups_tagged(run_dir), grace=1)
        procs.drop_databases(meta.get("databases", []))
        if meta.get("vhost"):
            procs.delete_vhost(meta["vhost"])
        shutil.rmtree(run_dir, ignore_errors=True)


def main(argv: list[str] | None = None, wait: Callable[[], None] | None = None) -> None:
    """Start a cloud, print its settings as JSON, stop it on Ctrl-C (manual debugging)."""
    t0 = time.monotonic()
    # `kill <pid>` stops the cloud cleanly too (SystemExit unwinds through the with)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    venv = install()
    cloud = LocalCloud(venv)
    with cloud as settings:
        print(json.dumps({"settings": settings.__dict__, "timings": cloud.timings,
                          "run_dir": str(cloud.run_dir),
                          "total_s": round(time.monotonic() - t0, 1)}, indent=2), flush=True)
        try:
            (wait or (lambda: threading.Event().wait()))()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main(sys.argv[1:])
