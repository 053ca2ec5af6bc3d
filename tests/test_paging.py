"""Every list of the API is paged: limits enforced, a stable order, bad values refused.

The list operations are found in the published OpenAPI document (every GET answering an
array), so a list added later without paging fails here.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import AtriumServer
from tests.sessions import launch, wait_for


@pytest.fixture(scope="module")
def admin(server: AtriumServer) -> Iterator[httpx.Client]:
    with server.client("admin") as client:
        yield client


@pytest.fixture(scope="module")
def instance(server: AtriumServer, admin: httpx.Client) -> Iterator[str]:
    """An instance of admin's, with events, members and an extension list to page."""
    uid = launch(admin, "paged")
    wait_for(admin, uid, {"ACTIVE"})
    for action in ("stop", "start"):
        assert admin.post(f"/api/v1/instances/{uid}/{action}").status_code == 202
        wait_for(admin, uid, {"STOPPED"} if action == "stop" else {"ACTIVE"})
    yield uid
    admin.delete(f"/api/v1/instances/{uid}")


def list_paths(doc: dict, uid: str) -> list[str]:
    """The GET operations that return arrays, with path parameters filled in."""
    found = []
    for path, item in doc["paths"].items():
        get = item.get("get", {})
        schema = get.get("responses", {}).get("200", {}).get("content", {}) \
            .get("application/json", {}).get("schema", {})
        if schema.get("type") != "array":
            continue
        names = {p["name"] for p in get.get("parameters", [])}
        assert {"limit", "offset"} <= names, f"{path} is a list without paging parameters"
        headers = get["responses"]["200"].get("headers", {})
        assert {"X-Total-Count", "Link"} <= set(headers), f"{path}: paging headers undocumented"
        filled = path.replace("{uid}", uid)
        assert not re.search(r"{\w+}", filled), f"{path}: unknown path parameter"
        found.append("/api/v1" + filled)
    return found


def test_every_list_is_paged(server: AtriumServer, admin: httpx.Client, instance: str
                             ) -> None:
    paths = list_paths(admin.get("/api/v1/openapi.json").json(), instance)
    assert len(paths) >= 15, paths  # the lists the API has today
    for path in paths:
        full = admin.get(path, params={"limit": 500})
        assert full.status_code == 200, (path, full.text)
        assert "X-Total-Count" in full.headers, path
        total = int(full.headers["X-Total-Count"])
        assert total == len(full.json()), path
        one = admin.get(path, params={"limit": 1})
        assert one.status_code == 200, (path, one.text)
        assert len(one.json()) == min(1, total), path
        assert int(one.headers["X-Total-Count"]) == total, path
        if total > 1:
            assert 'rel="next"' in one.headers["Link"], path
        else:
            assert "Link" not in one.headers, path


def test_pages_are_stable_and_complete(admin: httpx.Client, instance: str) -> None:
    # Lists nothing else changes meanwhile (other tests' instances come and go).
    for path in (f"/api/v1/instances/{instance}/events", "/api/v1/admin/users",
                 "/api/v1/plans", "/api/v1/admin/images"):
        everything = admin.get(path, params={"limit": 500}).json()
        assert len(everything) >= 2, path
        paged: list = []
        url: str | None = f"{path}{'&' if '?' in path else '?'}limit=1"
        while url is not None and len(paged) <= len(everything):
            r = admin.get(url)
            assert r.status_code == 200, r.text
            paged += r.json()
            match = re.search(r'<([^>]+)>; rel="next"', r.headers.get("Link", ""))
            url = match.group(1) if match else None
        assert paged == everything, path


@pytest.mark.parametrize("query, named", [
    ({"limit": "0"}, "limit"), ({"limit": "501"}, "limit"), ({"limit": "ten"}, "limit"),
    ({"offset": "-1"}, "offset"), ({"offset": "1e9"}, "offset"),
    ({"limit": "9" * 40}, "limit"),
])
def test_bad_paging_values_are_refused(admin: httpx.Client, query: dict[str, str],
                                       named: str) -> None:
    for path in ("/api/v1/instances", "/api/v1/admin/users", "/api/v1/plans",
                 "/api/v1/admin/instances"):
        r = admin.get(path, params=query)
        assert r.status_code == 400, (path, query, r.text)
        assert named in r.json()["error"]["message"]


def test_admin_pages_are_paged(server: AtriumServer, admin: httpx.Client) -> None:
    """The admin instance list and user list pages show a pager and honour limit/offset."""
    session = httpx.Client(base_url=server.url, follow_redirects=True)
    assert session.get("/login").status_code == 200
    session.post("/login", data={"username": "admin", "_xsrf": session.cookies["_xsrf"]})
    total = int(admin.get("/api/v1/admin/users").headers["X-Total-Count"])
    page = session.get("/admin/users", params={"limit": 2})
    assert page.status_code == 200, page.text
    assert f"1\u20132 of {total:,}" in page.text
    assert 'rel="next"' in page.text
    bad = session.get("/admin/instances", params={"limit": "x"})
    assert bad.status_code == 400
