"""Waiting for the reconcile sweep of a running portal, by its job-run counter.

The scheduler counts every run of a leader job in ``job_runs`` when it starts, and runs of
one job never overlap. So once the counter has grown by two since a moment, at least one
whole sweep started and finished after that moment: the event a test waits for instead of
sleeping for "a few intervals". Jobs every process runs (the activity flush) are not in
``job_runs``; each process counts the runs it finished in its ``/healthz`` answer instead.
"""

from __future__ import annotations

import time

import httpx

from tests.conftest import AtriumServer
from tests.lifetime_helpers import query

SWEEP = "reconcile-sweep"


def job_runs(srv: AtriumServer, job: str = SWEEP) -> int:
    """How often ``job`` has started, over every leader of ``srv``'s database."""
    rows = query(srv.env["ATRIUM_DATABASE_URL"], "SELECT runs FROM job_runs WHERE job = :job",
                 job=job)
    return int(rows[0][0]) if rows else 0


def wait_for_sweeps(srv: AtriumServer, whole: int = 1, timeout: float = 60,
                    job: str = SWEEP) -> int:
    """Return once ``whole`` complete runs of ``job`` happened after this call began."""
    before = job_runs(srv, job)
    deadline = time.monotonic() + timeout
    while (now := job_runs(srv, job)) < before + whole + 1:
        assert time.monotonic() < deadline, f"{job}: {now - before} runs in {timeout} s"
        time.sleep(0.1)
    return now


def local_runs(srv: AtriumServer, job: str) -> int:
    """Runs of ``job`` finished by ``srv``'s process (its /healthz counts them)."""
    return int(httpx.get(f"{srv.url}/healthz", timeout=30).json()["jobs"].get(job, 0))


def wait_for_local_runs(srv: AtriumServer, job: str, whole: int = 1,
                        timeout: float = 60) -> None:
    """Return once ``srv``'s process finished ``whole`` runs of ``job`` that began after
    this call (one more than that finished: the first may have been under way)."""
    before = local_runs(srv, job)
    deadline = time.monotonic() + timeout
    while local_runs(srv, job) < before + whole + 1:
        assert time.monotonic() < deadline, f"{job}: not run {whole} times in {timeout} s"
        time.sleep(0.1)
