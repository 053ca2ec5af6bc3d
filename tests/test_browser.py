"""A person's path in a real Chromium: log in, launch, watch it start, open JupyterLab."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.conftest import ARTIFACTS, AtriumServer, need
from tests.sessions import processes_of, wait_for

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    need(shutil.which("chromium") is not None, "Debian's chromium is not installed")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield b
        b.close()


def login(page: Page, server: AtriumServer, username: str) -> None:
    page.goto(server.url)
    expect(page).to_have_url(f"{server.url}/login?next=%2F")
    page.get_by_role("button", name=username).click()
    expect(page.get_by_role("heading", name="My instances")).to_be_visible()


@pytest.mark.browser
def test_login_launch_open_jupyterlab(browser: Browser, server: AtriumServer) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    login(page, server, "alice")
    expect(page.locator("#experiments")).to_contain_text("20261001")
    expect(page.locator("#experiments")).to_contain_text("LOKI")

    page.get_by_label("Name").fill("browser session")
    page.get_by_label("20261001").check()
    page.get_by_role("button", name="Launch").click()
    expect(page.get_by_role("heading", name="browser session")).to_be_visible()
    uid = page.url.rsplit("/", 1)[-1]
    status = page.locator("[data-status]")
    expect(status).to_have_text("ACTIVE", timeout=90_000)
    page.screenshot(path=str(ARTIFACTS / f"instance-{server.env['ATRIUM_DATABASE_URL'][:6]}.png"))

    with context.expect_page() as opened:
        page.get_by_role("link", name="Open JupyterLab").click()
    lab = opened.value
    lab.wait_for_selector(".jp-LabShell", timeout=60_000)
    # The experiment's data shows in the file browser.
    expect(lab.locator(".jp-DirListing-content")).to_contain_text("data", timeout=30_000)
    lab.locator(".jp-DirListing-content").get_by_text("data", exact=True).dblclick()
    expect(lab.locator(".jp-DirListing-content")).to_contain_text("20261001", timeout=30_000)
    lab.screenshot(path=str(ARTIFACTS / f"jupyterlab-{server.env['ATRIUM_DATABASE_URL'][:6]}.png"))
    lab.close()

    page.goto(server.url)
    expect(page.locator("#instances")).to_contain_text("browser session")
    page.screenshot(path=str(ARTIFACTS / f"dashboard-{server.env['ATRIUM_DATABASE_URL'][:6]}.png"))

    page.goto(f"{server.url}/instances/{uid}")
    page.once("dialog", lambda d: d.accept())
    page.get_by_role("button", name="Delete").click()
    expect(page.get_by_role("heading", name="My instances")).to_be_visible()
    wait_for(server.client("alice"), uid, {"DELETED"})
    assert processes_of(server.deployment, uid) == []
    context.close()


@pytest.mark.browser
def test_launch_form_shows_a_readable_error(browser: Browser, server: AtriumServer) -> None:
    page = browser.new_page()
    login(page, server, "bob")
    page.get_by_label("Name").fill("x" * 100 + "y")  # maxlength stops typing at 100
    page.evaluate("document.querySelector('input[name=name]').removeAttribute('maxlength')")
    page.get_by_label("Name").fill("bad/name")
    page.get_by_role("button", name="Launch").click()
    expect(page.get_by_role("alert")).to_contain_text("the name may contain")
    expect(page.get_by_label("Name")).to_have_value("bad/name")
    page.close()
