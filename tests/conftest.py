"""Fixtures: a real Atrium server (subprocess) on SQLite and on PostgreSQL, real sessions.

Every test that uses ``server`` runs once per database: ``sqlite`` and ``postgres``
(127.0.0.1:5432, a fresh database per test session). With ``CI=true`` a database that
cannot be reached fails the run instead of skipping.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
PG_URL = os.environ.get("ATRIUM_TEST_PG", "postgresql://postgres@127.0.0.1:5432")
IN_CI = os.environ.get("CI", "").lower() == "true"  # CI sets CI=true


def need(condition: bool, why: str) -> None:
    """Skip locally, fail in CI: a missing component is a failure there."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required component unavailable in CI: {why}")
    pytest.skip(why)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _psql(sql: str, db: str = "postgres") -> subprocess.CompletedProcess[str]:
    return subprocess.run(["psql", f"{PG_URL}/{db}", "-v", "ON_ERROR_STOP=1", "-qc", sql],
                          capture_output=True, text=True, timeout=30)


class Databases:
    """Creates empty databases of one kind and drops them at the end."""

    def __init__(self, kind: str, tmp: pytest.TempPathFactory) -> None:
        self.kind = kind
        self.tmp = tmp
        self.created: list[str] = []

    def new(self) -> str:
        if self.kind == "sqlite":
            return f"sqlite:///{self.tmp.mktemp('sqlite')}/atrium.db"
        name = f"atrium_test_{secrets.token_hex(4)}"
        result = _psql(f"CREATE DATABASE {name}") if shutil.which("psql") else None
        need(result is not None and result.returncode == 0,
             f"PostgreSQL at {PG_URL}: {result.stderr if result else 'no psql'}")
        self.created.append(name)
        return f"{PG_URL}/{name}"

    def drop_all(self) -> None:
        for name in self.created:
            _psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def databases(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[Databases]:
    dbs = Databases(request.param, tmp_path_factory)
    yield dbs
    dbs.drop_all()


@pytest.fixture(scope="session")
def database_url(databases: Databases) -> str:
    return databases.new()


class AtriumServer:
    """``atrium serve`` in a subprocess, with its own state dir and port."""

    def __init__(self, database_url: str, state_dir: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.state_dir = state_dir
        self.deployment = f"t{secrets.token_hex(4)}"
        self.env = {
            **os.environ,
            "ATRIUM_DATABASE_URL": database_url,
            "ATRIUM_STATE_DIR": str(state_dir),
            "ATRIUM_PORT": str(self.port),
            "ATRIUM_DEMO_MODE": "true",
            "ATRIUM_DEPLOYMENT_ID": self.deployment,
            "ATRIUM_DEFAULT_QUOTA": "100",
            "ATRIUM_RECONCILE_INTERVAL": "2",
            "ATRIUM_START_TIMEOUT": "120",
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self._tokens: dict[str, str] = {}
        self.log = state_dir / "server.log"

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], env=self.env,
                                capture_output=True, text=True, timeout=120, cwd=ROOT)
        if check and result.returncode != 0:
            raise AssertionError(f"atrium {' '.join(args)} failed:\n{result.stderr}")
        return result

    def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "serve"],
                                         env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         cwd=ROOT)
        # Generous: on a busy 2-core machine the first start (imports, migrations) is slow.
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"atrium serve exited:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"atrium serve did not answer:\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind, as in a crash."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def token(self, username: str) -> str:
        """An API token of ``username`` (one per user and server, created on first use)."""
        if username not in self._tokens:
            self._tokens[username] = self.cli("token", "create", username).stdout.strip()
        return self._tokens[username]

    def client(self, username: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token(username)}"} if username else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


@pytest.fixture(scope="session")
def server(database_url: str, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[AtriumServer]:
    """A seeded demo server shared by the tests of one database."""
    srv = AtriumServer(database_url, tmp_path_factory.mktemp("atrium"))
    srv.cli("demo", "--seed-only")
    srv.start()
    yield srv
    srv.stop()
    cleanup_sessions(srv)


def cleanup_sessions(srv: AtriumServer) -> None:
    """Kill whatever a failed test left behind (by label)."""
    from spawners.localproc import labelled_processes

    for pids in labelled_processes(srv.deployment).values():
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    _remove_sandbox_leftovers(srv.deployment)


def _remove_sandbox_leftovers(deployment: str) -> None:
    """Sandboxed local sessions also leave control groups and socket folders behind."""
    from spawners.cgroups import InstanceCgroup, detect, managed_names

    layout = detect()
    for name in managed_names(layout, "atrium", f"{deployment}."):
        group = InstanceCgroup(layout, "atrium", name)
        for _ in range(50):
            if not group.pids():
                break
            group.kill_all()
            time.sleep(0.05)
        group.remove()
    run = Path("/run/atrium")
    if run.is_dir():
        for entry in run.glob(f"{deployment}.*"):
            shutil.rmtree(entry, ignore_errors=True)


# Tests that only make sense on one database: their other variants are not collected, so
# nothing is skipped (a skip in CI would hide a missing component).
POSTGRES_ONLY = ("tests/test_replicas.py",)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    dropped = [i for i in items if i.nodeid.startswith(POSTGRES_ONLY) and "[sqlite" in i.nodeid]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [i for i in items if i not in dropped]
