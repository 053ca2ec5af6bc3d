"""An admin role removed at the identity provider ends at the next provider check, and so
do the open connections it allowed (real provider, real JupyterLab session)."""

from __future__ import annotations

import pytest

from tests.oidc.conftest import RECHECK, OidcStack, login
from tests.revocation_helpers import WITHIN, closed, on_instance_host, open_kernel, still_open
from tests.sessions import launch, wait_for

WATCH = 3.0  # seconds between the portal's re-checks of open connections (web/presence.py)


async def test_an_admin_group_removed_at_the_provider_closes_the_admins_lab(
        oidc: OidcStack) -> None:
    alice = oidc.server.client("alice")
    uid = launch(alice, "watched by an admin")
    wait_for(alice, uid, {"ACTIVE"})
    lee = login(oidc, "oidc.lee")
    assert "ADMIN" in lee.get("/api/v1/me").json()["roles"]
    headers = {"Cookie": f"atrium_session={lee.cookies['atrium_session']}"}
    lab = await open_kernel(oidc.server, uid, headers)  # admins may open any lab
    try:
        assert await still_open(lab, RECHECK + 0.5)  # checks that change nothing keep it
        oidc.provider.update_user("oidc.lee", groups=[])
        # The next check (due after RECHECK, run by the next re-check) ends the role and,
        # within 2 s of it, the connection.
        assert await closed(lab, RECHECK + WATCH + WITHIN) == 4403
        me = lee.get("/api/v1/me")
        assert me.status_code == 200 and "ADMIN" not in me.json()["roles"]
        with pytest.raises(AssertionError, match="404"):  # no ticket to the lab any more
            on_instance_host(oidc.server, uid, headers)
    finally:
        oidc.provider.update_user("oidc.lee", groups=["atrium-admins"])
        alice.delete(f"/api/v1/instances/{uid}")
    wait_for(alice, uid, {"DELETED"})
