"""A FAKE backend: instances exist only in this process's memory. For benchmarks and tests.

It runs nothing: every instance it creates is at once RUNNING and "ready" on every
protocol, at one endpoint for all (``ATRIUM_FAKE_ENDPOINT``; by default one where
nothing listens). It lets the scale benchmark measure
Atrium's own costs (admission, reconcile passes, API) without starting thousands of
sessions. Enabled only by naming it in ``ATRIUM_BACKENDS`` (``fake``); the portal logs a
warning when it is on. Never use it for real sessions.
"""

from __future__ import annotations

from collections.abc import Mapping

from spawners.base import (
    Backend,
    BackendState,
    Checkpoint,
    InstanceSpec,
    Observation,
    ResourceState,
)

NOWHERE = "http://127.0.0.1:9"  # the discard port: nothing answers there


class FakeBackend(Backend):
    name = "fake"

    def __init__(self, deployment_id: str, endpoint: str = NOWHERE) -> None:
        super().__init__(deployment_id)
        self.endpoint = endpoint
        self.resources: dict[str, tuple[ResourceState, tuple[str, ...]]] = {}

    def _observation(self, uid: str) -> Observation:
        state, protocols = self.resources.get(uid, (ResourceState.GONE, ()))
        if state is not ResourceState.RUNNING:
            return Observation(state)
        return Observation(state, {p: self.endpoint for p in protocols}, frozenset(protocols),
                           backend_state={"fake": True}, processes=frozenset(protocols))

    async def create(self, spec: InstanceSpec, checkpoint: Checkpoint) -> BackendState:
        self.resources[spec.uid] = (ResourceState.RUNNING, spec.protocols)
        state: BackendState = {"fake": True}
        await checkpoint(state)
        return state

    async def start(self, spec: InstanceSpec, state: BackendState,
                    checkpoint: Checkpoint) -> BackendState:
        self.resources[spec.uid] = (ResourceState.RUNNING, spec.protocols)
        return state

    async def stop(self, uid: str, state: BackendState) -> BackendState:
        if uid in self.resources:
            self.resources[uid] = (ResourceState.STOPPED, self.resources[uid][1])
        return state

    async def reboot(self, spec: InstanceSpec, state: BackendState,
                     checkpoint: Checkpoint) -> BackendState:
        return await self.start(spec, state, checkpoint)

    async def delete(self, uid: str, state: BackendState) -> None:
        self.resources.pop(uid, None)

    async def observe(self, uid: str, state: BackendState, secrets: Mapping[str, str],
                      protocols: tuple[str, ...]) -> Observation:
        return self._observation(uid)

    async def list_managed(self) -> dict[str, Observation]:
        return {uid: self._observation(uid) for uid in self.resources}
