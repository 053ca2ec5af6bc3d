"""Setup for the proxy benchmark: installs, processes, and the three servers it compares
(Atrium, configurable-http-proxy, the upstream). Used by proxy_bench.py."""


from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "atrium"
NODE_DIR = CACHE / "chp"
CHP_BIN = NODE_DIR / "node_modules" / "configurable-http-proxy" / "bin" / "configurable-http-proxy"
PY_SPY_DIR = CACHE / "py-spy"
HOST = "127.0.0.1"
MiB = 1024 * 1024

GOAL_RATE = 1.5  # x CHP's small-request rate
GOAL_BULK = 2.5  # x CHP's bulk throughput
GOAL_WS_ADDED_US = 1000.0  # added WebSocket round-trip latency, microseconds
BURST = 5  # replies per message in the burst test (a kernel's busy/input/stream/result/idle)


# --- processes ---------------------------------------------------------------------------


class Processes:
    """The processes this benchmark started; each leads its own process group."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.Popen[bytes]:
        log = self.logs / f"{name}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        self.started.append((name, proc))
        return proc

    def log_tail(self, name: str, chars: int = 3000) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def stop_all(self) -> None:
        """SIGTERM each process group (newest first), then SIGKILL what is left after 10 s."""
        for _, proc in reversed(self.started):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for _, proc in reversed(self.started):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the group: children too
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        self.started.clear()


def run(argv: list[str], timeout: float, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a command to completion (bounded in time), capturing its output as text."""
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a redirect is an answer, not something to follow


_OPENER = urllib.request.build_opener(_NoRedirect)


def http_get(url: str, headers: dict[str, str] | None = None, timeout: float = 5.0,
             method: str = "GET", body: bytes | None = None) -> tuple[int, bytes]:
    """Status and body of one request (errors and redirects are answers too)."""
    request = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def wait_until(what: str, ready: Callable[[], bool], proc: subprocess.Popen[bytes],
               timeout: float, tail: Callable[[], str]) -> None:
    """Poll ``ready`` every 0.1 s until it holds; fail if ``proc`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited ({proc.returncode}):\n{tail()}")
        with contextlib.suppress(OSError):
            if ready():
                return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not come up within {timeout:.0f} s:\n{tail()}")


def rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` in MiB (0 when it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    return int(match.group(1)) / 1024 if match else 0.0


class PeakRss:
    """Samples the RSS of some processes every 50 ms in a thread, keeping the maximum."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.peak = {name: rss_mib(pid) for name, pid in pids.items()}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            for name, pid in self.pids.items():
                self.peak[name] = max(self.peak[name], rss_mib(pid))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


# --- tools -------------------------------------------------------------------------------


def ensure_wrk() -> str:
    """wrk from Debian, installed when missing."""
    found = shutil.which("wrk")
    if found:
        return found
    print("installing wrk (apt-get install -y wrk) ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if run(["apt-get", "install", "-y", "-q", "wrk"], 600, env=env).returncode != 0:
        run(["apt-get", "update", "-q"], 600, env=env)
        result = run(["apt-get", "install", "-y", "-q", "wrk"], 600, env=env)
        if result.returncode != 0:
            raise RuntimeError(f"apt-get install wrk failed:\n{result.stderr[-2000:]}")
    found = shutil.which("wrk")
    if not found:
        raise RuntimeError("wrk is still not on PATH after apt-get install")
    return found


def _package_version(name: str) -> str:
    path = NODE_DIR / "node_modules" / name / "package.json"
    try:
        return str(json.loads(path.read_text()).get("version", ""))
    except (OSError, ValueError):
        return ""


def ensure_node_modules() -> str:
    """configurable-http-proxy 5.x and ws in the cache dir (npm); returns CHP's version."""
    if not _package_version("configurable-http-proxy").startswith("5.") or not _package_version(
            "ws"):
        print(f"installing configurable-http-proxy@5 and ws into {NODE_DIR} (npm) ...",
              flush=True)
        NODE_DIR.mkdir(parents=True, exist_ok=True)
        result = run(["npm", "install", "--prefix", str(NODE_DIR), "--no-audit", "--no-fund",
                      "--loglevel=error", "configurable-http-proxy@5", "ws@8"], 600)
        if result.returncode != 0:
            raise RuntimeError(f"npm install failed:\n{result.stderr[-2000:]}")
    version = _package_version("configurable-http-proxy")
    if not version.startswith("5.") or not CHP_BIN.exists():
        raise RuntimeError(f"configurable-http-proxy 5.x missing from {NODE_DIR}")
    return version


def ensure_py_spy() -> str:
    """py-spy (PyPI) in the cache dir, installed when missing."""
    found = shutil.which("py-spy") or str(PY_SPY_DIR / "bin" / "py-spy")
    if Path(found).exists():
        return found
    print(f"installing py-spy into {PY_SPY_DIR} (pip) ...", flush=True)
    result = run([sys.executable, "-m", "pip", "install", "-q", "--target", str(PY_SPY_DIR),
                  "py-spy"], 600)
    if result.returncode != 0 or not Path(found).exists():
        raise RuntimeError(f"pip install py-spy failed:\n{result.stderr[-2000:]}")
    return found


def node_env() -> dict[str, str]:
    return {**os.environ, "NODE_PATH": str(NODE_DIR / "node_modules")}


# --- the three servers -------------------------------------------------------------------


@dataclass
class Atrium:
    url: str
    uid: str
    token: str  # the caller's bearer token
    jupyter_token: str  # the instance's token, injected by the proxy
    proc: subprocess.Popen[bytes]

    @property
    def base(self) -> str:
        return f"{self.url}/instances/{self.uid}/lab"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def register_instance(db_path: Path, uid: str, upstream: str, jupyter_token: str) -> None:
    """Insert an ACTIVE instance of alice on the (disabled) ``bench`` backend, pointing at
    the upstream, with its OWNER member and its secret, straight into the database."""
    sys.path.insert(0, str(ROOT))
    from sqlalchemy import create_engine, select
    from sqlalchemy.orm import Session

    from orchestrator.models import (
        Instance,
        InstanceMember,
        InstanceSecret,
        InstanceStatus,
        MemberRole,
        Plan,
        Target,
        User,
    )

    engine = create_engine(f"sqlite:///{db_path}")
    try:
        with Session(engine) as s:
            alice = s.scalars(select(User).where(User.username == "alice")).one()
            plan = s.scalars(select(Plan).order_by(Plan.id)).first()
            if plan is None:
                raise RuntimeError("the demo seed created no plan")
            now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
            instance = Instance(
                uid=uid, name="proxy benchmark", owner_id=alice.id, plan_id=plan.id,
                backend="bench", target=Target.RUNNING, status=InstanceStatus.ACTIVE,
                endpoints={"jupyter": upstream}, ready_protocols=["jupyter"],
                activated_at=now, termination_date=now + dt.timedelta(days=1))
            instance.members.append(InstanceMember(user_id=alice.id, role=MemberRole.OWNER))
            s.add(instance)
            s.flush()
            s.add(InstanceSecret(instance_id=instance.id, jupyter_token=jupyter_token,
                                 vnc_password="unused"))
            s.commit()
    finally:
        engine.dispose()


def start_atrium(procs: Processes, state: Path, upstream: str) -> Atrium:
    port = free_port()
    db_path = state / "atrium.db"
    env = {**os.environ, "ATRIUM_DATABASE_URL": f"sqlite:///{db_path}",
           "ATRIUM_STATE_DIR": str(state), "ATRIUM_HOST": HOST, "ATRIUM_PORT": str(port),
           "ATRIUM_DEMO_MODE": "true", "ATRIUM_DEPLOYMENT_ID": f"bench{secrets.token_hex(4)}"}
    cli = [sys.executable, "-m", "orchestrator.cli"]
    seeded = run([*cli, "demo", "--seed-only"], 180, env=env, cwd=ROOT)
    if seeded.returncode != 0:
        raise RuntimeError(f"atrium demo --seed-only failed:\n{seeded.stderr[-3000:]}")
    uid = secrets.token_hex(16)
    jupyter_token = secrets.token_urlsafe(32)
    register_instance(db_path, uid, upstream, jupyter_token)
    created = run([*cli, "token", "create", "alice", "--name", "proxy-bench"], 120, env=env,
                  cwd=ROOT)
    if created.returncode != 0:
        raise RuntimeError(f"atrium token create failed:\n{created.stderr[-3000:]}")
    token = created.stdout.strip().splitlines()[-1]
    proc = procs.start("atrium", [*cli, "serve"], env=env, cwd=ROOT)
    url = f"http://{HOST}:{port}"
    wait_until("atrium serve", lambda: http_get(f"{url}/healthz", timeout=1)[0] == 200, proc, 60,
               lambda: procs.log_tail("atrium"))
    return Atrium(url, uid, token, jupyter_token, proc)


@dataclass
class Chp:
    url: str
    base: str
    proc: subprocess.Popen[bytes]


def start_chp(procs: Processes, upstream: str, uid: str) -> Chp:
    port, api_port = free_port(), free_port()
    auth = secrets.token_hex(16)
    env = {**node_env(), "CONFIGPROXY_AUTH_TOKEN": auth}
    proc = procs.start("chp", ["node", str(CHP_BIN), "--ip", HOST, "--port", str(port),
                               "--api-ip", HOST, "--api-port", str(api_port),
                               "--log-level", "warn"], env=env)
    api = f"http://{HOST}:{api_port}/api/routes"
    headers = {"Authorization": f"token {auth}"}
    wait_until("configurable-http-proxy", lambda: http_get(api, headers, 1)[0] == 200, proc, 30,
               lambda: procs.log_tail("chp"))
    prefix = f"/instances/{uid}/lab"
    status, body = http_get(f"{api}{prefix}", {**headers, "Content-Type": "application/json"},
                            method="POST", body=json.dumps({"target": upstream}).encode())
    if status != 201:
        raise RuntimeError(f"CHP refused the route ({status}): {body[:300]!r}")
    return Chp(f"http://{HOST}:{port}", f"http://{HOST}:{port}{prefix}", proc)


def start_upstream(procs: Processes) -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port()
    proc = procs.start("upstream", ["node", str(HERE / "upstream.js"), str(port)],
                       env=node_env())
    url = f"http://{HOST}:{port}"
    wait_until("the upstream", lambda: http_get(f"{url}/small", timeout=1)[0] == 200, proc, 30,
               lambda: procs.log_tail("upstream"))
    return url, proc


# --- measurements ------------------------------------------------------------------------
