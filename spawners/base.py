"""The backend contract: what every session provider (local, kubernetes, openstack) offers.

A backend turns an :class:`InstanceSpec` into running resources and reports what it sees.
It never touches Atrium's database: the reconciler owns the database and calls the
backend. Two rules make crashes survivable:

* ``create`` hands the provider's ids to ``checkpoint`` as soon as the provider returns
  them, before waiting for anything; the reconciler stores them at once.
* every resource carries the labels ``atrium/instance`` (the instance uid) and
  ``atrium/deployment`` (the deployment id), so ``list_managed`` can find what a crashed
  process left behind, with one list call per backend.

All methods are coroutines; backends built on blocking SDKs run them in a bounded thread
pool (see :func:`run_blocking`). Every method is idempotent: calling ``create`` for a uid
that already exists returns the existing resource, ``delete`` of a missing resource
succeeds.
"""

from __future__ import annotations

import asyncio
import enum
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

LABEL_INSTANCE = "atrium/instance"
LABEL_DEPLOYMENT = "atrium/deployment"

BackendState = dict[str, Any]
"""JSON-serialisable provider ids and facts (pid, pod name, server id...), stored per instance."""

Checkpoint = Callable[[BackendState], Awaitable[None]]


class BackendError(Exception):
    """A backend operation failed; ``str(err)`` is shown to the user as the reason."""


class CapacityError(BackendError):
    """The provider has no room (no valid host, quota exceeded, unschedulable).

    The reconciler then deletes whatever the launch allocated. Backends that see it only
    later, in :meth:`Backend.observe`, say so with ``backend_state["capacity_error"] = True``
    on the FAILED observation.
    """


class ResourceState(enum.StrEnum):
    """What a backend observes of one instance's resources."""

    PENDING = "PENDING"  # created, not yet serving (booting, pulling, starting)
    RUNNING = "RUNNING"  # the session's processes run (protocols may still be starting)
    STOPPED = "STOPPED"  # resources kept, nothing runs (local dir kept, VM SHUTOFF)
    FAILED = "FAILED"  # the provider says it failed; ``reason`` says why
    GONE = "GONE"  # nothing exists for this uid


@dataclass(frozen=True)
class DataMount:
    """One experiment's data, mounted read-only at ``target`` (relative to the home dir)."""

    name: str  # the experiment's proposal id
    source: str  # where the data lives on the facility's storage
    target: str  # e.g. "data/20261234"
    read_only: bool = True


@dataclass(frozen=True)
class Resources:
    cpus: float = 1.0
    memory_mb: int = 2048
    gpus: int = 0


@dataclass(frozen=True)
class Owner:
    """The identity the session runs as."""

    username: str
    uid: int = 1000
    gid: int = 1000
    email: str = ""
    groups: tuple[int, ...] = ()  # supplementary POSIX groups, when known


@dataclass(frozen=True)
class InstanceSpec:
    """Everything a backend needs to create one instance. Pure data, no I/O."""

    uid: str
    name: str
    image_ref: str  # backend-specific reference from the image (profile, pod image, glance id)
    flavour_ref: str  # backend-specific reference from the flavour
    protocols: tuple[str, ...]  # "jupyter", "desktop"
    owner: Owner
    resources: Resources = field(default_factory=Resources)
    mounts: tuple[DataMount, ...] = ()
    secrets: Mapping[str, str] = field(default_factory=dict)  # jupyter_token, vnc_password
    labels: Mapping[str, str] = field(default_factory=dict)
    boot_template: str = ""
    # The instruments of the instance's experiments (network egress may depend on them).
    instruments: tuple[str, ...] = ()

    @property
    def base_url(self) -> str:
        """The path prefix JupyterLab serves under, identical behind Atrium's proxy."""
        return f"/instances/{self.uid}/lab/"


@dataclass(frozen=True)
class Observation:
    """One backend's view of one instance at one moment."""

    state: ResourceState
    endpoints: Mapping[str, str] = field(default_factory=dict)  # protocol -> "http://host:port"
    ready: frozenset[str] = frozenset()  # protocols that answered a probe
    reason: str = ""
    backend_state: BackendState = field(default_factory=dict)
    # Protocols whose processes/containers run, when the backend knows without probing
    # (local processes, container statuses); None when it cannot tell.
    processes: frozenset[str] | None = None


class Backend(ABC):
    """A session provider. Subclasses are created once per process from the settings."""

    name: str = ""

    def __init__(self, deployment_id: str) -> None:
        self.deployment_id = deployment_id

    def labels_for(self, uid: str) -> dict[str, str]:
        return {LABEL_INSTANCE: uid, LABEL_DEPLOYMENT: self.deployment_id}

    @abstractmethod
    async def create(self, spec: InstanceSpec, checkpoint: Checkpoint) -> BackendState:
        """Create and start the resources for ``spec``; return once the provider accepted them.

        Does not wait for the session to serve: the reconciler polls :meth:`observe`.
        """

    @abstractmethod
    async def start(self, spec: InstanceSpec, state: BackendState,
                    checkpoint: Checkpoint) -> BackendState:
        """Start a STOPPED instance again."""

    @abstractmethod
    async def stop(self, uid: str, state: BackendState) -> BackendState:
        """Stop the session's processes, keeping what ``start`` needs."""

    @abstractmethod
    async def reboot(self, spec: InstanceSpec, state: BackendState,
                     checkpoint: Checkpoint) -> BackendState:
        """Restart the session's processes."""

    @abstractmethod
    async def delete(self, uid: str, state: BackendState) -> None:
        """Remove every resource of ``uid`` and return only when they are gone."""

    @abstractmethod
    async def observe(self, uid: str, state: BackendState, secrets: Mapping[str, str],
                      protocols: tuple[str, ...]) -> Observation:
        """Report the instance's resource state and probe its protocols."""

    @abstractmethod
    async def list_managed(self) -> dict[str, Observation]:
        """Every instance uid of this deployment with resources, in one provider call.

        Used by the reconciler to find orphans (resources without a live instance) and
        vanished resources (live instances without resources). Protocol probes are not run.
        """

    # Whether :meth:`rotate_secrets` works on running sessions (else new secrets apply at
    # the next start only).
    rotates_secrets: bool = False

    async def rotate_secrets(self, uid: str, state: BackendState, secrets: Mapping[str, str],
                             keep: Mapping[str, str] | None = None) -> None:
        """Make the running session accept ``secrets`` (jupyter_token, vnc_password) from
        now on, without restarting it; ``keep`` are the previous ones, to accept a moment
        longer (requests in flight). Called again without ``keep`` to end the old ones."""
        raise BackendError(f"the {self.name} backend cannot rotate a running session's "
                           "secrets")

    async def set_keyboard_layout(self, uid: str, state: BackendState, layout: str) -> None:
        """Switch the desktop's X keyboard layout (``layout`` is validated by the caller)."""
        raise BackendError(f"the {self.name} backend cannot change keyboard layouts")

    async def close(self) -> None:
        """Release clients and threads."""


T = TypeVar("T")


class BlockingPool:
    """A bounded thread pool for blocking SDK calls, so they never stall the event loop."""

    def __init__(self, max_workers: int = 8, name: str = "atrium-sdk") -> None:
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=name)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
