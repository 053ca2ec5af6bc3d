"""Two Atrium processes on one PostgreSQL: exactly one runs the scheduled jobs; kill -9 it
and the other takes over once the lease expires, and does the work (an expiry)."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator

import pytest

from tests.conftest import AtriumServer, Databases, cleanup_sessions
from tests.lifetime_helpers import SmtpSink, lifetime_env, query, smtp_server
from tests.sessions import launch, processes_of, wait_for

LEASE = 3.0
JOBS = ("lifetime-warn", "lifetime-expire", "reconcile-sweep")


@pytest.fixture
def pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Databases]:
    dbs = Databases("postgres", tmp_path_factory)
    yield dbs
    dbs.drop_all()


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with smtp_server() as s:
        yield s


def _runs(url: str) -> dict[str, tuple[int, str]]:
    return {job: (int(runs), holder) for job, runs, holder in query(
        url, "SELECT job, runs, last_holder FROM job_runs")}


def _holder(url: str) -> tuple[str, dt.datetime]:
    [(holder, expires)] = query(url, "SELECT holder, expires_at FROM scheduler_leases")
    return str(holder), expires


@pytest.mark.slow
def test_one_leader_runs_each_job_and_a_killed_leader_is_replaced(
        pg: Databases, tmp_path_factory: pytest.TempPathFactory, sink: SmtpSink) -> None:
    url = pg.new()
    state = tmp_path_factory.mktemp("replicas")  # one shared state dir, as on shared storage
    env = lifetime_env(sink, ATRIUM_LEADER_LEASE=str(LEASE))
    first = AtriumServer(url, state, **env)
    second = AtriumServer(url, state, **env)
    second.deployment = first.deployment
    second.env["ATRIUM_DEPLOYMENT_ID"] = first.deployment
    first.log, second.log = state / "first.log", state / "second.log"
    first.cli("demo", "--seed-only")
    first.start()
    second.start()
    servers = [first, second]
    try:
        deadline = time.monotonic() + 20
        while not all(job in _runs(url) for job in JOBS):
            assert time.monotonic() < deadline, _runs(url)
            time.sleep(0.2)
        holder, _ = _holder(url)
        [leader] = [s for s in servers if holder.endswith(f":{s.port}")]
        [follower] = [s for s in servers if s is not leader]

        # Every run is recorded with the process that made it: while each job runs five
        # more times, every run we see is the leader's (were the follower running them too,
        # the holder would alternate between the two at every interval).
        before = _runs(url)
        seen: dict[str, set[str]] = {job: set() for job in JOBS}
        deadline = time.monotonic() + 60
        while True:
            now = _runs(url)
            for job in JOBS:
                seen[job].add(now[job][1])
            if all(now[job][0] >= before[job][0] + 5 for job in JOBS):
                break
            assert time.monotonic() < deadline, (before, now)
            time.sleep(0.1)
        assert seen == {job: {holder} for job in JOBS}, seen
        assert _holder(url)[0] == holder
        persisted = {row[0] for row in query(url, "SELECT id FROM apscheduler_jobs")}
        assert persisted == set(JOBS)

        # A session launched through the leader, then the leader dies (kill -9).
        alice = leader.client("alice")
        uid = launch(alice, "outlives its portal")
        wait_for(alice, uid, {"ACTIVE"})
        leader.kill()
        [(killed_at,)] = query(url, "SELECT now() AT TIME ZONE 'utc'")
        _, dead_lease_ends = _holder(url)
        deadline = time.monotonic() + LEASE + 30
        while _holder(url)[0] == holder:
            assert time.monotonic() < deadline, "the lease was not taken over"
            time.sleep(0.1)
        [(new_holder, acquired_at)] = query(
            url, "SELECT holder, acquired_at FROM scheduler_leases")
        assert new_holder.endswith(f":{follower.port}")
        # On the database's clock: the dead leader's lease ran out at most one lease after
        # its death, and the follower took it only then (never two leaders at once).
        assert dead_lease_ends <= killed_at + dt.timedelta(seconds=LEASE)
        assert acquired_at >= dead_lease_ends
        base = _runs(url)
        deadline = time.monotonic() + 15
        while not all(_runs(url)[job][0] > base[job][0] and _runs(url)[job][1] == new_holder
                      for job in JOBS):
            assert time.monotonic() < deadline, _runs(url)
            time.sleep(0.2)

        # The new leader does the work: the session expires and is deleted.
        alice = follower.client("alice")
        end = dt.datetime.now(dt.UTC).replace(tzinfo=None) + dt.timedelta(seconds=2)
        r = alice.patch(f"/api/v1/instances/{uid}/lifetime",
                        json={"termination_date": end.isoformat()})
        assert r.status_code == 200, r.text
        wait_for(alice, uid, {"DELETED"}, timeout=60)
        assert processes_of(first.deployment, uid) == []
        sink.wait(lambda ms: sum("alice@example.org" in m.to and "has been deleted" in m.subject
                                 for m in ms) == 1)
        kinds = [e["kind"] for e in follower.client("admin").get(
            f"/api/v1/instances/{uid}/events").json()]
        assert kinds.count("expired") == 1 and kinds.count("warn-lifetime") == 1
    finally:
        for s in servers:
            s.stop()
        cleanup_sessions(first)
