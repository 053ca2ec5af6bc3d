"""Quotas and flavour limits through a real server (API and forms), on SQLite and
PostgreSQL: concurrent launches, forged forms, the dashboard's remaining quota."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import AtriumServer, Databases, cleanup_sessions
from tests.sessions import wait_for


@pytest.fixture(scope="module")
def quota_server(databases: Databases, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[AtriumServer]:
    """A seeded demo server with the default quota of 2 instances per user."""
    srv = AtriumServer(databases.new(), tmp_path_factory.mktemp("quotas"),
                       ATRIUM_DEFAULT_QUOTA="2")
    srv.cli("demo", "--seed-only")
    srv.start()
    yield srv
    srv.stop()
    cleanup_sessions(srv)


def browser(server: AtriumServer, username: str) -> httpx.Client:
    """A cookie session as a browser has it (demo login, with the XSRF cookie)."""
    client = httpx.Client(base_url=server.url, timeout=30)
    assert client.get("/login").status_code == 200
    r = client.post("/login", data={"username": username, "_xsrf": client.cookies["_xsrf"]})
    assert r.status_code == 302, r.text
    return client


def form(client: httpx.Client, path: str, data: dict[str, object]) -> httpx.Response:
    return client.post(path, data={**data, "_xsrf": client.cookies["_xsrf"]})


def plan_id(server: AtriumServer, flavour: str) -> int:
    plans = server.client("admin").get("/api/v1/admin/plans").json()
    return int(next(p["id"] for p in plans
                    if p["flavour"]["name"] == flavour and p["image"]["name"] == "JupyterLab"))


def live_instances(server: AtriumServer, owner: str) -> list[dict[str, object]]:
    r = server.client("admin").get("/api/v1/admin/instances", params={"owner": owner})
    assert r.status_code == 200, r.text
    return [i for i in r.json() if i["target"] != "DELETED"]


async def test_twenty_concurrent_launches_admit_two(quota_server: AtriumServer) -> None:
    token = quota_server.token("alice")
    small = plan_id(quota_server, "small")
    async with httpx.AsyncClient(base_url=quota_server.url, timeout=60,
                                 headers={"Authorization": f"Bearer {token}"}) as client:
        answers = await asyncio.gather(*[
            client.post("/api/v1/instances", json={"name": f"race {n}", "plan_id": small,
                                                   "experiment_ids": []})
            for n in range(20)])
    statuses = sorted(r.status_code for r in answers)
    assert statuses == [201] * 2 + [409] * 18, [r.text for r in answers]
    assert {r.json()["error"]["message"] for r in answers if r.status_code == 409} == \
        {"quota reached: you have 2 of 2 instances; delete one first"}
    created = {r.json()["uid"] for r in answers if r.status_code == 201}
    assert {i["uid"] for i in live_instances(quota_server, "alice")} == created

    # The dashboard and the API show the quota as used up.
    alice = browser(quota_server, "alice")
    page = alice.get("/").text
    assert "Instances: 2 of 2 used, 0 left" in page
    quota = quota_server.client("alice").get("/api/v1/quota").json()
    assert quota["instances"] == {"used": 2, "limit": 2, "remaining": 0,
                                  "source": "ATRIUM_DEFAULT_QUOTA"}
    # A launch from the form is refused with the same words, and shows them.
    r = form(alice, "/", {"name": "one more", "plan_id": small})
    assert r.status_code == 409 and "you have 2 of 2 instances" in r.text

    # An admin deletes both from the admin page; the quota is free again at once.
    admin = browser(quota_server, "admin")
    for uid in created:
        r = form(admin, "/admin/instances", {"uid": uid, "action": "delete",
                                             "next": "/admin/instances"})
        assert r.status_code == 302, r.text
    assert live_instances(quota_server, "alice") == []
    assert "Instances: 0 of 2 used, 2 left" in alice.get("/").text
    watcher = quota_server.client("admin")
    for uid in created:
        wait_for(watcher, uid, {"DELETED"}, timeout=120)


def test_plan_limited_to_others_is_refused_by_api_and_forged_form(
        quota_server: AtriumServer) -> None:
    gpu = plan_id(quota_server, "large-gpu")
    bob = quota_server.client("bob")
    assert gpu not in {p["id"] for p in bob.get("/api/v1/plans").json()}
    bobs = [e["id"] for e in bob.get("/api/v1/experiments").json()]
    r = bob.post("/api/v1/instances", json={"name": "sneaky", "plan_id": gpu,
                                            "experiment_ids": bobs})
    assert r.status_code == 403
    assert r.json()["error"]["message"] == ("the large-gpu flavour is reserved for STAFF, or "
                                            "experiments on LOKI; select one of those "
                                            "experiments")
    # The form does not offer the plan; posting it anyway is refused the same way.
    page = browser(quota_server, "bob")
    assert f'name="plan_id" value="{gpu}"' not in page.get("/").text
    r = form(page, "/", {"name": "sneaky", "plan_id": gpu, "experiment_ids": bobs})
    assert r.status_code == 403 and "reserved for STAFF, or experiments on LOKI" in r.text
    # alice is offered the plan (a LOKI experiment) but only with LOKI data.
    alice = quota_server.client("alice")
    assert gpu in {p["id"] for p in alice.get("/api/v1/plans").json()}
    dream = next(e["id"] for e in alice.get("/api/v1/experiments").json()
                 if e["instrument"] == "DREAM")
    r = form(browser(quota_server, "alice"), "/", {"name": "dream gpu", "plan_id": gpu,
                                                   "experiment_ids": dream})
    assert r.status_code == 403 and "select one of those experiments" in r.text
    assert live_instances(quota_server, "bob") == []
    assert live_instances(quota_server, "alice") == []


def test_admin_pages_and_api_refuse_everyone_else(quota_server: AtriumServer) -> None:
    alice = quota_server.client("alice")
    anonymous = httpx.Client(base_url=quota_server.url, timeout=30)
    for path in ("/api/v1/admin/images", "/api/v1/admin/users", "/api/v1/admin/usage",
                 "/api/v1/admin/instances", "/api/v1/admin/catalog"):
        assert alice.get(path).status_code == 403
        assert anonymous.get(path).status_code == 401
    assert alice.post("/api/v1/admin/flavours", json={"name": "mine"}).status_code == 403
    page = browser(quota_server, "alice")
    for path in ("/admin/instances", "/admin/images", "/admin/flavours", "/admin/plans",
                 "/admin/quotas", "/admin/users", "/admin/usage", "/admin/catalog",
                 "/admin/usage.csv"):
        assert page.get(path).status_code == 403, path
        r = anonymous.get(path)
        assert r.status_code == 302 and r.headers["location"].startswith("/login?next=")
    r = form(page, "/admin/quotas", {"scope": "USER", "subject": "alice",
                                     "max_instances": "99"})
    assert r.status_code == 403
    assert quota_server.client("alice").get("/api/v1/quota").json()["instances"]["limit"] == 2
    assert 'href="/admin"' not in page.get("/").text
    assert 'href="/admin"' in browser(quota_server, "admin").get("/").text


def test_admin_api_curates_the_catalogue(quota_server: AtriumServer) -> None:
    admin = quota_server.client("admin")
    r = admin.post("/api/v1/admin/flavours", json={"name": "broken", "memory_mb": -1})
    assert r.status_code == 400
    assert r.json()["error"]["message"] == \
        "flavour: memory_mb must be a whole number above 0 (MB), not -1"
    r = admin.post("/api/v1/admin/images", json={"name": "Test lab", "version": "0.1",
                                                 "protocols": ["jupyter"], "visible": False,
                                                 "backend_refs": {"local": "jupyterlab"}})
    assert r.status_code == 201, r.text
    image = r.json()
    r = admin.post("/api/v1/admin/flavours", json={
        "name": "staff-only", "cpus": 1, "memory_mb": 1024, "limits": {"roles": ["STAFF"]}})
    assert r.status_code == 201, r.text
    flavour = r.json()
    r = admin.post("/api/v1/admin/plans", json={"image_id": image["id"],
                                                "flavour_id": flavour["id"]})
    assert r.status_code == 201, r.text
    plan = r.json()
    # Hidden image: only admins see the plan; the flavour limit keeps it from alice too.
    assert plan["id"] in {p["id"] for p in admin.get("/api/v1/plans").json()}
    assert plan["id"] not in {p["id"] for p in
                              quota_server.client("carol").get("/api/v1/plans").json()}
    r = admin.patch(f"/api/v1/admin/images/{image['id']}", json={"visible": True})
    assert r.status_code == 200 and r.json()["visible"] is True
    assert plan["id"] in {p["id"] for p in
                          quota_server.client("carol").get("/api/v1/plans").json()}
    assert plan["id"] not in {p["id"] for p in
                              quota_server.client("alice").get("/api/v1/plans").json()}
    r = admin.patch(f"/api/v1/admin/plans/{plan['id']}", json={"enabled": False})
    assert r.status_code == 200 and r.json()["enabled"] is False
    assert plan["id"] not in {p["id"] for p in
                              quota_server.client("carol").get("/api/v1/plans").json()}
    assert admin.delete(f"/api/v1/admin/images/{image['id']}").status_code == 409
    assert admin.delete(f"/api/v1/admin/plans/{plan['id']}").status_code == 204
    assert admin.delete(f"/api/v1/admin/flavours/{flavour['id']}").status_code == 204
    assert admin.delete(f"/api/v1/admin/images/{image['id']}").status_code == 204
    assert admin.get(f"/api/v1/admin/images/{image['id']}").status_code == 404


def test_group_quota_policy_applies_to_its_members(quota_server: AtriumServer) -> None:
    admin = quota_server.client("admin")
    users = {u["username"]: u for u in admin.get("/api/v1/admin/users").json()}
    bob = users["bob"]
    r = admin.post("/api/v1/admin/quotas", json={"group": "beamline", "max_instances": 5,
                                                 "max_cpus": 3})
    assert r.status_code == 201, r.text
    policy = r.json()
    assert admin.post("/api/v1/admin/quotas", json={"group": "beamline", "max_gpus": 1}
                      ).status_code == 409
    try:
        r = admin.patch(f"/api/v1/admin/users/{bob['id']}", json={"groups": ["beamline"]})
        assert r.status_code == 200 and r.json()["groups"] == ["beamline"]
        quota = quota_server.client("bob").get("/api/v1/quota").json()
        assert quota["instances"]["limit"] == 5 and quota["instances"]["source"] == \
            "group beamline"
        assert quota["cpus"] == {"used": 0.0, "limit": 3.0, "remaining": 3.0,
                                 "source": "group beamline"}
        # A user policy beats the group, for the limits it sets.
        r = admin.post("/api/v1/admin/quotas", json={"user": "bob", "max_instances": 1})
        assert r.status_code == 201
        quota = quota_server.client("bob").get("/api/v1/quota").json()
        assert (quota["instances"]["limit"], quota["cpus"]["limit"]) == (1, 3.0)
        assert admin.delete(f"/api/v1/admin/quotas/{r.json()['id']}").status_code == 204
        # Admins cannot lock themselves out.
        me = users["admin"]
        r = admin.patch(f"/api/v1/admin/users/{me['id']}", json={"roles": ["STAFF"]})
        assert r.status_code == 409 and "ADMIN role from yourself" in r.text
    finally:
        admin.patch(f"/api/v1/admin/users/{bob['id']}", json={"groups": []})
        admin.delete(f"/api/v1/admin/quotas/{policy['id']}")
    assert quota_server.client("bob").get("/api/v1/quota").json()["instances"]["limit"] == 2


def test_admin_forms_validate_and_need_the_xsrf_token(quota_server: AtriumServer) -> None:
    admin = browser(quota_server, "admin")
    r = form(admin, "/admin/flavours", {"name": "bad", "cpus": "two", "memory_mb": "1024",
                                        "gpus": "0"})
    assert r.status_code == 400 and "cpus must be a number above 0, not &#39;two&#39;" in r.text
    r = admin.post("/admin/flavours", data={"name": "noxsrf", "cpus": "1",
                                            "memory_mb": "1024"})
    assert r.status_code == 403
    r = form(admin, "/admin/flavours", {"name": "formed", "cpus": "1.5", "memory_mb": "3072",
                                        "gpus": "0", "limit_roles": "STAFF",
                                        "limit_instruments": "LOKI, DREAM"})
    assert r.status_code == 302, r.text
    flavours = {f["name"]: f for f in
                quota_server.client("admin").get("/api/v1/admin/flavours").json()}
    assert "noxsrf" not in flavours and "bad" not in flavours
    made = flavours["formed"]
    assert (made["cpus"], made["memory_mb"], made["limits"]) == (
        1.5, 3072, {"roles": ["STAFF"], "instruments": ["DREAM", "LOKI"]})
    r = form(admin, "/admin/flavours", {"id": made["id"], "op": "delete"})
    assert r.status_code == 302
    # The catalogue page: a bad file is refused with its lines, nothing applied.
    r = form(admin, "/admin/catalog", {"catalog": "flavours:\n  - {name: x, memory_mb: -2}\n"})
    assert r.status_code == 400
    assert "line 2: flavours[1] (x): memory_mb must be a whole number above 0" in r.text
    # Usage as CSV from the admin page.
    r = admin.get("/admin/usage.csv")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert r.text.splitlines()[0].startswith("dimension,name,instances,instance_hours")


def test_catalog_api_dry_run_and_refusals(quota_server: AtriumServer) -> None:
    admin = quota_server.client("admin")
    before = admin.get("/api/v1/admin/catalog", params={"format": "yaml"}).text
    changed = before.replace("memory_mb: 8192", "memory_mb: 9216")
    assert changed != before
    r = admin.post("/api/v1/admin/catalog", params={"dry_run": "1"}, content=changed)
    assert r.status_code == 200, r.text
    assert r.json() == {"applied": False,
                        "changes": ["~ flavour medium: memory_mb: 8192 -> 9216"]}
    r = admin.post("/api/v1/admin/catalog", content="images:\n  - {name: X, protocols: [ftp]}\n")
    assert r.status_code == 400
    assert "line 2: images[1] (X): unknown protocol(s) 'ftp'" in r.json()["error"]["message"]
    assert admin.get("/api/v1/admin/catalog", params={"format": "yaml"}).text == before
    r = admin.post("/api/v1/admin/catalog", content=before)
    assert r.json() == {"applied": True, "changes": []}


def test_openapi_lists_the_admin_endpoints(quota_server: AtriumServer) -> None:
    doc = httpx.get(f"{quota_server.url}/api/v1/openapi.json").json()
    assert {"/quota", "/admin/images", "/admin/images/{id}", "/admin/flavours",
            "/admin/plans", "/admin/quotas", "/admin/users", "/admin/instances",
            "/admin/usage", "/admin/catalog"} <= set(doc["paths"])
    assert "QuotaPolicy" in doc["components"]["schemas"]
