"""The lifetime in a real Chromium: the banner on every page, the instance page's panel,
asking for more time, an admin accepting it at /admin/lifetime."""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.conftest import ARTIFACTS, AtriumServer, Databases, cleanup_sessions, need
from tests.lifetime_helpers import SmtpSink, lifetime_env, smtp_server
from tests.sessions import launch
from tests.test_browser import CHROMIUM, FLAGS


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    need(shutil.which("chromium") is not None, "Debian's chromium is not installed")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield b
        b.close()


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with smtp_server() as s:
        yield s


def login(page: Page, srv: AtriumServer, username: str) -> None:
    page.goto(f"{srv.url}/login")
    page.get_by_role("button", name=username).click()
    expect(page.get_by_role("heading", name="My instances")).to_be_visible()


@pytest.mark.browser
def test_banner_extension_and_admin_decision(browser: Browser, sink: SmtpSink,
                                             tmp_path_factory: pytest.TempPathFactory) -> None:
    dbs = Databases("sqlite", tmp_path_factory)
    srv = AtriumServer(dbs.new(), tmp_path_factory.mktemp("lifetime-browser"),
                       **lifetime_env(sink))
    srv.cli("demo", "--seed-only")
    srv.start()
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        alice_api = srv.client("alice")
        uid = launch(alice_api, "ends tomorrow")
        soon = dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0) + \
            dt.timedelta(hours=30)
        assert alice_api.patch(f"/api/v1/instances/{uid}/lifetime",
                               json={"termination_date": soon.isoformat()}).status_code == 200

        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        login(page, srv, "alice")
        banner = page.locator("#lifetime-banner")
        expect(banner).to_be_visible()
        expect(banner).to_contain_text("ends tomorrow")
        expect(banner).to_contain_text(soon.strftime("%Y-%m-%d %H:%M"))
        page.screenshot(path=str(ARTIFACTS / "lifetime-dashboard.png"), full_page=True)

        banner.get_by_role("link", name="ends tomorrow").click()
        expect(page.locator("[data-lifetime-banner]")).to_contain_text("will be deleted on")
        expect(page.locator("#lifetime-banner")).to_be_hidden()  # no duplicate here
        panel = page.locator("#lifetime")
        panel.get_by_label("Ask for more days").fill("5")
        panel.get_by_label("Why").fill("the last scans need reprocessing")
        panel.get_by_role("button", name="Ask for an extension").click()
        expect(panel.locator(".notice")).to_contain_text("sent to the admins")
        expect(panel.locator("[data-pending-extension]")).to_be_visible()
        page.screenshot(path=str(ARTIFACTS / "lifetime-instance.png"), full_page=True)
        context.close()

        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        login(page, srv, "admin")
        page.get_by_role("link", name="Expirations").click()
        row = page.locator("#pending tr", has_text="the last scans need reprocessing")
        expect(row).to_be_visible()
        expect(page.locator("#upcoming")).to_contain_text("ends tomorrow")
        page.screenshot(path=str(ARTIFACTS / "lifetime-admin.png"), full_page=True)
        row.get_by_role("button", name="Accept").click()
        expect(page.locator(".notice")).to_contain_text("accepted")
        expect(page.locator("#pending")).to_contain_text("No pending requests")
        context.close()

        life = alice_api.get(f"/api/v1/instances/{uid}/lifetime").json()
        assert life["termination_date"] == (soon + dt.timedelta(days=5)).isoformat() + "Z"
        assert life["warning"] is None  # 5 days away: no banner any more
        sink.wait(lambda ms: any("alice@example.org" in m.to and "Extension accepted"
                                 in m.subject for m in ms))
    finally:
        srv.stop()
        cleanup_sessions(srv)
        dbs.drop_all()
