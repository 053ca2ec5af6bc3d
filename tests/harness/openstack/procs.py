"""Small process, port, PostgreSQL and RabbitMQ helpers for the OpenStack harness.

Everything here runs in the test process (any Python with the standard library). Every
process the harness starts gets its own process group and the env var ``ATRIUM_OS_RUN``
(the session's run dir), so teardown and stale-session cleanup kill exactly the groups
this harness started and nothing else.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

# The PostgreSQL login: the tests' own (ATRIUM_TEST_PG, which ./dev sets, password included:
# a fresh Debian cluster asks for one on TCP), each part overridable by ATRIUM_OS_PG_*.
_TEST_PG = urllib.parse.urlsplit(os.environ.get("ATRIUM_TEST_PG",
                                                "postgresql://postgres@127.0.0.1:5432"))
PG_HOST = os.environ.get("ATRIUM_OS_PG_HOST", _TEST_PG.hostname or "127.0.0.1")
PG_PORT = int(os.environ.get("ATRIUM_OS_PG_PORT", _TEST_PG.port or 5432))
PG_USER = os.environ.get("ATRIUM_OS_PG_USER",
                         urllib.parse.unquote(_TEST_PG.username or "postgres"))
PG_PASSWORD = os.environ.get("ATRIUM_OS_PG_PASSWORD",
                             urllib.parse.unquote(_TEST_PG.password or ""))
RABBIT_HOST = os.environ.get("ATRIUM_OS_RABBIT_HOST", "127.0.0.1")
RABBIT_PORT = int(os.environ.get("ATRIUM_OS_RABBIT_PORT", "5672"))
RABBIT_CREDS = os.environ.get("ATRIUM_OS_RABBIT_CREDS", "guest:guest")


ConfigRenderer = Callable[[Path, dict[str, str]], None]
"""``render(etc_dir, {service: database name})`` writes the services' config files."""


class HarnessError(RuntimeError):
    """The test cloud could not be prepared, started or stopped."""


def tail(path: Path, lines: int = 25) -> str:
    """The last ``lines`` of a log file, for error messages ("" when missing)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def run(argv: Sequence[str], *, log: Path, env: Mapping[str, str] | None = None,
        timeout: float = 180) -> None:
    """Run a one-shot command, appending its output to ``log``; raise with the log's tail."""
    with log.open("ab") as out:
        out.write(f"\n$ {' '.join(argv)}\n".encode())
        out.flush()
        proc = subprocess.run(list(argv), stdin=subprocess.DEVNULL, stdout=out,
                              stderr=subprocess.STDOUT, env=dict(env or os.environ),
                              timeout=timeout, check=False, start_new_session=True)
    if proc.returncode != 0:
        raise HarnessError(f"{argv[0]} {' '.join(argv[1:3])} failed ({proc.returncode}):\n"
                           + tail(log))


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) for the ``with`` body."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the caller binds it soon after)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def http_answers(port: int, host: str = "127.0.0.1") -> bool:
    """True once something answers HTTP on the port (any status: the app is loaded)."""
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/", timeout=2):
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False


def wait_for(what: str, check: Callable[[], bool], timeout: float, *,
             interval: float = 0.25, on_timeout: Callable[[], str] = lambda: "") -> None:
    """Poll ``check`` until true; raise HarnessError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise HarnessError(f"timed out after {timeout:.0f}s waiting for {what}\n{on_timeout()}")


class Service:
    """One long-running process of the cloud, in its own process group."""

    def __init__(self, name: str, argv: Sequence[str], *, env: Mapping[str, str],
                 log: Path, cwd: Path | None = None) -> None:
        self.name = name
        self.log = log
        self.argv, self.env, self.cwd = list(argv), dict(env), cwd
        with log.open("ab") as out:
            self.proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, env=dict(env),
                                         cwd=cwd, start_new_session=True)

        self.start_ticks = start_ticks(self.proc.pid)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def respawn(self) -> Service:
        """The same command started again (after :func:`stop_groups` on this one)."""
        return Service(self.name, self.argv, env=self.env, log=self.log, cwd=self.cwd)

    def check_alive(self) -> None:
        """Raise with the log's tail if the process already exited."""
        if self.proc.poll() is not None:
            raise HarnessError(f"{self.name} exited with {self.proc.returncode}:\n"
                               + tail(self.log))

    def signal(self, sig: int) -> None:
        kill_group(self.proc.pid, sig)

    def wait(self, timeout: float) -> bool:
        try:
            self.proc.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False


def start_ticks(pid: int) -> int:
    """The process' start time (clock ticks since boot): with the pid, a unique identity."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return -1


def kill_recorded_group(pgid: int, ticks: int, sig: int) -> None:
    """Signal group ``pgid`` only if its leader is still the process recorded at spawn.

    (gunicorn and nova rewrite their argv/environ with setproctitle, so neither can
    identify them; pid + start time can, and protects against pid reuse.)
    """
    if ticks >= 0 and start_ticks(pgid) == ticks:
        kill_group(pgid, sig)


def kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_groups(services: Sequence[Service], extra_pgids: Sequence[int] = (),
                grace: float = 10.0) -> None:
    """SIGTERM every group, wait up to ``grace`` s in total, then SIGKILL what is left."""
    for svc in services:
        svc.signal(signal.SIGTERM)
    for pgid in extra_pgids:
        kill_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for svc in services:
        svc.wait(max(0.05, deadline - time.monotonic()))
    # workers (gunicorn, oslo.service) and session processes share their leader's group:
    # finish every group even when the leader already exited
    for svc in services:
        svc.signal(signal.SIGKILL)
        svc.wait(5)
    for pgid in extra_pgids:
        kill_group(pgid, signal.SIGKILL)


def groups_tagged(run_dir: Path) -> list[int]:
    """Process groups whose members carry ``ATRIUM_OS_RUN=<run_dir>`` in their environment.

    Finds the session processes the lab driver starts (they keep their environ intact).
    """
    tag = f"ATRIUM_OS_RUN={run_dir}".encode()
    found: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
            if tag in environ.split(b"\0"):
                found.add(os.getpgid(int(entry)))
        except (OSError, ProcessLookupError):
            continue
    found.discard(os.getpgid(0))
    return sorted(found)


# -- PostgreSQL (through the psql client: no driver needed in the test venv) ----------------

def psql(*commands: str, db: str = "postgres") -> str:
    """Run each SQL command separately (CREATE DATABASE refuses transactions)."""
    argv = ["psql", "-h", PG_HOST, "-p", str(PG_PORT), "-U", PG_USER, "-d", db,
            "-v", "ON_ERROR_STOP=1", "-qAtX"]
    for cmd in commands:
        argv += ["-c", cmd]
    env = {**os.environ, "PGPASSWORD": PG_PASSWORD} if PG_PASSWORD else None
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False,
                          env=env)
    if proc.returncode != 0:
        raise HarnessError(f"psql failed: {proc.stderr.strip()}")
    return proc.stdout.strip()


def pg_url(db: str) -> str:
    """The services' SQLAlchemy URL of database ``db`` (with the password, if any)."""
    login = urllib.parse.quote(PG_USER, safe="")
    if PG_PASSWORD:
        login += ":" + urllib.parse.quote(PG_PASSWORD, safe="")
    return f"postgresql+psycopg2://{login}@{PG_HOST}:{PG_PORT}/{db}"


def create_databases(names: Sequence[str]) -> None:
    psql(*(f'CREATE DATABASE "{n}"' for n in names))


def drop_databases(names: Sequence[str]) -> None:
    """Drop (even while connected to), best effort: teardown goes on whatever happens."""
    statements = [f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)' for name in names]
    if not statements:
        return
    try:
        psql(*statements)  # one client for all: each -c still runs on its own
    except HarnessError:
        for statement in statements:
            try:
                psql(statement)
            except HarnessError:
                pass


# -- RabbitMQ ------------------------------------------------------------------------------

def rabbit_url(vhost: str) -> str:
    return f"rabbit://{RABBIT_CREDS}@{RABBIT_HOST}:{RABBIT_PORT}/{vhost}"


def _rabbitmqctl(*args: str) -> bool:
    try:
        proc = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True,
                              timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def create_vhost(name: str) -> bool:
    """Create a vhost the guest user may use; False when rabbitmqctl is not usable here."""
    user = RABBIT_CREDS.split(":", 1)[0]
    return (_rabbitmqctl("add_vhost", name)
            and _rabbitmqctl("set_permissions", "-p", name, user, ".*", ".*", ".*"))


def delete_vhost(name: str) -> None:
    _rabbitmqctl("delete_vhost", name)
