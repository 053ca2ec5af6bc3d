"""The reconciler: drives every instance from its observed state towards its target.

Users only ever write ``Instance.target`` (and ``reboot_requested``); this is the one place
that calls backends and writes ``status``. Both live in the database, so after a crash the
next process picks up where the last one stopped:

* on start-up and every ``reconcile_interval`` seconds, :meth:`reconcile_all` lists each
  backend's managed resources once, reads the live instances in one query, re-drives every
  instance that is not at rest, and deletes resources that belong to no live instance;
* :meth:`kick` re-drives one instance at once (after an API call);
* work for one instance is serialised (one task per uid); a kick during a long wait makes
  the task look at the database again;
* an instance whose backend this process does not configure and that needs work (a launch,
  a stop, a deletion) is UNAVAILABLE ("the X backend is not configured") and left alone by
  the sweep: nothing can be done for it here, and retrying every sweep would only repeat
  that (instances at rest keep their last observed state). Once the backend is configured
  again the sweep drives it as usual (created if it never got resources, observed otherwise).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update

from orchestrator import metrics
from orchestrator.db import Database
from orchestrator.models import (
    Instance,
    InstanceEvent,
    InstanceSecret,
    InstanceStatus,
    Target,
    utcnow,
)
from orchestrator.specs import spec_for
from spawners.base import (
    Backend,
    BackendError,
    BackendState,
    CapacityError,
    InstanceSpec,
    Observation,
    ResourceState,
)

log = logging.getLogger("atrium.reconciler")

S = InstanceStatus
AT_REST = {
    Target.RUNNING: {S.ACTIVE, S.PARTIALLY_ACTIVE, S.ERROR},
    Target.STOPPED: {S.STOPPED, S.ERROR},
    Target.DELETED: {S.DELETED},
}


def unavailable_reason(backend: str) -> str:
    """The reason an instance of a backend this process does not configure carries."""
    return f"the {backend} backend is not configured"


@dataclass
class SweepReport:
    instances: int = 0
    kicked: int = 0
    orphans_deleted: int = 0
    seconds: float = 0.0


class Reconciler:
    def __init__(self, db: Database, backends: Mapping[str, Backend], *,
                 interval: float = 10.0, start_timeout: float = 180.0,
                 on_change: Callable[[str], None] | None = None,
                 max_parallel: int = 32, protocol_grace: float = 30.0) -> None:
        self.db = db
        self.backends = backends
        self.interval = interval
        self.start_timeout = start_timeout
        self.protocol_grace = protocol_grace
        self.busy_window = max(5.0, 2 * interval)
        self.on_change = on_change or (lambda uid: None)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._dirty: set[str] = set()
        self._limit = asyncio.Semaphore(max_parallel)
        self._loop_task: asyncio.Task[None] | None = None

    # --- scheduling -------------------------------------------------------------------

    def start(self) -> None:
        self._loop_task = asyncio.get_running_loop().create_task(self._periodic())

    async def stop(self) -> None:
        tasks = [t for t in [self._loop_task, *self._tasks.values()] if t]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def kick(self, uid: str) -> None:
        """Re-drive ``uid`` soon; coalesces with work already running for it."""
        task = self._tasks.get(uid)
        if task is not None and not task.done():
            self._dirty.add(uid)
            return
        self._tasks[uid] = asyncio.get_running_loop().create_task(self._drive(uid))

    async def idle(self) -> None:
        """Wait until no instance work is running (tests, shutdown)."""
        while any(not t.done() for t in self._tasks.values()):
            await asyncio.sleep(0.05)

    async def _periodic(self) -> None:
        while True:
            try:
                report = await self.reconcile_all()
                if report.kicked or report.orphans_deleted:
                    log.info("sweep: %s", report)
            except Exception:
                log.exception("reconcile sweep failed")
            await asyncio.sleep(self.interval)

    async def _drive(self, uid: str) -> None:
        try:
            while True:
                self._dirty.discard(uid)
                async with self._limit:
                    await self._step(uid)
                if uid not in self._dirty:
                    break
        except Exception:
            log.exception("reconciling %s failed", uid)
        finally:
            self._tasks.pop(uid, None)

    # --- the sweep --------------------------------------------------------------------

    async def reconcile_all(self) -> SweepReport:
        started = time.monotonic()
        report = SweepReport()
        # List resources before reading rows: a resource is only created after its row is
        # committed, so every resource listed here has a row visible to the query below.
        managed: dict[str, dict[str, Observation]] = {}
        for name, provider in self.backends.items():
            try:
                managed[name] = await provider.list_managed()
            except Exception as err:
                # An unreachable provider must not stop the others' reconciliation; its
                # instances are left as they are until it answers again.
                log.warning("listing %s resources failed: %s", name, err)
        async with self.db.session() as s:
            rows = (await s.execute(
                select(Instance.uid, Instance.backend, Instance.status, Instance.target,
                       Instance.reboot_requested, Instance.ready_protocols, Instance.updated_at)
                .where(Instance.status != S.DELETED)
            )).all()
        ready = {row[0]: row[5] for row in rows}
        # An instance written to in the last moments is being driven (here or by another
        # replica, whose API call kicked it): the driver refreshes updated_at at least every
        # second while it waits, so leave it alone until it goes quiet.
        quiet_since = utcnow() - dt.timedelta(seconds=self.busy_window)
        live: dict[str, set[str]] = {name: set() for name in self.backends}
        for uid, backend, status, target, reboot, _, updated_at in rows:
            report.instances += 1
            live.setdefault(backend, set()).add(uid)
            if backend not in managed and status in AT_REST[target] and not reboot:
                continue  # provider unreachable or not configured: nothing to compare with
            quiet = uid not in self._tasks and (updated_at is None or updated_at < quiet_since)
            if backend not in self.backends:
                if status is not S.UNAVAILABLE and quiet:
                    report.kicked += 1
                    self.kick(uid)  # once: it becomes UNAVAILABLE and is left alone
                continue
            seen = managed.get(backend, {}).get(uid)
            vanished = status in (S.ACTIVE, S.PARTIALLY_ACTIVE) and (
                seen is None or seen.state is not ResourceState.RUNNING)
            # A protocol's processes died (when the backend can tell without probing), or
            # a partially active instance may have recovered: observe it again.
            degraded = status is S.PARTIALLY_ACTIVE or (
                status is S.ACTIVE and seen is not None and seen.processes is not None
                and not set(ready.get(uid, ())) <= seen.processes)
            if reboot or status not in AT_REST[target] or vanished or degraded:
                if quiet:
                    report.kicked += 1
                    self.kick(uid)
        for name, resources in managed.items():
            for uid in set(resources) - live.get(name, set()):
                log.warning("deleting orphaned %s resources of %s", name, uid)
                try:
                    await self.backends[name].delete(uid, resources[uid].backend_state)
                    report.orphans_deleted += 1
                except Exception:
                    log.exception("could not delete orphan %s", uid)
        report.seconds = time.monotonic() - started
        metrics.RECONCILE_SECONDS.observe(report.seconds)
        return report

    # --- one instance -----------------------------------------------------------------

    async def _load(self, uid: str) -> tuple[Instance, InstanceSecret | None] | None:
        async with self.db.session() as s:
            instance = await s.scalar(select(Instance).where(Instance.uid == uid))
            if instance is None:
                return None
            secret = await s.get(InstanceSecret, instance.id)
            return instance, secret

    async def _set(self, instance: Instance, event: str = "", detail: str = "",
                   **values: Any) -> None:
        values.setdefault("updated_at", utcnow())
        never_active = instance.activated_at is None
        async with self.db.session() as s:
            if event == "active" and never_active:
                # Two replicas may drive one instance: the one whose write sets activated_at
                # counts the launch in the metrics.
                first = await s.execute(
                    update(Instance).where(Instance.id == instance.id,
                                           Instance.activated_at.is_(None))
                    .values(activated_at=values.get("activated_at") or utcnow()))
                never_active = first.rowcount == 1  # type: ignore[attr-defined]
            await s.execute(update(Instance).where(Instance.id == instance.id).values(**values))
            if event:
                s.add(InstanceEvent(instance_id=instance.id, kind=event, detail=detail[:2000]))
            await s.commit()
        for key, value in values.items():
            setattr(instance, key, value)
        if event:
            metrics.instance_changed(instance, event, never_active)
        self.on_change(instance.uid)

    async def _step(self, uid: str) -> None:
        loaded = await self._load(uid)
        if loaded is None:
            return
        instance, secret = loaded
        if instance.status is S.DELETED:
            return
        backend = self.backends.get(instance.backend)
        if backend is None:
            if instance.status is not S.UNAVAILABLE:
                reason = unavailable_reason(instance.backend)
                log.warning("%s: %s", uid, reason)
                await self._set(instance, "unavailable", reason, status=S.UNAVAILABLE,
                                progress="", status_reason=reason)
            return
        spec = spec_for(instance, secret)
        try:
            if instance.target is Target.DELETED:
                await self._delete(backend, instance)
            elif instance.target is Target.STOPPED:
                await self._stop(backend, instance)
            else:
                await self._run(backend, instance, spec)
        except CapacityError as err:
            # Nothing may stay allocated for a launch the provider could not place.
            log.warning("%s: %s; releasing its resources", uid, err)
            try:
                await backend.delete(uid, instance.backend_state)
                released: dict[str, Any] = {}
            except BackendError:
                released = instance.backend_state
            await self._set(instance, "error", str(err), status=S.ERROR, status_reason=str(err),
                            progress="", backend_state=released, endpoints={},
                            ready_protocols=[])
        except BackendError as err:
            log.warning("%s: %s", uid, err)
            await self._set(instance, "error", str(err), status=S.ERROR, status_reason=str(err),
                            progress="")

    def _checkpoint(self, instance: Instance) -> Callable[[BackendState], Any]:
        async def save(state: BackendState) -> None:
            await self._set(instance, backend_state=dict(state))
        return save

    async def _delete(self, backend: Backend, instance: Instance) -> None:
        await self._set(instance, status=S.DELETING, progress="Deleting")
        await backend.delete(instance.uid, instance.backend_state)
        await self._set(instance, "deleted", status=S.DELETED, progress="", endpoints={},
                        ready_protocols=[], deleted_at=utcnow(), backend_state={})

    async def _stop(self, backend: Backend, instance: Instance) -> None:
        if instance.status is S.STOPPED:
            return
        await self._set(instance, status=S.STOPPING, progress="Stopping")
        state = await backend.stop(instance.uid, instance.backend_state)
        await self._set(instance, "stopped", status=S.STOPPED, progress="", endpoints={},
                        ready_protocols=[], backend_state=state, status_reason="")

    async def _run(self, backend: Backend, instance: Instance, spec: InstanceSpec) -> None:
        status = instance.status
        if instance.reboot_requested:
            await self._set(instance, "rebooting", status=S.REBOOTING, progress="Rebooting",
                            reboot_requested=False, status_reason="")
            state = await backend.reboot(spec, instance.backend_state,
                                         self._checkpoint(instance))
            await self._set(instance, backend_state=state, status=S.STARTING)
        elif status is S.BUILDING or (status is S.UNAVAILABLE and not instance.backend_state):
            await self._set(instance, progress="Creating the session")
            state = await backend.create(spec, self._checkpoint(instance))
            await self._set(instance, backend_state=state, status=S.STARTING,
                            progress="Starting")
        elif status in (S.STOPPED, S.STOPPING):
            await self._set(instance, status=S.STARTING, progress="Starting", status_reason="")
            state = await backend.start(spec, instance.backend_state,
                                        self._checkpoint(instance))
            await self._set(instance, backend_state=state)
        elif status is S.ERROR:
            return
        await self._await_ready(backend, instance, spec)

    async def _await_ready(self, backend: Backend, instance: Instance,
                           spec: InstanceSpec) -> None:
        """Observe until every protocol answers (ACTIVE).

        Once one protocol answers, the others get ``protocol_grace`` seconds before the
        instance is PARTIALLY_ACTIVE; nothing answering after ``start_timeout`` is an ERROR.
        An instance already running is observed once: it becomes ACTIVE, PARTIALLY_ACTIVE
        or ERROR according to what answers now.
        """
        began = time.monotonic()
        delay, last_progress, restarted = 0.02, 0.0, False
        first_ready: float | None = None
        wanted = set(spec.protocols)
        running = instance.status in (S.ACTIVE, S.PARTIALLY_ACTIVE)
        while True:
            obs = await backend.observe(instance.uid, instance.backend_state, spec.secrets,
                                        spec.protocols)
            if obs.state is ResourceState.FAILED:
                if obs.backend_state.get("capacity_error"):
                    raise CapacityError(obs.reason or "the provider has no room")
                raise BackendError(obs.reason or "the session failed")
            if obs.state is ResourceState.STOPPED and not restarted and not running:
                # A start interrupted by a crash: start again, once.
                restarted = True
                state = await backend.start(spec, instance.backend_state,
                                            self._checkpoint(instance))
                await self._set(instance, backend_state=state)
                continue
            if obs.state in (ResourceState.GONE, ResourceState.STOPPED):
                raise BackendError("the session's resources vanished" if running
                                   else "the session stopped while starting")
            elapsed = time.monotonic() - began
            if obs.ready and first_ready is None:
                first_ready = elapsed
            if wanted <= obs.ready:
                if instance.status is not S.ACTIVE:
                    await self._set(
                        instance, "active", f"ready after {elapsed:.1f} s", status=S.ACTIVE,
                        progress="", status_reason="", endpoints=dict(obs.endpoints),
                        ready_protocols=sorted(obs.ready),
                        activated_at=instance.activated_at or utcnow())
                return
            if obs.ready and (running or elapsed - (first_ready or 0) > self.protocol_grace):
                missing = ", ".join(sorted(wanted - obs.ready))
                if instance.status is not S.PARTIALLY_ACTIVE or set(
                        instance.ready_protocols) != set(obs.ready):
                    await self._set(instance, "partially-active", f"not answering: {missing}",
                                    status=S.PARTIALLY_ACTIVE, progress="",
                                    endpoints=dict(obs.endpoints),
                                    ready_protocols=sorted(obs.ready),
                                    status_reason=f"not answering: {missing}")
                return
            if running:
                raise BackendError("none of the session's protocols answers")
            if elapsed > self.start_timeout:
                raise BackendError(f"the session did not answer within {self.start_timeout:.0f} s")
            if instance.uid in self._dirty:
                return  # the target changed: look at the database again
            if elapsed - last_progress >= 1.0:
                last_progress = elapsed
                waiting = ", ".join(sorted(wanted - obs.ready))
                await self._set(instance, status=S.STARTING, endpoints=dict(obs.endpoints),
                                ready_protocols=sorted(obs.ready),
                                progress=f"Starting {waiting} ({elapsed:.0f} s)")
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.25)
