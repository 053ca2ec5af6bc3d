"""Per-instance origins end to end in Chromium (``<uid>.sessions.localhost``): the owner
opens JupyterLab (a kernel answers 42) and the desktop at the instance's own origin; a
watch-only guest who joined by invitation link watches the desktop; a person whose
access request was accepted opens the lab. Every session page is on the instance's
origin, never the portal's."""

from __future__ import annotations

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.conftest import AtriumServer
from tests.session_hosts import session_origin
from tests.sessions import launch_plan, wait_for
from tests.test_browser import browser, login  # noqa: F401 - shared fixture


def open_from_instance_page(page: Page, name: str) -> Page:
    with page.context.expect_page() as opened:
        page.get_by_role("link", name=name).click()
    return opened.value


@pytest.mark.browser
def test_instances_at_their_own_origins(browser: Browser,  # noqa: F811
                                        server: AtriumServer) -> None:
    alice_api = server.client("alice")
    uid = launch_plan(alice_api, "own origin", "Analysis desktop", ["20261001"])
    assert wait_for(alice_api, uid, {"ACTIVE"})["ready_protocols"] == ["desktop", "jupyter"]
    origin = session_origin(server, uid)
    # Members connect while alice is away (presence is test_sharing.py's subject).
    alice_api.patch(f"/api/v1/instances/{uid}/sharing",
                    json={"unrestricted_member_access": True})

    alice = browser.new_context(viewport={"width": 1280, "height": 860}).new_page()
    login(alice, server, "alice")
    alice.goto(f"{server.url}/instances/{uid}")
    lab = open_from_instance_page(alice, "Open JupyterLab")
    lab.wait_for_selector(".jp-LabShell", timeout=60_000)
    assert lab.url.startswith(f"{origin}/instances/{uid}/lab"), lab.url
    lab.locator('.jp-LauncherCard[data-category="Notebook"]').first.click()
    expect(lab.get_by_text("Python 3 (ipykernel) | Idle")).to_be_visible(timeout=60_000)
    cell = lab.locator(".jp-Notebook .jp-Cell .cm-content").first
    cell.click()
    cell.fill("6*7")
    expect(cell).to_have_text("6*7")
    cell.press("Shift+Enter")
    expect(lab.locator(".jp-OutputArea-output").first).to_have_text("42", timeout=60_000)
    # The lab's page cannot read the portal's cookies: it has only its own, HttpOnly.
    assert "atrium" not in lab.evaluate("document.cookie")
    lab.close()

    desk = open_from_instance_page(alice, "Open desktop")
    expect(desk.locator("#desktop-state")).to_have_attribute("data-state", "connected",
                                                             timeout=30_000)
    assert desk.url == f"{origin}/instances/{uid}/desktop"
    desk.close()

    # An invitation link for a watch-only guest: bob joins and watches.
    alice.get_by_label("Invitation link for a").select_option("GUEST")
    alice.get_by_role("button", name="Create link").click()
    link = alice.locator("input.copy").input_value()
    bob = browser.new_context(viewport={"width": 1280, "height": 860}).new_page()
    login(bob, server, "bob")
    bob.goto(link)
    bob.get_by_role("button", name="Join").click()
    expect(bob.get_by_text("you are guest")).to_be_visible()
    watch = open_from_instance_page(bob, "Watch desktop")
    expect(watch.locator("#desktop-state")).to_have_attribute("data-state", "connected",
                                                              timeout=30_000)
    expect(watch.get_by_text("watch only")).to_be_visible()
    assert watch.url.startswith(origin)
    # A guest has no lab: the ticket office refuses.
    refused = bob.context.new_page()
    response = refused.goto(f"{server.url}/instances/{uid}/lab/")
    assert response is not None and response.status == 403

    # An access request, accepted: gina opens the lab at the instance's origin.
    gina = browser.new_context().new_page()
    login(gina, server, "gina")
    gina.goto(f"{server.url}/instances/{uid}")
    gina.get_by_label("Message to the owner").fill("please")
    gina.get_by_role("button", name="Ask to join").click()
    alice.goto(f"{server.url}/instances/{uid}")
    item = alice.locator("#access-requests li", has_text="gina")
    item.locator("select[name=role]").select_option("USER")
    item.get_by_role("button", name="Accept").click()
    expect(alice.locator("#members")).to_contain_text("Gina")
    gina.goto(f"{server.url}/instances/{uid}/lab/")
    gina.wait_for_selector(".jp-LabShell", timeout=60_000)
    assert gina.url.startswith(f"{origin}/instances/{uid}/lab")

    for context in (alice.context, bob.context, gina.context):
        context.close()
    alice_api.delete(f"/api/v1/instances/{uid}")
    wait_for(alice_api, uid, {"DELETED"})
