"""Helpers shared by the OpenStack backend tests (not fixtures: plain functions)."""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from spawners.base import (
    BackendState,
    DataMount,
    InstanceSpec,
    Observation,
    Owner,
    ResourceState,
)
from spawners.cloudinit import BootSettings, MountTemplate
from spawners.openstack import OpenStackBackend, tag
from tests.harness.openstack.bootstrap import CloudSettings
from tests.harness.openstack.guest.sandbox import FILE_SERVER

# The harness' "file server" is the host's filesystem, read-only in every guest: data
# sources are bind-mounted from there (a site would mount NFS or CephFS instead).
TEST_MOUNTS = {"default": MountTemplate(device=FILE_SERVER + "{source}", fstype="none",
                                        options="bind")}
BOOT_CONFIG = ("mount_templates:\n  default: {device: '" + FILE_SERVER
               + "{source}', fstype: none, options: bind}\n")
# the experiment data the backend tests' sessions mount (created on first use)
DATA = Path(tempfile.gettempdir()) / "atrium-os-test-data" / "20261234"


def make_backend(cloud: CloudSettings, deployment_id: str, **kwargs: object) -> OpenStackBackend:
    """A backend on the harness network, with the harness' session security group."""
    options: dict[str, object] = {
        "auth": cloud.auth(), "region_name": cloud.region_name,
        "networks": [cloud.network_name],
        "security_groups": ["default", cloud.security_group], "retries": 2,
        "backoff": 0.2, "boot": BootSettings(mount_templates=TEST_MOUNTS), **kwargs}
    return OpenStackBackend(deployment_id, **options)  # type: ignore[arg-type]


def make_spec(cloud: CloudSettings, uid: str, *, big: bool = False,
              protocols: tuple[str, ...] = ("jupyter",)) -> InstanceSpec:
    DATA.mkdir(parents=True, exist_ok=True)
    return InstanceSpec(
        uid=uid, name=f"test {uid}", image_ref="atrium-tiny",
        flavour_ref="atrium.too-big" if big else "atrium.small", protocols=protocols,
        owner=Owner("alice", uid=2001, gid=2001),
        mounts=(DataMount("20261234", str(DATA), "data/20261234"),),
        secrets={"jupyter_token": f"tok-{uid}", "vnc_password": f"vnc-{uid}"})


class Checkpoints:
    """Records what the backend checkpoints, as the reconciler would store it."""

    def __init__(self) -> None:
        self.states: list[BackendState] = []

    async def __call__(self, state: BackendState) -> None:
        self.states.append(dict(state))


async def wait_for(backend: OpenStackBackend, spec: InstanceSpec, state: BackendState,
                   wanted: ResourceState, timeout: float = 60, *,
                   ready: str | None = None) -> Observation:
    """Observe until ``wanted`` (and protocol ``ready``, if given) or fail with the last view."""
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        seen = await backend.observe(spec.uid, state, spec.secrets, spec.protocols)
        if seen.state is wanted and (ready is None or ready in seen.ready):
            return seen
        if seen.state is ResourceState.FAILED and wanted is not ResourceState.FAILED:
            break
        await asyncio.sleep(0.5)
    raise AssertionError(f"wanted {wanted} (ready={ready}), last seen {seen}")


def tagged_servers(cloud: CloudSettings, uid: str) -> list[Any]:
    """What Nova itself holds for ``uid`` (admin view, all projects)."""
    with cloud.connect(admin=True) as conn:
        return list(conn.compute.servers(details=True, all_projects=True,
                                         tags=tag("atrium/instance", uid)))
