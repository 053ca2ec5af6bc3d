"""A person's path in a real Chromium: log in at the provider, use the dashboard and the
tokens page, log out of Atrium and of the provider."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.conftest import ARTIFACTS, need
from tests.oidc.conftest import OidcStack
from tests.test_browser import CHROMIUM, FLAGS


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    need(shutil.which("chromium") is not None, "Debian's chromium is not installed")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield b
        b.close()


def sign_in_at_provider(page: Page, username: str, password: str) -> None:
    expect(page.get_by_role("heading", name="Sign in to the test provider")).to_be_visible()
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()


@pytest.mark.browser
def test_login_dashboard_tokens_logout(chromium: Browser, oidc: OidcStack) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    db = oidc.server.env["ATRIUM_DATABASE_URL"][:6]
    context = chromium.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    page.goto(oidc.url)
    expect(page).to_have_url(f"{oidc.url}/login?next=%2F")
    expect(page.get_by_text("Demo mode")).to_have_count(0)
    page.get_by_role("link", name="Log in with your facility account").click()

    sign_in_at_provider(page, "carol", oidc.provider.users["carol"].password)
    expect(page.get_by_role("heading", name="My instances")).to_be_visible()
    expect(page).to_have_url(f"{oidc.url}/")
    expect(page.locator("#who")).to_have_text("carol · staff")
    expect(page.locator("#experiments")).to_contain_text("20261001")
    page.screenshot(path=str(ARTIFACTS / f"oidc-dashboard-{db}.png"))

    page.get_by_role("link", name="API tokens").click()
    page.get_by_label("Token name").fill("browser token")
    page.get_by_label("Expires in").select_option(label="7 days")
    page.get_by_role("button", name="Create token").click()
    token = page.locator("[data-token]")
    expect(token).to_contain_text("atr_")
    row = page.locator("#tokens tr", has_text="browser token")
    expect(row).to_contain_text("active")
    page.screenshot(path=str(ARTIFACTS / f"oidc-tokens-{db}.png"))
    row.get_by_role("button", name="Revoke browser token").click()
    expect(page.locator("#tokens tr", has_text="browser token")).to_contain_text("revoked")
    expect(page.locator("[data-token]")).to_have_count(0)  # shown once only

    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(f"{oidc.url}/logout/done")
    expect(page.get_by_role("status")).to_contain_text(
        "You are logged out of Atrium and of your identity provider")
    page.goto(oidc.url)
    expect(page).to_have_url(f"{oidc.url}/login?next=%2F")
    # The provider session ended too: it asks for the password again.
    page.get_by_role("link", name="Log in with your facility account").click()
    expect(page.get_by_label("Password")).to_be_visible()
    page.screenshot(path=str(ARTIFACTS / f"oidc-relogin-{db}.png"))
    context.close()


@pytest.mark.browser
def test_a_refused_login_explains_why(chromium: Browser, oidc: OidcStack) -> None:
    page = chromium.new_page()
    page.goto(f"{oidc.url}/login")
    page.get_by_role("link", name="Log in with your facility account").click()
    oidc.provider.tamper(set={"aud": "another-app"})
    sign_in_at_provider(page, "alice", oidc.provider.users["alice"].password)
    expect(page.get_by_role("alert")).to_contain_text(
        "Login refused: the ID token was refused: it was issued for another application")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "oidc-refused-"
                             f"{oidc.server.env['ATRIUM_DATABASE_URL'][:6]}.png"))
    page.goto(oidc.url)
    expect(page).to_have_url(f"{oidc.url}/login?next=%2F")
    page.close()
