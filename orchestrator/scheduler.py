"""Scheduled jobs (APScheduler 3) and the election of the one process that runs them.

Two kinds of jobs:

* **leader jobs** (expiry sweep, warnings, reconcile sweep): persisted in the database
  (APScheduler's ``SQLAlchemyJobStore``, table ``apscheduler_jobs``) and run by exactly one
  Atrium process at a time, the holder of the ``scheduler`` lease. A new leader carries on
  with the schedule the last one persisted: a run missed while nobody led is made once
  (coalesced), however late.
* **local jobs** (the activity flush): every process runs its own, in memory, because each
  holds activity only it has seen; a leader-only flush would drop the other replicas'.

Leader election is a lease row (``scheduler_leases``): the holder renews it every third of
:attr:`JobScheduler.lease` seconds with one conditional UPDATE; any process takes it once it
has expired, so a crashed leader is replaced after at most one lease. Lease times come from
the database's clock on PostgreSQL (replicas' clocks may differ), from this machine's on
SQLite (one machine). A leader that cannot renew stops running jobs before its lease can
have expired elsewhere (its local deadline is measured from *before* the last successful
renewal, minus a margin). The holder's name is ``host:port``, unique among live processes,
so a restarted process takes its own lease back at once instead of waiting for it.

``SQLAlchemyJobStore`` is synchronous, so the leader's scheduler runs in a thread of its own
(APScheduler's ``BackgroundScheduler``) and hands each job's coroutine to the portal's event
loop: the loop never waits for the job store. (On SQLite it must not: a store write waiting
on the event loop's open write transaction would deadlock both until the busy timeout.)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import case, literal, literal_column, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.types import DateTime

from orchestrator.db import Database
from orchestrator.lifetime import LifetimeService
from orchestrator.models import JobRun, SchedulerLease, utcnow
from orchestrator.reconciler import Reconciler
from orchestrator.settings import Settings

log = logging.getLogger("atrium.scheduler")

LEASE_NAME = "scheduler"
JOB_TABLE = "apscheduler_jobs"
ENTRY = "orchestrator.scheduler:run_leader_job"  # what persisted jobs call


def sync_url(url: str) -> str:
    """The synchronous twin of Atrium's async database URL (for APScheduler's job store)."""
    for async_prefix, sync_prefix in (("sqlite+aiosqlite:", "sqlite:"),
                                      ("postgresql+asyncpg:", "postgresql+psycopg:")):
        if url.startswith(async_prefix):
            return sync_prefix + url[len(async_prefix):]
    return url


@dataclass(frozen=True)
class Job:
    """A job: ``func`` every ``interval`` seconds; ``leader`` jobs run in one process only.
    ``catch_up``: run at once when this process becomes the leader (e.g. the reconcile
    sweep, which must follow a crash quickly)."""

    name: str
    interval: float
    func: Callable[[], Awaitable[Any]]
    leader: bool = True
    catch_up: bool = False


# The scheduler of this process: persisted jobs name a function, not an object, so they
# find their body here when they run.
_current: JobScheduler | None = None


async def run_job(name: str) -> None:
    """Entry point of the local jobs (on the event loop)."""
    if _current is not None:
        await _current.run(name)


def run_leader_job(name: str) -> None:
    """Entry point of the persisted jobs (stored as ``orchestrator.scheduler:run_leader_job``):
    called in APScheduler's worker thread, runs the job on the portal's event loop and waits
    for it (so ``max_instances=1`` holds)."""
    current = _current
    if current is None or current.loop is None:
        return
    future = asyncio.run_coroutine_threadsafe(current.run(name), current.loop)
    current.running.add(future)
    try:
        future.result()
    except concurrent.futures.CancelledError:
        pass  # the portal is stopping
    finally:
        current.running.discard(future)


class _LeaderScheduler(BackgroundScheduler):
    """A ``BackgroundScheduler`` that survives job store errors (the database restarting,
    SQLite busy): APScheduler 3 lets an error while updating a job end its thread's loop."""

    def _process_jobs(self) -> float | None:
        try:
            wait: float | None = super()._process_jobs()
            return wait
        except Exception:
            log.exception("the job scheduler failed to read or update its jobs; retrying")
            return 5.0


class Lease:
    """The ``scheduler`` lease row: :meth:`acquire` takes or renews it, :meth:`release`
    gives it up."""

    def __init__(self, db: Database, holder: str, seconds: float,
                 name: str = LEASE_NAME) -> None:
        self.db = db
        self.holder = holder
        self.seconds = seconds
        self.name = name

    def _times(self) -> tuple[Any, Any]:
        if self.db.is_sqlite:
            now = utcnow()
            return (literal(now, DateTime),
                    literal(now + dt.timedelta(seconds=self.seconds), DateTime))
        # The database's clock, as naive UTC like every column (``self.seconds`` is a float).
        now_sql = "timezone('UTC', statement_timestamp())"
        return (literal_column(now_sql, DateTime),
                literal_column(f"({now_sql} + interval '{self.seconds * 1000:.0f} "
                               "milliseconds')", DateTime))

    async def acquire(self) -> bool:
        """Take the lease if it is free or expired, renew it if it is ours; True if held."""
        now, expires = self._times()
        L = SchedulerLease
        async with self.db.session() as s:
            got = (await s.execute(
                update(L).where(L.name == self.name,
                                or_(L.holder == self.holder, L.expires_at < now))
                .values(holder=self.holder, expires_at=expires,
                        acquired_at=case((L.holder == self.holder, L.acquired_at), else_=now))
                .returning(L.name))).first() is not None
            if not got and await s.get(L, self.name) is None:
                # Created by the migration; recreated here if someone removed it.
                insert = postgresql.insert if not self.db.is_sqlite else sqlite.insert
                await s.execute(insert(L).values(
                    name=self.name, holder="", expires_at=dt.datetime(2000, 1, 1))
                    .on_conflict_do_nothing(index_elements=["name"]))
            await s.commit()
        return got

    async def release(self) -> None:
        async with self.db.session() as s:
            await s.execute(update(SchedulerLease).where(
                SchedulerLease.name == self.name, SchedulerLease.holder == self.holder)
                .values(expires_at=dt.datetime(2000, 1, 1)))
            await s.commit()

    async def current(self) -> SchedulerLease | None:
        async with self.db.session() as s:
            return await s.get(SchedulerLease, self.name)


class JobScheduler:
    """Runs the local jobs always and the leader jobs while this process holds the lease."""

    def __init__(self, db: Database, jobs: list[Job], *, holder: str, lease: float = 15.0
                 ) -> None:
        self.db = db
        self.jobs = {job.name: job for job in jobs}
        # Runs this process finished, per job (failed ones included): served by /healthz so
        # tests and operators wait for "a flush / a sweep ran here" instead of sleeping.
        self.completed: Counter[str] = Counter()
        self.lease = Lease(db, holder, lease)
        self.holder = holder
        self._renew_every = lease / 3
        self._margin = min(3.0, lease / 5)
        self._valid_until = 0.0  # monotonic time until which our lease surely holds
        self._leader: BackgroundScheduler | None = None
        self._local: AsyncIOScheduler | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        # Leader jobs running now (futures on the loop), cancelled when the portal stops.
        self.running: set[concurrent.futures.Future[None]] = set()

    @property
    def is_leader(self) -> bool:
        return self._leader is not None and time.monotonic() < self._valid_until

    def start(self) -> None:
        global _current
        _current = self
        self.loop = asyncio.get_running_loop()
        # APScheduler logs every run at INFO; run() logs what matters instead.
        logging.getLogger("apscheduler").setLevel(logging.WARNING)
        self._local = AsyncIOScheduler(jobstores={"default": MemoryJobStore()},
                                       job_defaults=_JOB_DEFAULTS, timezone=dt.UTC)
        for job in self.jobs.values():
            if not job.leader:
                self._local.add_job(run_job, IntervalTrigger(seconds=job.interval),
                                    args=[job.name], id=job.name, name=job.name)
        self._local.start()
        self._loop_task = asyncio.get_running_loop().create_task(self._elect())

    async def stop(self) -> None:
        """Stop both schedulers and hand the lease over (the next leader need not wait)."""
        global _current
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        if self._local is not None and self._local.running:
            self._local.shutdown(wait=False)
        was_leader = self._leader is not None
        self._step_down("shutting down")
        for future in list(self.running):
            future.cancel()
        if was_leader:
            try:
                await self.lease.release()
            except Exception:
                log.exception("releasing the scheduler lease failed (it expires by itself)")
        if _current is self:
            _current = None

    async def _elect(self) -> None:
        while True:
            began = time.monotonic()
            try:
                held = await self.lease.acquire()
            except Exception as err:
                log.warning("renewing the scheduler lease failed: %s", err)
                if self._leader is not None and time.monotonic() >= self._valid_until:
                    self._step_down("the lease could not be renewed in time")
            else:
                if held:
                    self._valid_until = began + self.lease.seconds - self._margin
                    if self._leader is None:
                        try:
                            # The job store is synchronous: never on the event loop.
                            self._leader = await asyncio.to_thread(self._lead)
                        except Exception:
                            log.exception("starting the job scheduler failed")
                elif self._leader is not None:
                    self._step_down("another process holds the lease")
            await asyncio.sleep(self._renew_every)

    def _lead(self) -> BackgroundScheduler:
        """Start the persisted jobs (in a thread: this talks to the job store)."""
        log.info("%s (pid %s) is now the scheduler leader", self.holder, os.getpid())
        options: dict[str, Any] = {"pool_pre_ping": True}
        if self.db.is_sqlite:
            options["connect_args"] = {"timeout": 30}
        store = SQLAlchemyJobStore(url=sync_url(self.db.url), tablename=JOB_TABLE,
                                   engine_options=options)
        scheduler = _LeaderScheduler(jobstores={"default": store}, job_defaults=_JOB_DEFAULTS,
                                     timezone=dt.UTC, daemon=True)
        scheduler.start(paused=True)
        now = dt.datetime.now(dt.UTC)
        for job in self.jobs.values():
            if not job.leader:
                continue
            existing = scheduler.get_job(job.name)
            interval = dt.timedelta(seconds=job.interval)
            if existing is None or existing.func_ref != ENTRY or getattr(
                    existing.trigger, "interval", None) != interval:
                # New, or changed in the settings or the code: (re)schedule from now.
                scheduler.add_job(ENTRY,
                                  IntervalTrigger(seconds=job.interval), args=[job.name],
                                  id=job.name, name=job.name, replace_existing=True)
            if job.catch_up:
                scheduler.modify_job(job.name, next_run_time=now)
        scheduler.resume()
        return scheduler

    def _step_down(self, why: str) -> None:
        if self._leader is None:
            return
        log.warning("%s stops leading the scheduled jobs: %s", self.holder, why)
        scheduler, self._leader = self._leader, None
        self._valid_until = 0.0
        if scheduler.running:
            scheduler.shutdown(wait=False)

    async def run(self, name: str) -> None:
        """Run job ``name`` now (leader jobs only while leading), recording the run."""
        job = self.jobs.get(name)
        if job is None:
            log.warning("no job %r in this process (a job store left over?)", name)
            return
        if job.leader and not self.is_leader:
            return  # lost the lease since APScheduler decided to run it
        if job.leader:
            await self._record(name, started=True)
        error = ""
        started = time.monotonic()
        try:
            result = await job.func()
        except Exception as err:
            error = f"{type(err).__name__}: {err}"
            log.exception("job %s failed", name)
        else:
            log.debug("job %s ran in %.2f s: %s", name, time.monotonic() - started, result)
        if job.leader:
            await self._record(name, started=False, error=error)
        self.completed[name] += 1

    async def _record(self, name: str, *, started: bool, error: str = "") -> None:
        """One row per leader job: runs counted at the start, errors at the end."""
        now = utcnow()
        try:
            async with self.db.session() as s:
                if started:
                    insert = postgresql.insert if not self.db.is_sqlite else sqlite.insert
                    stmt = insert(JobRun).values(job=name, runs=1, last_holder=self.holder,
                                                 last_started_at=now, last_error="")
                    await s.execute(stmt.on_conflict_do_update(
                        index_elements=["job"],
                        set_={"runs": JobRun.runs + 1, "last_holder": self.holder,
                              "last_started_at": now}))
                else:
                    await s.execute(update(JobRun).where(JobRun.job == name).values(
                        last_finished_at=now, last_error=error[:2000]))
                await s.commit()
        except Exception as err:
            log.warning("recording a run of %s failed: %s", name, err)


_JOB_DEFAULTS = {"coalesce": True, "max_instances": 1, "misfire_grace_time": None}


async def job_runs(db: Database) -> list[JobRun]:
    async with db.session() as s:
        return list((await s.scalars(select(JobRun).order_by(JobRun.job))).all())


def leader_name(host: str, port: int) -> str:
    """This process's name in the lease: ``hostname:port`` (see the module)."""
    return f"{socket.gethostname()}:{port}" if host in ("0.0.0.0", "::", "") \
        else f"{socket.gethostname()}/{host}:{port}"


def portal_jobs(settings: Settings, reconciler: Reconciler, lifetime: LifetimeService
                ) -> list[Job]:
    """The portal's scheduled jobs, at the intervals of the settings."""
    return [
        # The zombie sweep: re-drives what is not at rest (deletions interrupted by a crash
        # included), deletes labelled resources of no live instance, marks vanished ones.
        Job("reconcile-sweep", settings.reconcile_interval, reconciler.reconcile_all,
            catch_up=True),
        Job("lifetime-warn", settings.lifetime_interval, lifetime.warn),
        Job("lifetime-expire", settings.lifetime_interval, lifetime.expire),
        Job("activity-flush", settings.activity_flush_interval, lifetime.flush_activity,
            leader=False),
    ]
