"""Start-up guards: bad settings and an out-of-date schema are refused with the fix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.settings import SettingsError, load_settings, normalise_database_url
from tests.conftest import ROOT


def test_defaults_in_demo_mode(tmp_path: Path) -> None:
    s = load_settings({"ATRIUM_STATE_DIR": str(tmp_path), "ATRIUM_DEMO_MODE": "1"})
    assert s.database_url == f"sqlite+aiosqlite:///{tmp_path}/atrium.db"
    assert s.port == 8000 and s.backends == ("local",) and s.default_quota == 2
    assert len(s.cookie_secret) >= 32
    again = load_settings({"ATRIUM_STATE_DIR": str(tmp_path), "ATRIUM_DEMO_MODE": "1"})
    assert again.cookie_secret == s.cookie_secret  # kept across restarts


@pytest.mark.parametrize("env, words", [
    ({"ATRIUM_COOKIE_SECRET": "short"}, "too short"),
    ({"ATRIUM_DEMO_MODE": "maybe"}, "expected true or false"),
    ({"ATRIUM_DEMO_MODE": "1", "ATRIUM_PORT": "eighty"}, "ATRIUM_PORT"),
    ({"ATRIUM_DEMO_MODE": "1", "ATRIUM_BACKENDS": "local,mainframe"}, "ATRIUM_BACKENDS"),
    ({"ATRIUM_DEMO_MODE": "1", "ATRIUM_DATABASE_URL": "oracle://x"}, "ATRIUM_DATABASE_URL"),
    ({"ATRIUM_DEMO_MODE": "1", "ATRIUM_DEPLOYMENT_ID": "a b"}, "ATRIUM_DEPLOYMENT_ID"),
    ({"ATRIUM_DEMO_MODE": "1", "ATRIUM_EXPERIMENTS_FILE": "/nope.yaml"}, "no such file"),
])
def test_bad_settings_name_the_variable(tmp_path: Path, env: dict[str, str], words: str) -> None:
    with pytest.raises(SettingsError, match=words):
        load_settings({"ATRIUM_STATE_DIR": str(tmp_path), **env})


def test_serving_needs_a_cookie_secret(tmp_path: Path) -> None:
    settings = load_settings({"ATRIUM_STATE_DIR": str(tmp_path)})
    with pytest.raises(SettingsError, match="ATRIUM_COOKIE_SECRET is not set"):
        settings.check_for_serving()


def test_database_urls_map_to_async_drivers() -> None:
    assert normalise_database_url("postgresql://u@h/db") == "postgresql+asyncpg://u@h/db"
    assert normalise_database_url("sqlite:////x.db") == "sqlite+aiosqlite:////x.db"


def _atrium(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *args], cwd=ROOT, capture_output=True,
        text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "ATRIUM_STATE_DIR": str(tmp_path), **env})


def test_serve_refuses_an_empty_or_old_schema(tmp_path: Path) -> None:
    result = _atrium(tmp_path, "serve", ATRIUM_DEMO_MODE="1")
    assert result.returncode == 2
    assert "run `atrium db upgrade`" in result.stderr
    assert _atrium(tmp_path, "db", "current").returncode == 1
    assert _atrium(tmp_path, "db", "upgrade").returncode == 0
    assert _atrium(tmp_path, "db", "current").returncode == 0


def test_serve_refuses_a_bad_setting_at_start(tmp_path: Path) -> None:
    result = _atrium(tmp_path, "serve")
    assert result.returncode == 2
    assert "bad setting: ATRIUM_COOKIE_SECRET is not set" in result.stderr
