"""Sharing in a real Chromium: an access request appears live on the owner's page, the
owner accepts it, and the requester's page shows the answer."""

from __future__ import annotations

import pytest
from playwright.sync_api import Browser, expect

from tests.conftest import AtriumServer
from tests.sessions import launch
from tests.test_browser import browser, login  # noqa: F401 - shared fixture


@pytest.mark.browser
def test_access_request_live_on_the_owners_page(browser: Browser,  # noqa: F811
                                                server: AtriumServer) -> None:
    uid = launch(server.client("alice"), "live requests")
    owner = browser.new_context().new_page()
    login(owner, server, "alice")
    owner.goto(f"{server.url}/instances/{uid}")
    expect(owner.locator("#access-requests")).to_contain_text("None.")

    requester = browser.new_context().new_page()
    login(requester, server, "gina")
    requester.goto(f"{server.url}/instances/{uid}")
    expect(requester.get_by_role("heading", name="live requests")).to_be_visible()
    requester.get_by_label("Message to the owner").fill("I run the beamline")
    requester.get_by_role("button", name="Ask to join").click()
    expect(requester.locator('[data-request-status="PENDING"]')).to_be_visible()

    # No reload by hand: the owner's page picks the request up by itself.
    item = owner.locator("#access-requests li", has_text="Gina Green")
    expect(item).to_contain_text("I run the beamline", timeout=15_000)
    item.locator("select[name=role]").select_option("GUEST")
    item.get_by_role("button", name="Accept").click()
    expect(owner.locator("#members")).to_contain_text("Gina Green")

    # The requester's page reloads itself and now shows the instance as a member sees it.
    expect(requester.get_by_text("you are guest")).to_be_visible(timeout=15_000)
    server.client("alice").delete(f"/api/v1/instances/{uid}")
