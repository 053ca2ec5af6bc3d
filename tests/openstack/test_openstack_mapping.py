"""Pure parts of the OpenStack backend: Nova status mapping, retry policy, tags."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import pytest
from keystoneauth1 import exceptions as ksa_exc
from openstack import exceptions as os_exc

from spawners.base import LABEL_DEPLOYMENT, LABEL_INSTANCE, ResourceState
from spawners.openstack import OpenStackBackend, is_retryable, map_status, meta_key, tag


def server(status: str, **extra: object) -> SimpleNamespace:
    return SimpleNamespace(status=status, task_state=extra.pop("task_state", None), **extra)


@pytest.mark.parametrize(("status", "state"), [
    ("BUILD", ResourceState.PENDING), ("ACTIVE", ResourceState.RUNNING),
    ("SHUTOFF", ResourceState.STOPPED), ("REBOOT", ResourceState.PENDING),
    ("HARD_REBOOT", ResourceState.PENDING), ("REBUILD", ResourceState.PENDING),
    ("SUSPENDED", ResourceState.STOPPED), ("SHELVED_OFFLOADED", ResourceState.STOPPED),
    ("DELETED", ResourceState.GONE), ("SOFT_DELETED", ResourceState.GONE),
    ("UNKNOWN", ResourceState.PENDING), ("SOMETHING_NEW", ResourceState.PENDING),
])
def test_status_mapping(status: str, state: ResourceState) -> None:
    assert map_status(server(status))[0] is state


def test_error_carries_novas_fault() -> None:
    fault = {"code": 500, "message": "No valid host was found. There are not enough hosts"}
    assert map_status(server("ERROR", fault=fault)) == (
        ResourceState.FAILED, "No valid host was found. There are not enough hosts")
    assert map_status(server("ERROR", fault=None))[1] == "Nova reports the server in ERROR"


def test_deleting_is_not_running() -> None:
    assert map_status(server("ACTIVE", task_state="deleting"))[0] is ResourceState.PENDING


@pytest.mark.parametrize(("make", "retry"), [
    (lambda: os_exc.HttpException(http_status=503), True),
    (lambda: os_exc.HttpException(http_status=500), True),
    (lambda: os_exc.HttpException(http_status=429), True),
    (lambda: os_exc.HttpException(http_status=400), False),
    (lambda: os_exc.NotFoundException(http_status=404), False),
    (lambda: os_exc.ConflictException(http_status=409), False),
    (lambda: ksa_exc.ConnectFailure("refused"), True),
    (lambda: ksa_exc.ConnectTimeout("slow"), True),
    (lambda: ksa_exc.http.ServiceUnavailable(), True),
    (lambda: ksa_exc.http.Unauthorized(), False),
    (lambda: ValueError("bug"), False),
])
def test_retry_policy(make: Callable[[], Exception], retry: bool) -> None:
    assert is_retryable(make()) is retry


def test_tags_and_metadata_keys_avoid_slashes() -> None:
    assert tag(LABEL_INSTANCE, "abc") == "atrium-instance=abc"
    assert tag(LABEL_DEPLOYMENT, "prod") == "atrium-deployment=prod"
    assert meta_key(LABEL_INSTANCE) == "atrium:instance"


def test_configuration_is_checked() -> None:
    with pytest.raises(ValueError, match="cloud name or auth"):
        OpenStackBackend("dep")
    with pytest.raises(ValueError, match="Nova tag"):
        OpenStackBackend("x" * 60, cloud="c")
