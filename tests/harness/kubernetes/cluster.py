"""A real Kubernetes control plane on loopback, for tests: etcd + kube-apiserver +
kube-scheduler + kube-controller-manager v1.20.2.

The Kubernetes binaries come from ``build.sh`` (built once from Debian's source package and
cached in ``${XDG_CACHE_HOME:-~/.cache}/atrium/kubernetes-v1.20.2/bin``); etcd is Debian's
``etcd-server``. Everything listens on 127.0.0.1 only, on free ports picked at start, with
its state in a temporary directory, so several clusters can run side by side.

Contract of :class:`LocalCluster`:

* :meth:`LocalCluster.start` returns once the API server answers ``/readyz`` and the
  scheduler and controller-manager answer ``/healthz``; it raises :class:`ClusterError`
  (with the failing component's log tail) otherwise, after stopping what it started;
* :meth:`LocalCluster.stop` terminates every process it started (SIGTERM, then SIGKILL)
  and removes the temporary directory unless ``keep=True``; it is idempotent and also
  runs at interpreter exit;
* authentication is a static admin token (``system:masters``); the kubeconfig it writes
  trusts the API server's self-signed certificate.

There is no kubelet: see :mod:`kubelet_double` for the test double that plays one.

Run a cluster (with a kubelet double) by hand, from the repository root:
``python -m tests.harness.kubernetes.cluster`` (prints the kubeconfig, stops on Ctrl-C).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

VERSION = "v1.20.2"
HERE = Path(__file__).resolve().parent
BUILD_SCRIPT = HERE / "build.sh"


def cache_bin_dir() -> Path:
    """Where build.sh caches the Kubernetes binaries."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "atrium" / f"kubernetes-{VERSION}" / "bin"


COMPONENTS = ("kube-apiserver", "kube-scheduler", "kube-controller-manager")


def binaries_present(bin_dir: Path | None = None) -> bool:
    bin_dir = bin_dir or cache_bin_dir()
    return all(os.access(bin_dir / c, os.X_OK) for c in COMPONENTS) and bool(
        shutil.which("etcd"))


def run_build(timeout: float = 1800) -> None:
    """Run build.sh (idempotent: returns at once when the binaries are cached)."""
    subprocess.run(["bash", str(BUILD_SCRIPT)], check=True, timeout=timeout)


class ClusterError(RuntimeError):
    """The control plane could not be started."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class ClusterInfo:
    """How to reach a running cluster."""

    server: str
    token: str
    ca_file: Path
    kubeconfig: Path
    workdir: Path


def _kill_group(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM the process group of ``proc``, SIGKILL after ``grace`` s, and reap it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    # Kill leftovers of the group too (even if the leader already exited).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


_prctl: Any = None
try:  # resolved now: the child must not import or look up anything between fork and exec
    _prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
except (OSError, AttributeError):
    pass


def _parent_death_signal() -> None:
    """In the child: die with the parent (a crashed pytest must not leave a cluster)."""
    if _prctl is not None:
        _prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class LocalCluster:
    """etcd + control plane on loopback; see the module docstring for the contract."""

    def __init__(self, bin_dir: Path | None = None, workdir: Path | None = None,
                 keep: bool = False, log: Any = None) -> None:
        self.bin_dir = bin_dir or cache_bin_dir()
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="atrium-k8s-"))
        self.keep = keep
        self._log = log or (lambda msg: print(f"[k8s-cluster] {msg}", file=sys.stderr))
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._argv: dict[str, list[str]] = {}  # to start a stopped component again
        self._lock = threading.Lock()
        self.info: ClusterInfo | None = None
        self.timings: dict[str, float] = {}

    # ------------------------------------------------------------------ processes

    def _spawn(self, name: str, argv: list[str]) -> None:
        self._argv[name] = argv
        log = open(self.workdir / f"{name}.log", "ab")  # the child inherits it
        # PDEATHSIG fires when the spawning *thread* exits: only safe from the main thread.
        preexec = (_parent_death_signal
                   if threading.current_thread() is threading.main_thread() else None)
        try:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True,
                                    cwd=self.workdir, preexec_fn=preexec)
        finally:
            log.close()
        with self._lock:
            self._procs[name] = proc

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.workdir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def _check_alive(self) -> None:
        for name, proc in self._procs.items():
            if proc.poll() is not None:
                raise ClusterError(f"{name} exited with code {proc.returncode}:\n"
                                   f"{self.log_tail(name)}")

    def _wait_https(self, name: str, url: str, deadline: float,
                    token: str = "", ctx: ssl.SSLContext | None = None) -> None:
        if ctx is None:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        last = ""
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                            context=ctx, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError) as exc:
                last = str(exc)
            time.sleep(0.2)
        raise ClusterError(f"{name} not ready at {url}: {last}\n{self.log_tail(name)}")

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 90) -> ClusterInfo:
        """Start everything and wait until ready (see the module docstring)."""
        if not binaries_present(self.bin_dir):
            raise ClusterError(f"Kubernetes binaries missing in {self.bin_dir} (or etcd not "
                               f"installed): run {BUILD_SCRIPT}")
        atexit.register(self.stop)
        try:
            return self._start(timeout)
        except ClusterError as exc:
            self.stop(keep=True)  # keep the logs: the error points at them
            raise ClusterError(f"{exc}\n(logs kept in {self.workdir})") from exc
        except BaseException:
            self.stop(keep=True)
            raise

    def _start(self, timeout: float) -> ClusterInfo:
        t0 = time.monotonic()
        deadline = t0 + timeout
        wd = self.workdir
        token = secrets.token_hex(16)
        (wd / "tokens.csv").write_text(f"{token},admin,admin-uid,system:masters\n")
        subprocess.run(["openssl", "genrsa", "-out", str(wd / "sa.key"), "2048"],
                       check=True, capture_output=True)
        subprocess.run(["openssl", "rsa", "-in", str(wd / "sa.key"), "-pubout",
                        "-out", str(wd / "sa.pub")], check=True, capture_output=True)
        etcd_client, etcd_peer, api_port = free_port(), free_port(), free_port()
        sched_port, cm_port = free_port(), free_port()
        etcd_url = f"http://127.0.0.1:{etcd_client}"
        peer_url = f"http://127.0.0.1:{etcd_peer}"
        self._spawn("etcd", [
            "etcd", "--name", "default", "--data-dir", str(wd / "etcd"),
            "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
            "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", f"default={peer_url}",
            # Metrics on loopback too (the default would be the client URL anyway).
            "--listen-metrics-urls", f"http://127.0.0.1:{free_port()}",
        ])
        certs = wd / "certs"
        certs.mkdir()
        self._spawn("kube-apiserver", [
            str(self.bin_dir / "kube-apiserver"), f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1", f"--secure-port={api_port}",
            "--advertise-address=127.0.0.1", f"--cert-dir={certs}",
            f"--token-auth-file={wd / 'tokens.csv'}", "--authorization-mode=RBAC",
            "--service-cluster-ip-range=10.96.0.0/16",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={wd / 'sa.pub'}",
            f"--service-account-signing-key-file={wd / 'sa.key'}",
            "--disable-admission-plugins=ServiceAccount",
            "--endpoint-reconciler-type=none", "--profiling=false", "-v=1",
        ])
        server = f"https://127.0.0.1:{api_port}"
        self._wait_https("kube-apiserver", f"{server}/readyz", deadline, token=token)
        self.timings["apiserver_ready_s"] = time.monotonic() - t0
        ca_file = certs / "apiserver.crt"
        kubeconfig = wd / "kubeconfig"
        # JSON is YAML: every kubeconfig reader accepts it.
        kubeconfig.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "atrium-test",
            "clusters": [{"name": "atrium-test", "cluster": {
                "server": server, "certificate-authority": str(ca_file)}}],
            "users": [{"name": "admin", "user": {"token": token}}],
            "contexts": [{"name": "atrium-test", "context": {
                "cluster": "atrium-test", "user": "admin"}}],
        }, indent=2))
        kubeconfig.chmod(0o600)
        self._spawn("kube-scheduler", [
            str(self.bin_dir / "kube-scheduler"), f"--kubeconfig={kubeconfig}",
            "--leader-elect=false", "--bind-address=127.0.0.1", "--port=0",
            f"--secure-port={sched_port}", f"--cert-dir={wd / 'scheduler-certs'}",
        ])
        self._spawn("kube-controller-manager", [
            str(self.bin_dir / "kube-controller-manager"), f"--kubeconfig={kubeconfig}",
            "--leader-elect=false", "--bind-address=127.0.0.1", "--port=0",
            f"--secure-port={cm_port}", f"--cert-dir={wd / 'cm-certs'}",
            # No kubelet heartbeats: node lifecycle would taint and evict everything.
            "--controllers=*,-nodelifecycle",
            f"--service-account-private-key-file={wd / 'sa.key'}",
        ])
        self._wait_https("kube-scheduler", f"https://127.0.0.1:{sched_port}/healthz",
                         deadline)
        self._wait_https("kube-controller-manager", f"https://127.0.0.1:{cm_port}/healthz",
                         deadline)
        self.timings["cluster_ready_s"] = time.monotonic() - t0
        self.info = ClusterInfo(server=server, token=token, ca_file=ca_file,
                                kubeconfig=kubeconfig, workdir=wd)
        self._log(f"ready in {self.timings['cluster_ready_s']:.1f} s at {server} "
                  f"(kubeconfig {kubeconfig})")
        return self.info

    def stop_component(self, name: str) -> None:
        """Stop one component (e.g. the API server, to test outages)."""
        with self._lock:
            proc = self._procs.pop(name, None)
        if proc is not None:
            _kill_group(proc, grace=1)

    def start_component(self, name: str, timeout: float = 60) -> None:
        """Start a stopped component again, same flags; waits for the API server's /readyz."""
        if name in self._procs:
            return
        self._spawn(name, self._argv[name])
        if name == "kube-apiserver" and self.info is not None:
            self._wait_https(name, f"{self.info.server}/readyz", time.monotonic() + timeout,
                             token=self.info.token)

    def stop(self, keep: bool | None = None) -> None:
        """Stop every process (reverse start order) and remove the workdir (idempotent)."""
        with self._lock:
            procs = list(self._procs.items())
            self._procs.clear()
        for _name, proc in reversed(procs):
            # The state is thrown away: no need to wait for graceful shutdowns (the API
            # server alone would take 5 s).
            _kill_group(proc, grace=1)
        keep = self.keep if keep is None else keep
        if self._own_workdir and not keep:
            shutil.rmtree(self.workdir, ignore_errors=True)
        atexit.unregister(self.stop)

    def pids(self) -> list[int]:
        """Pids of the running components (tests check that none survives stop())."""
        with self._lock:
            return [p.pid for p in self._procs.values() if p.poll() is None]

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def api_client(info: ClusterInfo) -> Any:
    """A ``kubernetes.client.ApiClient`` for ``info`` (imported lazily: optional dep)."""
    from kubernetes import client, config

    configuration = client.Configuration()
    config.load_kube_config(config_file=str(info.kubeconfig),
                            client_configuration=configuration)
    configuration.connection_pool_maxsize = 32
    return client.ApiClient(configuration)


def main() -> None:
    """Run a cluster with one kubelet double until Ctrl-C (for manual experiments)."""
    sys.path.insert(0, str(HERE.parents[2]))
    from tests.harness.kubernetes.kubelet_double import KubeletDouble

    if not binaries_present():
        run_build()
    cluster = LocalCluster()
    info = cluster.start()
    kubelet = KubeletDouble(api_client(info), log=lambda m: print(m, file=sys.stderr))
    kubelet.start()
    print(f"export KUBECONFIG={info.kubeconfig}")
    print("Ctrl-C stops the cluster", file=sys.stderr)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        kubelet.stop()
        cluster.stop()


if __name__ == "__main__":
    main()
