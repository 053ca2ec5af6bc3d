#!/usr/bin/env python3
"""Atrium's proxy against JupyterHub's configurable-http-proxy (CHP), side by side.

    V=$(ls -d ~/.cache/atrium/venv-* | grep -v probe | head -1)
    $V/bin/python benchmarks/proxy_bench.py            # about 1.5-2 minutes
    $V/bin/python benchmarks/proxy_bench.py --profile  # + a py-spy profile of Atrium

One run starts, on 127.0.0.1 only:

* an upstream (benchmarks/upstream.js, Node's http module + npm ``ws``): a small JSON
  answer, a large streamed body and a WebSocket echo;
* a real Atrium portal (``atrium serve``, SQLite in a temporary state dir, demo mode), with
  the upstream registered as an instance of ``alice`` (backend ``bench``, which is not
  enabled, status ACTIVE: the reconciler leaves it alone), reached with a bearer token so
  every request is authorised;
* CHP 5.x with a route ``/instances/<uid>/lab`` to the same upstream (as JupyterHub sets).

It then measures, interleaving the two proxies so that noise from other work on the
machine hits both alike: the small-request rate (wrk, after a warm-up: CHP's JIT needs a
few seconds), the bulk throughput (curl downloading the large body, at 256 MiB and at a
size below Tornado's default 100 MiB body limit), the WebSocket round-trip latency
(benchmarks/ws_rtt.js, direct / through Atrium / through CHP: one echo per message, and a
burst of 5 answers per message as a Jupyter kernel sends for one execution), the CPU time
each proxy spends per request, per GB and per round trip (robust to other load on the
machine, unlike wall-clock rates), each proxy's memory, and the memory a proxy gains while
a slow reader downloads (a proxy that streams with backpressure gains ~nothing).

It prints a table with the ratios against the goals (1.5x CHP's small-request rate, 2.5x
its bulk throughput, < 1 ms added WebSocket latency) and exits 0: it reports, it does not
assert. Missing tools are installed first: wrk (``apt-get install -y wrk``), CHP and ws
(npm, into ``${XDG_CACHE_HOME:-~/.cache}/atrium/chp``), py-spy with ``--profile`` (PyPI,
into ``.../atrium/py-spy``). Every process it starts is stopped at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from bench_setup import (
    BURST,
    GOAL_BULK,
    GOAL_RATE,
    GOAL_WS_ADDED_US,
    HERE,
    ROOT,
    Atrium,
    Chp,
    MiB,
    PeakRss,
    Processes,
    ensure_node_modules,
    ensure_py_spy,
    ensure_wrk,
    http_get,
    node_env,
    rss_mib,
    run,
    start_atrium,
    start_chp,
    start_upstream,
)


@dataclass
class Target:
    """One way to reach the upstream: directly, through Atrium or through CHP."""

    name: str
    base: str  # http://host:port/instances/<uid>/lab (or the upstream's root)
    headers: dict[str, str]
    pid: int | None = None  # the process whose CPU time and memory are measured


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of ``pid`` (all its threads) so far; 0 when unknown."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


@dataclass
class RateResult:
    rps: float
    requests: int
    bad: int  # non-2xx answers plus socket errors
    p50_ms: float
    p99_ms: float
    cpu_s: float = 0.0  # CPU time the target's process spent meanwhile


def _ms(value: str) -> float:
    """wrk's durations ("512.00us", "1.20ms", "2.00s") in milliseconds."""
    for unit, scale in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
        if value.endswith(unit):
            return float(value[: -len(unit)]) * scale
    return float("nan")


def wrk_rate(wrk: str, target: Target, seconds: float, connections: int) -> RateResult:
    """Small requests for ``seconds`` over ``connections`` keep-alive connections."""
    argv = [wrk, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency",
            "--timeout", "5s"]
    for name, value in target.headers.items():
        argv += ["-H", f"{name}: {value}"]
    cpu = cpu_seconds(target.pid)
    result = run([*argv, f"{target.base}/api/small"], seconds + 30)
    cpu = cpu_seconds(target.pid) - cpu
    out = result.stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    if result.returncode != 0 or rps is None or total is None:
        raise RuntimeError(f"wrk failed on {target.name}:\n{out}\n{result.stderr}")
    bad = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                       out)
    if errors:
        bad += sum(int(n) for n in errors.groups())
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    return RateResult(float(rps.group(1)), int(total.group(1)), bad,
                      _ms(p50.group(1)) if p50 else float("nan"),
                      _ms(p99.group(1)) if p99 else float("nan"), cpu)


def curl_download(target: Target, size: int, timeout: float,
                  limit_rate: str | None = None) -> tuple[int, int, float]:
    """HTTP status, bytes received and seconds for one download of ``size`` bytes."""
    argv = ["curl", "-sS", "-o", "/dev/null", "--max-time", str(timeout), "-w",
            "%{http_code} %{size_download} %{time_total}"]
    if limit_rate:
        argv += ["--limit-rate", limit_rate]
    for name, value in target.headers.items():
        argv += ["-H", f"{name}: {value}"]
    result = run([*argv, f"{target.base}/files/big?bytes={size}"], timeout + 10)
    code, got, seconds = [*result.stdout.split(), "0", "0", "0"][:3]
    return int(code), int(got), float(seconds)


def ws_rtts(target: Target, count: int, warmup: int, timeout: float,
            replies: int = 1) -> list[float]:
    """Round-trip times (microseconds) of ``count`` messages sent one at a time, each
    answered ``replies`` times by the upstream (the time is until the last answer)."""
    url = (target.base.replace("http://", "ws://", 1)
           + f"/api/kernels/bench/channels/ws?replies={replies}")
    result = run(["node", str(HERE / "ws_rtt.js"), url, str(count), str(warmup), str(timeout),
                  json.dumps(target.headers), str(replies)], timeout + 10, env=node_env())
    try:
        answer = json.loads(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        answer = {"error": result.stdout + result.stderr}
    if "error" in answer:
        raise RuntimeError(f"WebSocket round trips through {target.name} failed: "
                           f"{answer['error']}")
    return [float(x) for x in answer["rtt_us"]]


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def sanity_checks(atrium: Atrium, chp: Chp, direct: Target) -> None:
    """Both proxies reach the upstream; Atrium injects the instance token and keeps the
    caller's bearer token to itself; Atrium refuses a request without credentials."""
    status, body = http_get(f"{atrium.base}/api/headers", atrium.headers)
    if status != 200:
        raise RuntimeError(f"Atrium answered {status} on the instance: {body[:300]!r}")
    seen = json.loads(body)
    if seen.get("authorization") != f"token {atrium.jupyter_token}":
        raise RuntimeError(f"Atrium did not inject the instance token: {seen}")
    status, _ = http_get(f"{atrium.base}/api/small")
    if status not in (401, 302):
        raise RuntimeError(f"Atrium let an anonymous request through ({status})")
    status, _ = http_get(f"{chp.base}/api/small")
    if status != 200:
        raise RuntimeError(f"CHP answered {status} on its route")
    status, _ = http_get(f"{direct.base}/api/small")
    if status != 200:
        raise RuntimeError(f"the upstream answered {status}")


# --- profiling ---------------------------------------------------------------------------


def profile_atrium(py_spy: str, wrk: str, target: Target, seconds: float, connections: int,
                   out: Path) -> str:
    """py-spy samples Atrium while wrk loads it; returns a summary of where time goes."""
    raw = out / "atrium-profile.txt"
    spy = subprocess.Popen([py_spy, "record", "-p", str(target.pid), "-d", str(int(seconds)),
                            "-r", "250", "-f", "raw", "-o", str(raw), "--nonblocking"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           start_new_session=True)
    err = b""
    try:
        time.sleep(0.5)
        wrk_rate(wrk, target, seconds - 1, connections)
        _, err = spy.communicate(timeout=seconds + 30)
    finally:
        if spy.poll() is None:
            os.killpg(spy.pid, signal.SIGKILL)
            spy.wait(timeout=5)
    if not raw.exists():
        return f"py-spy produced no profile: {err.decode(errors='replace')[-500:]}"
    return summarise_profile(raw)


def _frame_label(frame: str) -> str:
    match = re.match(r"(.*) \((.*?):\d+\)$", frame)
    if not match:
        return frame
    func, path = match.groups()
    for marker in ("site-packages/", f"{ROOT}/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{func} ({path})"


def summarise_profile(raw: Path, top: int = 18) -> str:
    """Self and inclusive time per function from py-spy's collapsed stacks."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_frame_label(f) for f in stack.split(";")]
        total += n
        own[frames[-1]] += n
        for frame in set(frames[1:]):
            inclusive[frame] += n
    if not total:
        return "py-spy recorded no samples"
    lines = [f"py-spy: {total} samples of Atrium under wrk", "  self time:"]
    lines += [f"    {100 * n / total:5.1f}%  {name}" for name, n in own.most_common(top)]
    lines.append("  inclusive time:")
    lines += [f"    {100 * n / total:5.1f}%  {name}" for name, n in inclusive.most_common(top)]
    return "\n".join(lines)


# --- the run -----------------------------------------------------------------------------


@dataclass
class Results:
    rate: dict[str, list[RateResult]] = field(default_factory=dict)
    bulk: dict[int, dict[str, list[float]]] = field(default_factory=dict)  # MiB -> MB/s
    bulk_errors: dict[int, dict[str, str]] = field(default_factory=dict)  # MiB -> failure
    # "echo" / "burst" -> target -> round trips in microseconds
    ws: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    # phase -> target -> [CPU seconds of the target's process, units of work]
    cpu: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    rss: dict[str, float] = field(default_factory=dict)  # MiB after the runs
    rss_peak_bulk: dict[str, float] = field(default_factory=dict)
    slow_growth: dict[str, float] = field(default_factory=dict)  # MiB gained, slow reader
    notes: list[str] = field(default_factory=list)

    def add_cpu(self, phase: str, name: str, seconds: float, units: float) -> None:
        entry = self.cpu.setdefault(phase, {}).setdefault(name, [0.0, 0.0])
        entry[0] += seconds
        entry[1] += units

    def cpu_per(self, phase: str, name: str, scale: float) -> float:
        """CPU seconds per unit of work in ``phase``, times ``scale``; NaN without data."""
        seconds, units = self.cpu.get(phase, {}).get(name, [0.0, 0.0])
        return seconds / units * scale if units else float("nan")


def measure(args: argparse.Namespace, wrk: str, direct: Target, atrium: Target,
            chp: Target) -> Results:
    res = Results()
    proxies = [atrium, chp]
    proxy_pids = {t.name: t.pid for t in proxies if t.pid}

    print(f"small requests: wrk, {args.connections} connections, {args.warmup:g} s warm-up, "
          f"then {args.rounds} x {args.duration:g} s per proxy, interleaved ...", flush=True)
    for target in proxies:  # JIT, caches, connection pools (CHP needs several seconds)
        wrk_rate(wrk, target, args.warmup, args.connections)
    res.rate[direct.name] = [wrk_rate(wrk, direct, args.duration, args.connections)]
    for _ in range(args.rounds):
        for target in proxies:
            result = wrk_rate(wrk, target, args.duration, args.connections)
            res.rate.setdefault(target.name, []).append(result)
            res.add_cpu("rate", target.name, result.cpu_s, result.requests)

    chunks = 4
    print(f"websocket: {args.ws_messages} echo round trips and {args.ws_bursts} bursts of "
          f"{BURST} replies per target, in {chunks} interleaved parts ...", flush=True)
    for _ in range(chunks):
        for target in (direct, *proxies):
            cpu = cpu_seconds(target.pid)
            rtts = ws_rtts(target, max(1, args.ws_messages // chunks), 100, timeout=60)
            res.add_cpu("ws", target.name, cpu_seconds(target.pid) - cpu, len(rtts) + 100)
            res.ws.setdefault("echo", {}).setdefault(target.name, []).extend(rtts)
            res.ws.setdefault("burst", {}).setdefault(target.name, []).extend(
                ws_rtts(target, max(1, args.ws_bursts // chunks), 10, timeout=60,
                        replies=BURST))

    sizes = sorted({args.bulk_mib, args.small_bulk_mib}, reverse=True)
    print(f"bulk: {args.bulk_reps} downloads each of " + " and ".join(f"{m} MiB" for m in sizes)
          + " per target, interleaved ...", flush=True)
    with PeakRss({name: pid for name, pid in proxy_pids.items() if pid}) as peak:
        for mib in sizes:
            res.bulk[mib] = {}
            res.bulk_errors[mib] = {}
            for _ in range(args.bulk_reps):
                for target in (direct, *proxies):
                    cpu = cpu_seconds(target.pid)
                    code, got, seconds = curl_download(target, mib * MiB, timeout=120)
                    if code != 200 or got != mib * MiB:
                        res.bulk_errors[mib][target.name] = (
                            f"HTTP {code}, {got / MiB:.0f} of {mib} MiB")
                        continue
                    res.add_cpu(f"bulk{mib}", target.name, cpu_seconds(target.pid) - cpu, got)
                    res.bulk[mib].setdefault(target.name, []).append(got / seconds / 1e6)
    res.rss_peak_bulk = dict(peak.peak)
    res.rss = {name: rss_mib(pid) for name, pid in proxy_pids.items()}

    mib = args.small_bulk_mib
    print(f"slow reader: {mib} MiB at {args.slow_rate}/s for {args.slow_seconds:g} s through "
          "each proxy ...", flush=True)
    for target in proxies:
        assert target.pid is not None
        before = rss_mib(target.pid)
        with PeakRss({target.name: target.pid}) as peak:
            curl_download(target, mib * MiB, timeout=args.slow_seconds,
                          limit_rate=args.slow_rate)
        time.sleep(0.3)
        res.slow_growth[target.name] = max(0.0, peak.peak[target.name] - before)
    return res


def fmt(value: float, digits: int = 0) -> str:
    return "-" if value != value else f"{value:,.{digits}f}"  # NaN -> "-"


def table(res: Results, args: argparse.Namespace, versions: dict[str, str]) -> str:
    """The results as a text table, then the details (rounds, errors, versions)."""
    a, c, d = "Atrium", "CHP", "direct"
    nan = float("nan")

    def verdict(ok: bool) -> str:
        return "MET" if ok else "MISSED"

    def ratio(x: float, y: float) -> float:
        return x / y if y == y and y != 0 else nan

    mean_rate = {k: statistics.fmean(r.rps for r in v) for k, v in res.rate.items()}
    lat = {k: (statistics.fmean(r.p50_ms for r in v), statistics.fmean(r.p99_ms for r in v))
           for k, v in res.rate.items()}
    cpu_req = {k: res.cpu_per("rate", k, 1e6) for k in (a, c)}
    rate_ratio = ratio(mean_rate[a], mean_rate[c])
    rate_eff = ratio(cpu_req[c], cpu_req[a])
    rows: list[tuple[str, ...]] = [
        ("metric", d, a, c, "Atrium vs CHP", "goal", ""),
        (f"small requests/s (wrk -c{args.connections}, mean of {args.rounds}x"
         f"{args.duration:g} s)", fmt(mean_rate[d]), fmt(mean_rate[a]), fmt(mean_rate[c]),
         f"{rate_ratio:.2f}x", f">= {GOAL_RATE}x", verdict(rate_ratio >= GOAL_RATE)),
        ("  latency p50 / p99, ms", f"{lat[d][0]:.2f} / {lat[d][1]:.2f}",
         f"{lat[a][0]:.2f} / {lat[a][1]:.2f}", f"{lat[c][0]:.2f} / {lat[c][1]:.2f}", "", "", ""),
        ("  proxy CPU per request, us", "", fmt(cpu_req[a]), fmt(cpu_req[c]),
         f"{rate_eff:.2f}x", f"(>= {GOAL_RATE}x)", verdict(rate_eff >= GOAL_RATE)),
    ]
    for mib in sorted(res.bulk, reverse=True):
        bulk = {k: statistics.median(v) for k, v in res.bulk[mib].items() if v}
        failed = res.bulk_errors.get(mib, {})
        bulk_ratio = ratio(bulk.get(a, 0.0), bulk.get(c, nan))
        cpu_gb = {k: res.cpu_per(f"bulk{mib}", k, 1e9) for k in (a, c)}
        bulk_eff = ratio(cpu_gb[c], cpu_gb[a])
        rows += [
            (f"bulk MB/s ({mib} MiB, median of {args.bulk_reps})",
             *(fmt(bulk[k]) if k in bulk else "FAILED" if k in failed else "-"
               for k in (d, a, c)),
             f"{bulk_ratio:.2f}x", f">= {GOAL_BULK}x", verdict(bulk_ratio >= GOAL_BULK)),
            ("  proxy CPU per GB, s", "", fmt(cpu_gb[a], 2), fmt(cpu_gb[c], 2),
             f"{bulk_eff:.2f}x", f"(>= {GOAL_BULK}x)",
             verdict(bulk_eff >= GOAL_BULK) if bulk_eff == bulk_eff else ""),
        ]
    for kind, label, pct in (("echo", "p50", 50), ("echo", "p99", 99), ("burst", "p50", 50),
                             ("burst", "p99", 99)):
        at = {k: percentile(v, pct) for k, v in res.ws[kind].items()}
        added_a, added_c = at[a] - at[d], at[c] - at[d]
        what = "ws echo" if kind == "echo" else f"ws {BURST} replies, last"
        rows.append((f"{what} {label}, us (added)", fmt(at[d]),
                     f"{fmt(at[a])} ({added_a:+,.0f})", f"{fmt(at[c])} ({added_c:+,.0f})",
                     f"{added_a - added_c:+,.0f} us", f"added < {GOAL_WS_ADDED_US:,.0f} us",
                     verdict(added_a < GOAL_WS_ADDED_US)))
    rows += [
        ("  proxy CPU per echo round trip, us", "", fmt(res.cpu_per("ws", a, 1e6)),
         fmt(res.cpu_per("ws", c, 1e6)), "", "", ""),
        ("proxy RSS MiB after runs (peak in bulk)", "",
         f"{fmt(res.rss.get(a, 0))} ({fmt(res.rss_peak_bulk.get(a, 0))})",
         f"{fmt(res.rss.get(c, 0))} ({fmt(res.rss_peak_bulk.get(c, 0))})", "", "", ""),
        (f"RSS MiB gained, slow reader ({args.small_bulk_mib} MiB at {args.slow_rate}/s)", "",
         fmt(res.slow_growth.get(a, nan)), fmt(res.slow_growth.get(c, nan)), "",
         "~0 (streams)", ""),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for n, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in
                                             zip(row[1:], widths[1:], strict=True)]
        out.append("  ".join(cells).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    out += [
        "",
        "Goal rows compare wall-clock numbers; the CPU rows (CHP's CPU per unit / Atrium's)",
        "are the same comparison made robust to other load on the machine.",
        "requests/s per round: " + "; ".join(
            f"{k} " + ", ".join(fmt(r.rps) for r in v) for k, v in res.rate.items()),
        "small requests refused or failed (non-2xx, socket errors): " + ", ".join(
            f"{k} {sum(r.bad for r in v)} of {sum(r.requests for r in v)}"
            for k, v in res.rate.items()),
        *(f"bulk MB/s per download, {mib} MiB: " + "; ".join(
            f"{k} " + ", ".join(fmt(x) for x in v) for k, v in per.items())
          for mib, per in res.bulk.items()),
        *(f"bulk {mib} MiB through {k} failed: {why}"
          for mib, errs in res.bulk_errors.items() for k, why in errs.items()),
        "versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if k != "load"),
        f"load average at start (cores: {os.cpu_count()}): {versions.get('load', '')}",
        *res.notes,
    ]
    return "\n".join(out)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--warmup", type=float, default=4.0,
                   help="seconds of wrk per proxy before measuring (default 4)")
    p.add_argument("--duration", type=float, default=4.0,
                   help="seconds of each wrk round (default 4)")
    p.add_argument("--rounds", type=int, default=3,
                   help="wrk rounds per proxy, interleaved (default 3)")
    p.add_argument("--connections", type=int, default=8,
                   help="wrk connections (default 8)")
    p.add_argument("--bulk-mib", type=int, default=256,
                   help="size of the large body in MiB (default 256)")
    p.add_argument("--small-bulk-mib", type=int, default=64,
                   help="a second size, below Tornado's default 100 MiB max_body_size; "
                        "the slow reader downloads this one (default 64)")
    p.add_argument("--bulk-reps", type=int, default=3, help="downloads per target and size")
    p.add_argument("--ws-messages", type=int, default=2000,
                   help="WebSocket round trips per target (default 2000)")
    p.add_argument("--ws-bursts", type=int, default=200,
                   help=f"WebSocket messages answered {BURST} times, per target (default 200)")
    p.add_argument("--slow-rate", default="4M",
                   help="the slow reader's rate, curl syntax (default 4M)")
    p.add_argument("--slow-seconds", type=float, default=3.0,
                   help="how long the slow reader reads (default 3)")
    p.add_argument("--profile", action="store_true",
                   help="also profile Atrium with py-spy under wrk and summarise it")
    p.add_argument("--keep", action="store_true",
                   help="keep the temporary state dir and logs")
    args = p.parse_args()
    args.warmup = min(max(args.warmup, 1.0), 60.0)
    args.duration = min(max(args.duration, 1.0), 60.0)
    args.rounds = min(max(args.rounds, 1), 10)
    args.connections = min(max(args.connections, 1), 256)
    args.bulk_reps = min(max(args.bulk_reps, 1), 10)
    args.bulk_mib = min(max(args.bulk_mib, 1), 4096)
    args.small_bulk_mib = min(max(args.small_bulk_mib, 1), 4096)
    args.ws_messages = min(max(args.ws_messages, 4), 100_000)
    args.ws_bursts = min(max(args.ws_bursts, 4), 10_000)
    args.slow_seconds = min(max(args.slow_seconds, 1.0), 30.0)
    return args


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def workspace(keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="atrium-proxy-bench-"))
    try:
        yield path
    finally:
        if keep:
            print(f"kept {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, _terminate)
    started = time.monotonic()
    wrk = ensure_wrk()
    chp_version = ensure_node_modules()
    py_spy = ensure_py_spy() if args.profile else ""
    node_version = run(["node", "--version"], 10).stdout.strip()
    versions = {"configurable-http-proxy": chp_version, "node": node_version,
                "python": sys.version.split()[0],
                "load": " ".join(f"{x:.2f}" for x in os.getloadavg())}
    with workspace(args.keep) as tmp:
        logs = tmp / "logs"
        logs.mkdir()
        procs = Processes(logs)
        try:
            print("starting the upstream, Atrium and CHP ...", flush=True)
            upstream, upstream_proc = start_upstream(procs)
            atrium = start_atrium(procs, tmp / "state", upstream)
            chp = start_chp(procs, upstream, atrium.uid)
            direct = Target("direct", upstream, {}, upstream_proc.pid)
            via_atrium = Target("Atrium", atrium.base, atrium.headers, atrium.proc.pid)
            via_chp = Target("CHP", chp.base, {"Authorization": f"Bearer {atrium.token}"},
                             chp.proc.pid)  # the same header: CHP just forwards it
            sanity_checks(atrium, chp, direct)
            results = measure(args, wrk, direct, via_atrium, via_chp)
            profile = ""
            if args.profile:
                print("profiling Atrium under wrk (py-spy) ...", flush=True)
                profile = profile_atrium(py_spy, wrk, via_atrium, 8, args.connections, logs)
            if atrium.proc.poll() is not None or chp.proc.poll() is not None:
                results.notes.append("a proxy exited during the run: see its log")
        except Exception as err:
            print(f"\nbenchmark failed: {err}", file=sys.stderr)
            for name in ("atrium", "chp", "upstream"):
                tail = procs.log_tail(name, 1500)
                if tail.strip():
                    print(f"--- {name}.log (tail)\n{tail}", file=sys.stderr)
            return 1
        finally:
            procs.stop_all()
    print()
    print(table(results, args, versions))
    if profile:
        print()
        print(profile)
    print(f"\ntotal time {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
