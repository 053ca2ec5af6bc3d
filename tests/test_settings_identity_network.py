"""Settings of token lifetimes, OpenStack session security groups and OIDC deprovisioning:
defaults, and bad values refused naming the variable."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from orchestrator.settings import SettingsError, load_settings


def load(tmp_path: Path, **env: str) -> object:
    return load_settings({"ATRIUM_STATE_DIR": str(tmp_path), "ATRIUM_DEMO_MODE": "1", **env})


def test_defaults(tmp_path: Path) -> None:
    s = load_settings({"ATRIUM_STATE_DIR": str(tmp_path), "ATRIUM_DEMO_MODE": "1"})
    assert (s.token_default_days, s.token_max_days) == (90, 365)
    assert s.os_security_groups == () and s.os_portal_cidrs == ()
    assert s.oidc_link_unclaimed is True
    s = load_settings({"ATRIUM_STATE_DIR": str(tmp_path), "ATRIUM_DEMO_MODE": "1",
                       "ATRIUM_TOKEN_MAX_DAYS": "30", "ATRIUM_OS_PORTAL_CIDRS": "10.0.0.5/32",
                       "ATRIUM_OS_FLAVOUR_SECURITY_GROUPS": "gpu=licence,nfs; big=nfs",
                       "ATRIUM_OS_INSTRUMENT_SECURITY_GROUPS": "LOKI=loki-daq"})
    assert (s.token_default_days, s.token_max_days) == (30, 30)
    assert s.os_portal_cidrs == ("10.0.0.5/32",)
    assert s.os_flavour_security_groups == {"gpu": ("licence", "nfs"), "big": ("nfs",)}
    assert s.os_instrument_security_groups == {"LOKI": ("loki-daq",)}


@pytest.mark.parametrize("env, words", [
    ({"ATRIUM_TOKEN_DEFAULT_DAYS": "400"}, "ATRIUM_TOKEN_DEFAULT_DAYS=400 is above"),
    ({"ATRIUM_TOKEN_MAX_DAYS": "0"}, "ATRIUM_TOKEN_MAX_DAYS"),
    ({"ATRIUM_OS_PORTAL_CIDRS": "10.0.0.5/33"}, "ATRIUM_OS_PORTAL_CIDRS: '10.0.0.5/33'"),
    ({"ATRIUM_OS_FLAVOUR_SECURITY_GROUPS": "gpu"}, "ATRIUM_OS_FLAVOUR_SECURITY_GROUPS"),
    ({"ATRIUM_OIDC_ISSUER": "http://127.0.0.1:9", "ATRIUM_OIDC_CLIENT_ID": "x",
      "ATRIUM_OIDC_DEPROVISIONED": "(unclosed"}, "ATRIUM_OIDC_DEPROVISIONED"),
    ({"ATRIUM_OIDC_ISSUER": "http://127.0.0.1:9", "ATRIUM_OIDC_CLIENT_ID": "x",
      "ATRIUM_OIDC_LINK_UNCLAIMED": "perhaps"}, "ATRIUM_OIDC_LINK_UNCLAIMED"),
])
def test_bad_values_name_the_variable(tmp_path: Path, env: dict[str, str], words: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(words)):
        load(tmp_path, **env)


def test_the_default_deprovisioning_pattern(tmp_path: Path) -> None:
    s = load_settings({"ATRIUM_STATE_DIR": str(tmp_path), "ATRIUM_DEMO_MODE": "1"})
    pattern = re.compile(s.oidc_deprovisioned)
    for text in ("User disabled", "Account disabled", "Unknown user", "user not found",
                 "refresh token invalid (referenced account not found)"):
        assert pattern.search(text), text
    for text in ("Session not active", "grant request is invalid", "Token is not active",
                 "Stale token"):
        assert not pattern.search(text), text
