"""An xfce desktop (with JupyterLab) in a real Chromium through noVNC and Atrium's bridge."""

from __future__ import annotations

import os
import signal
import time

import pytest
from playwright.sync_api import Browser, expect

from tests.conftest import ARTIFACTS, AtriumServer
from tests.sessions import launch_plan, processes_of, wait_for
from tests.test_browser import browser, login  # noqa: F401 - shared fixture

# Distinct colours among sampled canvas pixels: a blank or "connecting" screen has a few,
# xfce's wallpaper and panel have hundreds.
COLOURS = """(() => {
  const canvas = document.querySelector('#screen canvas');
  if (!canvas || canvas.width < 100) return 0;
  const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  const seen = new Set();
  for (let i = 0; i < data.length; i += 4 * 97)
    seen.add(data[i] << 16 | data[i+1] << 8 | data[i+2]);
  return seen.size;
})()"""


def session_processes(deployment: str, uid: str) -> list[str]:
    names = []
    for pid in processes_of(deployment, uid):
        try:
            names.append(open(f"/proc/{pid}/comm").read().strip())
        except OSError:
            pass
    return names


@pytest.mark.browser
def test_xfce_desktop_is_drawn_in_the_browser(browser: Browser,  # noqa: F811
                                              server: AtriumServer) -> None:
    alice = server.client("alice")
    uid = launch_plan(alice, "xfce", "Analysis desktop", ["20261002"])
    data = wait_for(alice, uid, {"ACTIVE"})
    assert data["ready_protocols"] == ["desktop", "jupyter"]
    assert "Xvnc" in session_processes(server.deployment, uid)

    page = browser.new_page(viewport={"width": 1280, "height": 860})
    login(page, server, "alice")
    page.goto(f"{server.url}/instances/{uid}")
    with page.context.expect_page() as opened:
        page.get_by_role("link", name="Open desktop").click()
    desk = opened.value
    expect(desk.locator("#desktop-state")).to_have_attribute("data-state", "connected",
                                                             timeout=30_000)
    deadline = time.monotonic() + 30
    colours = 0
    while time.monotonic() < deadline and colours < 50:
        desk.wait_for_timeout(500)
        colours = desk.evaluate(COLOURS)
    ARTIFACTS.mkdir(exist_ok=True)
    desk.screenshot(path=str(ARTIFACTS / f"desktop-{server.env['ATRIUM_DATABASE_URL'][:6]}.png"))
    assert colours >= 50, f"the desktop looks blank ({colours} colours)"
    desk.close()

    # JupyterLab dies, the desktop answers: PARTIALLY_ACTIVE, shown on the instance page.
    for pid in processes_of(server.deployment, uid):
        if b"jupyterlab" in open(f"/proc/{pid}/cmdline", "rb").read():
            os.kill(pid, signal.SIGKILL)
    data = wait_for(alice, uid, {"PARTIALLY_ACTIVE"}, timeout=30)
    assert data["ready_protocols"] == ["desktop"] and "jupyter" in data["reason"]
    page.reload()
    expect(page.locator('[data-protocol="jupyter"]')).to_have_class("proto down")
    expect(page.locator('[data-protocol="desktop"]')).to_have_class("proto up")
    page.close()
    assert alice.post(f"/api/v1/instances/{uid}/reboot").status_code == 202
    wait_for(alice, uid, {"REBOOTING", "STARTING"}, timeout=30)
    assert wait_for(alice, uid, {"ACTIVE"})["ready_protocols"] == ["desktop", "jupyter"]

    # Deleting leaves no X server, window manager, session or agent behind.
    alice.delete(f"/api/v1/instances/{uid}")
    wait_for(alice, uid, {"DELETED"})
    assert session_processes(server.deployment, uid) == []
