"""A scripted backend: a test double of the backend contract, named as one.

The reconciler's error branches (a start that never answers, a release that fails after a
capacity error, a restart, an orphan that will not go) need a backend that fails exactly
when a test says so. Real backends reach these branches only by chance or by breaking real
services; their own tests (tests/kubernetes, tests/openstack) show that they report such
failures the way this double does. Everything here is in memory and records every call.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from spawners.base import (
    Backend,
    BackendState,
    Checkpoint,
    InstanceSpec,
    Observation,
    ResourceState,
)

RUNNING_READY = Observation(ResourceState.RUNNING, endpoints={"jupyter": "http://127.0.0.1:9"},
                            ready=frozenset({"jupyter"}))
RUNNING_SILENT = Observation(ResourceState.RUNNING, endpoints={"jupyter": "http://127.0.0.1:9"})
STOPPED = Observation(ResourceState.STOPPED)


@dataclass
class ScriptedBackend(Backend):
    """Does what its fields say; ``calls`` lists ``(method, uid)`` in order.

    ``observations``: what :meth:`observe` answers, in turn (the last one repeats).
    ``create_error`` / ``delete_errors``: raised by ``create`` (after its checkpoint) /
    by the next ``delete`` calls (one error per call, then deletes succeed).
    ``resources``: what exists, by uid (``list_managed`` reports it; ``delete`` removes it).
    """

    deployment_id: str = "scripted"
    observations: list[Observation] = field(default_factory=lambda: [RUNNING_READY])
    create_error: Exception | None = None
    delete_errors: list[Exception] = field(default_factory=list)
    resources: dict[str, BackendState] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    name: str = "scripted"

    def called(self, method: str) -> list[str]:
        return [uid for m, uid in self.calls if m == method]

    async def create(self, spec: InstanceSpec, checkpoint: Checkpoint) -> BackendState:
        self.calls.append(("create", spec.uid))
        state = {"id": f"res-{spec.uid}"}
        self.resources[spec.uid] = state
        await checkpoint(state)
        if self.create_error is not None:
            raise self.create_error
        return state

    async def start(self, spec: InstanceSpec, state: BackendState,
                    checkpoint: Checkpoint) -> BackendState:
        self.calls.append(("start", spec.uid))
        return state

    async def stop(self, uid: str, state: BackendState) -> BackendState:
        self.calls.append(("stop", uid))
        return state

    async def reboot(self, spec: InstanceSpec, state: BackendState,
                     checkpoint: Checkpoint) -> BackendState:
        self.calls.append(("reboot", spec.uid))
        return state

    async def delete(self, uid: str, state: BackendState) -> None:
        self.calls.append(("delete", uid))
        if self.delete_errors:
            raise self.delete_errors.pop(0)
        self.resources.pop(uid, None)

    async def observe(self, uid: str, state: BackendState, secrets: Mapping[str, str],
                      protocols: tuple[str, ...]) -> Observation:
        self.calls.append(("observe", uid))
        if len(self.observations) > 1:
            return self.observations.pop(0)
        return self.observations[0]

    async def list_managed(self) -> dict[str, Observation]:
        self.calls.append(("list_managed", ""))
        return {uid: Observation(ResourceState.RUNNING, backend_state=dict(state))
                for uid, state in self.resources.items()}

    def __post_init__(self) -> None:
        Backend.__init__(self, self.deployment_id)
