"""The OpenStack backend's error branches against the real harness cloud (see conftest):
a create whose reply was lost is adopted by its tags (never a second server), and Nova's
quota refusal is a CapacityError naming the quota, with nothing left in Nova.

Quotas are set with the admin credentials on the test project for the length of one test
(tests run one at a time in a session), then put back to unlimited as bootstrap left them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from keystoneauth1 import exceptions as ksa_exc

from spawners.base import CapacityError
from spawners.openstack import OpenStackBackend
from tests.harness.openstack.bootstrap import CloudSettings
from tests.openstack.helpers import Checkpoints, make_spec, tagged_servers

pytestmark = pytest.mark.timeout(240)


@contextmanager
def compute_quota(cloud: CloudSettings, **limits: int) -> Iterator[None]:
    """The test project's Nova quotas set to ``limits``, then back to unlimited."""
    with cloud.connect(admin=True) as conn:
        project = conn.identity.find_project(cloud.project_name, ignore_missing=False)
        conn.set_compute_quotas(project.id, **limits)
    try:
        yield
    finally:
        with cloud.connect(admin=True) as conn:
            conn.set_compute_quotas(project.id, instances=-1, cores=-1, ram=-1)


async def test_a_lost_create_reply_is_adopted_by_tag_not_duplicated(
        openstack_cloud: CloudSettings, backend: OpenStackBackend,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Nova created the server but its reply never arrived (the connection dropped after
    the POST): the retry finds the server by its tags and adopts it."""
    spec = make_spec(openstack_cloud, "lost-1")
    real = backend._create_server
    posted: list[str] = []

    def reply_lost(*args: Any) -> Any:
        server = real(*args)  # the POST reached Nova: the server exists
        posted.append(server.id)
        if len(posted) == 1:
            raise ksa_exc.ConnectFailure("connection reset before the reply arrived")
        return server

    monkeypatch.setattr(backend, "_create_server", reply_lost)
    checkpoints = Checkpoints()
    state = await backend.create(spec, checkpoints)
    try:
        assert posted == [state["server_id"]]  # no second POST
        assert checkpoints.states == [{"server_id": posted[0]}]
        assert [s.id for s in tagged_servers(openstack_cloud, spec.uid)] == posted
    finally:
        await backend.delete(spec.uid, state)
    assert tagged_servers(openstack_cloud, spec.uid) == []


async def test_a_server_whose_id_was_never_recorded_is_adopted(
        openstack_cloud: CloudSettings, backend: OpenStackBackend) -> None:
    """A crash between Nova's reply and the checkpoint: the next create finds the server
    by its tags (as Atrium tagged it) and records its id instead of creating another."""
    spec = make_spec(openstack_cloud, "unrecorded-1")
    with openstack_cloud.connect() as conn:
        landed = conn.compute.create_server(
            name=spec.name, image_id=openstack_cloud.image_id,
            flavor_id=openstack_cloud.flavour_id, networks="none",
            tags=["atrium-instance=unrecorded-1", backend.deployment_tag])
    checkpoints = Checkpoints()
    state = await backend.create(spec, checkpoints)
    try:
        assert state == {"server_id": landed.id}
        assert checkpoints.states == [{"server_id": landed.id}]
        assert [s.id for s in tagged_servers(openstack_cloud, spec.uid)] == [landed.id]
    finally:
        await backend.delete(spec.uid, state)
    assert tagged_servers(openstack_cloud, spec.uid) == []


@pytest.mark.parametrize("limits, named", [
    ({"instances": 0}, "instances"),
    ({"cores": 0}, "cores"),
])
async def test_a_nova_quota_refusal_is_a_capacity_error_naming_the_quota(
        openstack_cloud: CloudSettings, backend: OpenStackBackend,
        limits: dict[str, int], named: str) -> None:
    spec = make_spec(openstack_cloud, f"quota-{named}")
    with compute_quota(openstack_cloud, **limits):
        with pytest.raises(CapacityError) as refused:
            await backend.create(spec, Checkpoints())
    reason = str(refused.value)
    assert reason.startswith("OpenStack quota exceeded: ")
    assert "Quota exceeded" in reason and named in reason
    assert tagged_servers(openstack_cloud, spec.uid) == []  # refused before anything existed
    assert await backend.list_managed() == {}
