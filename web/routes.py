"""In-memory snapshots the proxy decides from, so a proxied request costs no database query.

* :class:`RouteTable` - per instance: its policy facts, endpoints and secrets. Entries are
  dropped when this process changes the instance (reconciler, API) and expire after ``ttl``
  seconds so changes made by other replicas are seen soon.
* :class:`PrincipalCache` - per user id: username and roles, same rules.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sqlalchemy import select

from orchestrator.db import Database
from orchestrator.models import Instance, InstanceSecret, InstanceStatus, User
from sharing.access import access_of, principal_for
from sharing.policy import InstanceAccess, Principal

K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True)
class Route:
    access: InstanceAccess
    status: InstanceStatus
    endpoints: dict[str, str] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict)


class TtlCache(Generic[K, V]):
    """A small cache with expiry, explicit invalidation and one load per missing key."""

    def __init__(self, load: Callable[[K], Coroutine[Any, Any, V]], ttl: float) -> None:
        self._load = load
        self._ttl = ttl
        self._items: dict[K, tuple[float, V]] = {}
        self._loading: dict[K, asyncio.Task[V]] = {}
        # Bumped by every invalidation: a load that overlapped one may have read the old
        # row, so its value is returned to its callers but not kept (revocations must hold).
        self._epoch = 0

    async def get(self, key: K) -> V:
        hit = self._items.get(key)
        now = time.monotonic()
        if hit is not None and hit[0] > now:
            return hit[1]
        epoch = self._epoch
        task = self._loading.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._load(key))
            self._loading[key] = task
            task.add_done_callback(
                lambda t: self._loading.pop(key) if self._loading.get(key) is t else None)
        value = await asyncio.shield(task)
        if epoch != self._epoch:
            return value
        self._items[key] = (now + self._ttl, value)
        if len(self._items) > 50_000:
            self._items = {k: v for k, v in self._items.items() if v[0] > now}
        return value

    def invalidate(self, key: K) -> None:
        self._epoch += 1
        self._items.pop(key, None)
        self._loading.pop(key, None)  # later callers load afresh

    def clear(self) -> None:
        self._epoch += 1
        self._items.clear()
        self._loading.clear()


class RouteTable(TtlCache[str, Route | None]):
    def __init__(self, db: Database, ttl: float = 5.0) -> None:
        self.db = db
        super().__init__(self._fetch, ttl)

    async def _fetch(self, uid: str) -> Route | None:
        async with self.db.session() as s:
            instance = await s.scalar(select(Instance).where(Instance.uid == uid))
            if instance is None or instance.status is InstanceStatus.DELETED:
                return None
            secret = await s.get(InstanceSecret, instance.id)
            return Route(access=access_of(instance), status=instance.status,
                         endpoints=dict(instance.endpoints or {}),
                         secrets=secret.as_dict() if secret else {})


class PrincipalCache(TtlCache[int, Principal | None]):
    def __init__(self, db: Database, ttl: float = 30.0) -> None:
        self.db = db
        super().__init__(self._fetch, ttl)

    async def _fetch(self, user_id: int) -> Principal | None:
        async with self.db.session() as s:
            user = await s.get(User, user_id)
            if user is None:
                return None
            return await principal_for(s, user)
