"""Connection bounds of the lab proxy and the desktop bridge (per portal process).

- :class:`InstanceSlots`: at most ``size`` HTTP requests in flight to one instance, up to
  ``queue`` more waiting in order; so one instance's slow requests hold only its own
  slots and never the shared upstream connections other instances need.
- :class:`UserConnections`: at most ``cap`` open lab and desktop connections (HTTP
  streams and WebSockets) per user.

Both hand out idempotent tickets: closing one twice, or one that never got its slot, is
harmless, so handlers may close them from every exit path.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from types import TracebackType

from orchestrator.settings_limits import Limits


class _Gate:
    def __init__(self, size: int) -> None:
        self.slots = asyncio.Semaphore(size)
        self.tickets = 0  # holding or waiting


class Ticket:
    """One request's place at an instance: ``async with ticket:`` waits for a slot."""

    def __init__(self, owner: InstanceSlots, uid: str, gate: _Gate) -> None:
        self._owner, self._uid, self._gate = owner, uid, gate
        self._held = self._closed = False

    async def __aenter__(self) -> Ticket:
        await self._gate.slots.acquire()
        self._held = True
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._held:
            self._gate.slots.release()
        self._gate.tickets -= 1
        if self._gate.tickets == 0:
            self._owner._gates.pop(self._uid, None)


class InstanceSlots:
    def __init__(self, size: int, queue: int) -> None:
        self.size, self.queue = size, queue
        self._gates: dict[str, _Gate] = {}

    def enter(self, uid: str) -> Ticket | None:
        """A ticket for a request to ``uid``; None when its queue is full (answer 503)."""
        gate = self._gates.get(uid)
        if gate is None:
            gate = self._gates[uid] = _Gate(self.size)
        if gate.tickets >= self.size + self.queue:
            return None
        gate.tickets += 1
        return Ticket(self, uid, gate)

    def in_use(self, uid: str) -> int:
        """Requests to ``uid`` holding or waiting for a slot."""
        gate = self._gates.get(uid)
        return gate.tickets if gate else 0


class Lease:
    """One open connection of a user; :meth:`release` when it ends (idempotent)."""

    def __init__(self, owner: UserConnections, user_id: int) -> None:
        self._owner, self.user_id = owner, user_id
        self._released = False

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        self._owner.open[self.user_id] -= 1
        if self._owner.open[self.user_id] <= 0:
            del self._owner.open[self.user_id]


class UserConnections:
    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.open: Counter[int] = Counter()

    def acquire(self, user_id: int) -> Lease | None:
        """A lease for one more connection of ``user_id``; None at the cap (answer 429)."""
        if self.open[user_id] >= self.cap:
            return None
        self.open[user_id] += 1
        return Lease(self, user_id)


class Bounds:
    """The portal's connection bounds, built from the settings."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.instances = InstanceSlots(limits.instance_connections, limits.instance_queue)
        self.users = UserConnections(limits.user_connections)


TOO_MANY_USER_CONNECTIONS = ("you have too many open connections to labs and desktops "
                             "(at most {cap}); close some tabs")
INSTANCE_BUSY = "the instance has too many requests waiting; try again shortly"
