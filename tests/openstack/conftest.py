"""Fixtures for the OpenStack backend tests: a real cloud started once per test session.

``openstack_cloud`` installs (cached) and starts Keystone, Glance, Placement, Neutron and
Nova on loopback (tests/harness/openstack) and yields their :class:`CloudSettings`. When
the cloud cannot be started the tests are skipped, except under ``CI=true`` where they
fail: CI must never pass by not testing.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from spawners.openstack import OpenStackBackend
from tests.conftest import need
from tests.harness.openstack.bootstrap import CloudSettings
from tests.harness.openstack.cloud import LocalCloud, install
from tests.openstack.helpers import make_backend


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Hide openstacksdk's deprecation chatter (not ours) in this directory's tests."""
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.path).startswith(here):
            item.add_marker(pytest.mark.filterwarnings("ignore::DeprecationWarning"))
            item.add_marker(pytest.mark.filterwarnings("ignore::PendingDeprecationWarning"))


@pytest.fixture(scope="session")
def openstack_harness(request: pytest.FixtureRequest) -> Iterator[LocalCloud]:
    """The running cloud itself (for tests that stop and start its services)."""
    cloud = None
    try:
        cloud = LocalCloud(install())
        cloud.start()
    except Exception as err:
        need(False, f"the OpenStack test cloud could not be started: {err}")
    _say(request, f"openstack harness up: {cloud.timings} ({cloud.run_dir})")
    yield cloud
    started = time.monotonic()
    cloud.stop()
    _say(request, f"openstack harness stopped in {time.monotonic() - started:.1f}s")


def _say(request: pytest.FixtureRequest, line: str) -> None:
    """One line on the terminal, past pytest's output capture."""
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if capture is None or reporter is None:
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line(line)


@pytest.fixture(scope="session")
def openstack_cloud(openstack_harness: LocalCloud) -> CloudSettings:
    """Connection settings (auth url, project, user, password) and bootstrap ids."""
    assert openstack_harness.settings is not None
    return openstack_harness.settings


@pytest.fixture
async def backend(openstack_cloud: CloudSettings) -> AsyncIterator[OpenStackBackend]:
    """A backend of a deployment of its own, so tests never see each other's servers."""
    b = make_backend(openstack_cloud, f"test-{secrets.token_hex(3)}")
    yield b
    await b.close()
