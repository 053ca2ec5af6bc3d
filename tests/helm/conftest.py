"""Fixtures of the chart tests: real Helm (the Helm v4 SDK, see tests/harness/helm/sdk.py)."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from tests.conftest import need
from tests.harness.helm import sdk


@pytest.fixture(scope="session")
def helm() -> Any:
    """The ``helm_python`` module (installed into the cache on first use)."""
    try:
        return sdk.load()
    except (subprocess.SubprocessError, OSError, ImportError) as exc:
        need(False, f"Helm SDK (helm-python-sdk {sdk.VERSION}) unavailable: {exc}")
