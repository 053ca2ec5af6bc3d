"""The backend while Nova's API is down: fails fast and clearly, converges once it is back.

Runs after the other backend tests (file order): it restarts nova-api of the shared cloud.
"""

from __future__ import annotations

import asyncio

import pytest

from spawners.base import BackendError, ResourceState
from tests.harness.openstack.bootstrap import CloudSettings
from tests.harness.openstack.cloud import LocalCloud
from tests.openstack.helpers import (
    Checkpoints,
    make_backend,
    make_spec,
    tagged_servers,
    wait_for,
)

pytestmark = pytest.mark.timeout(240)


async def test_nova_api_outage(openstack_harness: LocalCloud,
                               openstack_cloud: CloudSettings) -> None:
    impatient = make_backend(openstack_cloud, "outage", retries=1, backoff=0.1)
    patient = make_backend(openstack_cloud, "outage", retries=7, backoff=0.5)
    spec = make_spec(openstack_cloud, "outage-1")
    try:
        await impatient.list_managed()  # connected and authenticated before the outage
        openstack_harness.stop_service("nova-api")
        with pytest.raises(BackendError, match="unreachable"):
            await impatient.list_managed()

        # a create issued during the outage retries until Nova is back
        creating = asyncio.create_task(patient.create(spec, Checkpoints()))
        await asyncio.sleep(1)
        await asyncio.to_thread(openstack_harness.start_service, "nova-api")
        state = await creating
        await wait_for(patient, spec, state, ResourceState.RUNNING)
        assert [s.id for s in tagged_servers(openstack_cloud, spec.uid)] == [state["server_id"]]
        assert set(await impatient.list_managed()) == {"outage-1"}
        await patient.delete(spec.uid, state)
    finally:
        openstack_harness.start_service("nova-api")  # no-op when it runs
        await impatient.close()
        await patient.close()
