"""Atrium at scale on PostgreSQL: API latency, event-loop lag, reconcile and lifetime sweeps.

    V=$(ls -d ~/.cache/atrium/venv-* | head -1)
    PYTHONPATH=. $V/bin/python benchmarks/scale_bench.py        # ~3 min; --help for knobs

Seeds a fresh PostgreSQL database (default 10,000 instances, 5,000 users, 100,000 events;
see scale_seed.py), runs ``atrium serve`` on it with the FAKE backend (nothing runs; a
few instances "run" at a small upstream this script starts, so the proxy is measured
too) and prints a table: every figure with its goal. Then, in this process, it times a
reconcile pass over every live instance and the lifetime sweeps over 100,000 instances,
counting SQL statements. Measures, asserts nothing; every loop is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from benchmarks import scale_sweeps  # noqa: E402
from benchmarks.scale_seed import connect, fake_plan, seed  # noqa: E402

PG = os.environ.get("ATRIUM_TEST_PG", "postgresql://postgres:postgres@127.0.0.1:5432")
GOAL_P99_MS = 50.0


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Portal:
    """``atrium serve`` on the benchmark database, with its upstream."""

    def __init__(self, url: str, tmp: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        upstream_port = free_port()
        self.env = {**os.environ, "ATRIUM_DATABASE_URL": url, "ATRIUM_STATE_DIR": str(tmp),
                    "ATRIUM_PORT": str(self.port), "ATRIUM_DEMO_MODE": "true",
                    "ATRIUM_BACKENDS": "fake", "ATRIUM_DEFAULT_QUOTA": "1000000",
                    "ATRIUM_FAKE_ENDPOINT": f"http://127.0.0.1:{upstream_port}",
                    "ATRIUM_DEPLOYMENT_ID": f"scale{secrets.token_hex(3)}",
                    "PYTHONPATH": str(ROOT)}
        self.tmp = tmp
        www = self.www = tmp / "www"
        www.mkdir()
        self.upstream = subprocess.Popen(
            [sys.executable, "-m", "http.server", str(upstream_port), "--bind", "127.0.0.1",
             "--directory", str(www)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.proc: subprocess.Popen[bytes] | None = None

    def cli(self, *args: str) -> str:
        return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], env=self.env,
                              cwd=ROOT, check=True, capture_output=True, text=True,
                              timeout=300).stdout.strip()

    def start(self) -> None:
        log = open(self.tmp / "server.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "serve"],
                                     env=self.env, cwd=ROOT, stdout=log, stderr=log)
        for _ in range(300):
            try:
                if httpx.get(f"{self.base}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise SystemExit((self.tmp / "server.log").read_text()[-3000:])

    def stop(self) -> None:
        for proc in (self.proc, self.upstream):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()


def timed(client: httpx.Client, method: str, path: str, **kw: object) -> float:
    started = time.perf_counter()
    response = client.request(method, path, **kw)  # type: ignore[arg-type]
    elapsed = (time.perf_counter() - started) * 1000
    if response.status_code >= 400:
        raise SystemExit(f"{method} {path}: {response.status_code} {response.text[:300]}")
    return elapsed


def measure(make: Callable[[], httpx.Client], method: str, path: str, n: int,
            clients: int = 1, **kw: object) -> list[float]:
    def run(count: int) -> list[float]:
        with make() as c:
            timed(c, method, path, **kw)  # warm the connection
            return [timed(c, method, path, **kw) for _ in range(count)]

    if clients == 1:
        return run(n)
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        parts = pool.map(run, [n // clients] * clients)
    return [v for part in parts for v in part]


def api_rows(portal: Portal, tokens: dict[str, str], uid: str, plan: int, n: int
             ) -> list[tuple[str, float, float, float]]:
    def client(user: str) -> Callable[[], httpx.Client]:
        return lambda: httpx.Client(base_url=portal.base, timeout=60,
                                    headers={"Authorization": f"Bearer {tokens[user]}"})

    user = client("u00001")
    admin = client("admin")
    with httpx.Client(base_url=portal.base, timeout=60,
                      headers={"Authorization": f"Bearer {tokens['u00001']}"}) as c:
        experiment = c.get("/api/v1/experiments").json()
    experiments = experiment.get("items", experiment) if isinstance(experiment, dict) \
        else experiment
    body = {"plan_id": plan, "experiment_ids": [experiments[0]["id"]], "name": "scale"}
    cases: list[tuple[str, Callable[[], httpx.Client], str, str, dict[str, object]]] = [
        ("user: instance list", user, "GET", "/api/v1/instances", {}),
        ("user: one instance", user, "GET", f"/api/v1/instances/{uid}", {}),
        ("user: quota status", user, "GET", "/api/v1/quota", {}),
        ("admin: instances, filtered+paged", admin, "GET",
         "/api/v1/admin/instances?status=STOPPED&limit=50", {}),
        ("admin: instances page", admin, "GET", "/admin?status=STOPPED", {}),
        ("admin: users, paged", admin, "GET", "/api/v1/admin/users?limit=50", {}),
        ("user: launch (admission)", user, "POST", "/api/v1/instances", {"json": body}),
    ]
    rows = []
    for name, make, method, path, kw in cases:
        count = n if method == "GET" else max(20, n // 4)
        seq = measure(make, method, path, count, **kw)
        conc = measure(make, method, path, count, clients=4, **kw)
        rows.append((name, statistics.median(seq), pct(seq, 0.99), pct(conc, 0.99)))
    return rows


def loop_lag(portal: Portal, tokens: dict[str, str], uid: str, n: int
             ) -> tuple[float, float, float, float, float]:
    """Proxy p99 idle and while two admin usage reports run; RSS before/peak/after."""
    assert portal.proc is not None
    pid = portal.proc.pid

    def user() -> httpx.Client:
        return httpx.Client(base_url=portal.base, timeout=60,
                            headers={"Authorization": f"Bearer {tokens['u00001']}"})

    path = f"/instances/{uid}/lab/index.html"
    idle = measure(user, "GET", path, n)
    before = rss_mib(pid)
    peak = before
    stop = time.monotonic() + 120

    def report() -> None:
        with httpx.Client(base_url=portal.base, timeout=120,
                          headers={"Authorization": f"Bearer {tokens['admin']}"}) as c:
            c.get("/api/v1/admin/usage")

    busy: list[float] = []
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        reports = [pool.submit(report), pool.submit(report)]
        with user() as c:
            while not all(r.done() for r in reports) and time.monotonic() < stop:
                busy.append(timed(c, "GET", path))
                peak = max(peak, rss_mib(pid))
        for r in reports:
            r.result()
    time.sleep(1)
    return pct(idle, 0.99), pct(busy, 0.99) if busy else 0.0, before, peak, rss_mib(pid)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--instances", type=int, default=10_000)
    ap.add_argument("--users", type=int, default=5_000)
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--sweep-instances", type=int, default=100_000)
    ap.add_argument("--requests", type=int, default=200, help="per endpoint and mode")
    ap.add_argument("--keep", action="store_true", help="keep the database and temp dir")
    args = ap.parse_args()
    name = f"atrium_scale_{secrets.token_hex(3)}"
    with connect(f"{PG}/postgres") as conn:
        conn.execute(f"CREATE DATABASE {name}")
    url = f"{PG}/{name}"
    tmp = Path(tempfile.mkdtemp(prefix="atrium-scale-"))
    portal = Portal(url, tmp)
    try:
        started = time.monotonic()
        portal.cli("demo", "--seed-only")
        plan = fake_plan(url)
        seed(url, users=args.users, experiments=max(10, args.users // 10),
             instances=args.instances, events=args.events, plan=plan)
        print(f"seeded {args.instances} instances, {args.users} users, ~{args.events} "
              f"events in {time.monotonic() - started:.1f} s", flush=True)
        tokens = {u: portal.cli("token", "create", u) for u in ("u00001", "admin")}
        uid = _owned_by(url, "u00001")  # the fake backend "runs" it at our upstream
        page = portal.www / "instances" / uid / "lab"
        page.mkdir(parents=True)
        (page / "index.html").write_text("hello\n")
        portal.start()
        _wait_active(portal, tokens["u00001"], uid)
        rows = api_rows(portal, tokens, uid, plan, args.requests)
        lag = loop_lag(portal, tokens, uid, args.requests)
        portal.stop()
        sweeps = asyncio.run(scale_sweeps.run(url, args, plan))
        print_table(args, rows, lag, sweeps)
    finally:
        portal.stop()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
            with connect(f"{PG}/postgres") as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        else:
            print(f"kept: database {name}, dir {tmp}")


def _owned_by(url: str, username: str) -> str:
    with connect(url) as conn:
        row = conn.execute(
            "SELECT i.uid FROM instances i JOIN users u ON u.id = i.owner_id "
            "WHERE u.username = %s ORDER BY i.id LIMIT 1", (username,)).fetchone()
        assert row is not None
        conn.execute("UPDATE instances SET target = 'RUNNING', status = 'STOPPED', "
                     "updated_at = now() - interval '1 hour' WHERE uid = %s", (row[0],))
    return str(row[0])


def _wait_active(portal: Portal, token: str, uid: str) -> None:
    with httpx.Client(base_url=portal.base, headers={"Authorization": f"Bearer {token}"}) as c:
        for _ in range(600):
            status = c.get(f"/api/v1/instances/{uid}").json().get("status")
            if status == "ACTIVE":
                return
            time.sleep(0.1)
    raise SystemExit(f"{uid} never became ACTIVE (last: {status})")


def print_table(args: argparse.Namespace, rows: list[tuple[str, float, float, float]],
                lag: tuple[float, float, float, float, float],
                sweeps: list[tuple[str, float, int, str]]) -> None:
    print(f"\nAPI on PostgreSQL, {args.instances:,} instances, {args.users:,} users, "
          f"~{args.events:,} events ({args.requests} requests per row and mode)\n")
    print(f"| {'request':34} | p50 ms | p99 ms | p99 ms, 4 clients | goal p99 | met |")
    print(f"|{'-' * 36}|--------|--------|-------------------|----------|-----|")
    for name, p50, p99, c99 in rows:
        met = "yes" if max(p99, c99) < GOAL_P99_MS else "NO"
        print(f"| {name:34} | {p50:6.1f} | {p99:6.1f} | {c99:17.1f} | < {GOAL_P99_MS:.0f} ms  |"
              f" {met:3} |")
    idle, busy, before, peak, after = lag
    ratio = busy / idle if idle else 0.0
    print(f"\nEvent loop: proxy p99 idle {idle:.1f} ms, during 2 admin usage reports "
          f"{busy:.1f} ms = {ratio:.1f}x (goal <= 2x: {'met' if ratio <= 2 else 'NOT met'})")
    print(f"Portal RSS: {before:.0f} MiB before the reports, peak {peak:.0f} MiB, "
          f"{after:.0f} MiB after")
    print("\n| sweep | seconds | SQL statements | goal | met |")
    print("|-------|---------|----------------|------|-----|")
    for name, seconds, statements, note in sweeps:
        print(f"| {name} | {seconds:.3f} | {statements} | < 1 s | "
              f"{'yes' if seconds < 1 else 'NO'} {note} |")


if __name__ == "__main__":
    main()
