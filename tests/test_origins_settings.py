"""The origin settings and the pure host rules (fast: no server)."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.settings import SettingsError, load_settings
from web.origins import Origins


def settings(tmp_path: Path, **env: str):  # type: ignore[no-untyped-def]
    return load_settings({"ATRIUM_STATE_DIR": str(tmp_path), **env})


def test_defaults_derive_the_demo_domain_from_the_public_url(tmp_path: Path) -> None:
    s = settings(tmp_path, ATRIUM_PORT="8123")
    assert (s.session_origins, s.sessions_domain) == ("subdomain", "sessions.localhost:8123")
    origins = Origins.from_settings(s)
    assert origins.session_origin("ab12") == "http://ab12.sessions.localhost:8123"
    s = settings(tmp_path, ATRIUM_PUBLIC_URL="https://atrium.example.org",
                 ATRIUM_SESSIONS_DOMAIN="Sessions.Example.NET")
    origins = Origins.from_settings(s)
    assert origins.session_origin("ab12") == "https://ab12.sessions.example.net"
    assert origins.is_portal("atrium.example.org") and origins.is_portal("10.0.0.7")
    assert origins.is_portal("[::1]") and not origins.is_portal("atrium.example.org.evil")


@pytest.mark.parametrize("name, value", [
    ("ATRIUM_SESSION_ORIGINS", "subdomains"),
    ("ATRIUM_SESSIONS_DOMAIN", "sessions.example.org:http"),
    ("ATRIUM_SESSIONS_DOMAIN", "*.example.org"),
    ("ATRIUM_ALLOWED_HOSTS", "portal.example.org:443"),
])
def test_bad_values_name_the_variable(tmp_path: Path, name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        settings(tmp_path, **{name: value})


def test_session_hosts(tmp_path: Path) -> None:
    origins = Origins.from_settings(settings(tmp_path))
    assert origins.session_uid("0a1b2c.sessions.localhost") == "0a1b2c"
    assert origins.session_uid("0A1B2C.SESSIONS.LOCALHOST") == "0a1b2c"
    for host in ("sessions.localhost", "x.sessions.localhost", "a.b.sessions.localhost",
                 "0a1b.sessions.localhost.evil", "0a1b.localhost", "127.0.0.1"):
        assert origins.session_uid(host) is None, host
    path_mode = Origins.from_settings(settings(tmp_path, ATRIUM_SESSION_ORIGINS="path"))
    assert path_mode.session_uid("0a1b2c.sessions.localhost") is None
    assert path_mode.lab_url("0a1b2c") == "/instances/0a1b2c/lab/"
