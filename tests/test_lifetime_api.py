"""Lifetime through a real portal: activity recorded by the proxy and flushed, shortening,
extension requests and decisions (API, instance page, /admin/lifetime), the banner, and
the emails the scheduled jobs send (to a real SMTP server)."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import AtriumServer, Databases, cleanup_sessions
from tests.lifetime_helpers import SmtpSink, lifetime_env, query, smtp_server
from tests.sessions import launch, run_code, wait_for
from tests.sweeps import wait_for_local_runs


@pytest.fixture(scope="module")
def sink() -> Iterator[SmtpSink]:
    with smtp_server() as s:
        yield s


@pytest.fixture(scope="module")
def srv(databases: Databases, tmp_path_factory: pytest.TempPathFactory, sink: SmtpSink
        ) -> Iterator[AtriumServer]:
    server = AtriumServer(databases.new(), tmp_path_factory.mktemp("lifetime"),
                          **lifetime_env(sink))
    server.cli("demo", "--seed-only")
    server.start()
    yield server
    server.stop()
    cleanup_sessions(server)


@pytest.fixture(scope="module")
def alice(srv: AtriumServer) -> httpx.Client:
    return srv.client("alice")


@pytest.fixture(scope="module")
def admin(srv: AtriumServer) -> httpx.Client:
    return srv.client("admin")


@pytest.fixture(scope="module")
def running(srv: AtriumServer, alice: httpx.Client) -> str:
    uid = launch(alice, "lifetime")
    wait_for(alice, uid, {"ACTIVE"})
    return uid


def _at(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.removesuffix("Z"))


def _last_seen(alice: httpx.Client, uid: str) -> str | None:
    value: str | None = alice.get(f"/api/v1/instances/{uid}/lifetime").json()["last_seen_at"]
    return value


def _wait_last_seen(alice: httpx.Client, uid: str, after: str | None) -> str:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        seen = _last_seen(alice, uid)
        if seen is not None and (after is None or seen > after):
            return seen
        time.sleep(0.2)
    raise AssertionError("the activity was not flushed")


async def test_activity_through_the_proxy_is_flushed(srv: AtriumServer, alice: httpx.Client,
                                                     running: str) -> None:
    uid = running
    assert _last_seen(alice, uid) is None
    # JupyterLab's own background polls are not use.
    for path in ("api/status", "api/kernels", "api/sessions"):
        assert alice.get(f"/instances/{uid}/lab/{path}").status_code == 200
    wait_for_local_runs(srv, "activity-flush", whole=2)  # flushes since: nothing to write
    assert _last_seen(alice, uid) is None
    # Starting a kernel is.
    r = alice.post(f"/instances/{uid}/lab/api/kernels", json={"name": "python3"})
    assert r.status_code == 201
    first = _wait_last_seen(alice, uid, None)
    before = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    assert abs((_at(first) - before).total_seconds()) < 15
    # So is a message on a kernel's WebSocket (running code).
    assert await run_code(srv.url, uid, srv.token("alice"), "1+1") == "2"
    second = _wait_last_seen(alice, uid, first)
    # And opening JupyterLab's page (a navigation).
    assert alice.get(f"/instances/{uid}/lab/lab", headers={"Accept": "text/html"}
                     ).status_code == 200
    _wait_last_seen(alice, uid, second)


def test_lifetime_api_and_pages(srv: AtriumServer, alice: httpx.Client, admin: httpx.Client,
                                running: str, sink: SmtpSink) -> None:
    uid = running
    bob = srv.client("bob")
    life = alice.get(f"/api/v1/instances/{uid}/lifetime").json()
    end = _at(life["termination_date"])
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    assert dt.timedelta(days=13.9) < end - now <= dt.timedelta(days=14)
    assert {d["kind"] for d in life["deadlines"]} == {"lifetime", "inactivity"}
    assert life["warning"] is None
    assert bob.get(f"/api/v1/instances/{uid}/lifetime").status_code == 404

    # Shortening: earlier, future dates only; owners only.
    url = f"/api/v1/instances/{uid}/lifetime"
    later = (end + dt.timedelta(days=1)).isoformat() + "Z"
    r = alice.patch(url, json={"termination_date": later})
    assert r.status_code == 400 and "before the current one" in r.json()["error"]["message"]
    r = alice.patch(url, json={"termination_date": "2001-01-01T00:00:00Z"})
    assert r.status_code == 400 and "future" in r.json()["error"]["message"]
    assert alice.patch(url, json={"termination_date": "soon"}).status_code == 400
    assert bob.patch(url, json={"termination_date": "2030-01-01T00:00"}).status_code == 404
    ten_days = (now + dt.timedelta(days=10)).replace(microsecond=0)
    r = alice.patch(url, json={"termination_date": ten_days.isoformat() + "Z"})
    assert r.status_code == 200, r.text
    assert r.json()["termination_date"] == ten_days.isoformat() + "Z"
    assert alice.get(f"/api/v1/instances/{uid}").json()["termination_date"] == \
        ten_days.isoformat() + "Z"

    # Extension requests: validated, one pending at a time, owners only.
    ext = f"/api/v1/instances/{uid}/extensions"
    for body, words in [({"days": 0, "reason": "x"}, "above 0"),
                        ({"days": "many", "reason": "x"}, "number"),
                        ({"days": 1000, "reason": "x"}, "at most 90"),
                        ({"days": 3}, "reason")]:
        r = alice.post(ext, json=body)
        assert r.status_code == 400 and words in r.json()["error"]["message"], (body, r.text)
    assert bob.post(ext, json={"days": 3, "reason": "mine"}).status_code == 404
    r = alice.post(ext, json={"days": 3, "reason": "the fit does not converge"})
    assert r.status_code == 201, r.text
    request = r.json()
    assert request["status"] == "PENDING" and request["requester"] == "alice"
    assert alice.post(ext, json={"days": 2, "reason": "again"}).status_code == 409
    sink.wait(lambda ms: any("admin@example.org" in m.to and "Extension requested" in m.subject
                             for m in ms))

    # Admins see it (API and /admin/lifetime); others may not look.
    pending = admin.get("/api/v1/lifetime/extensions", params={"status": "PENDING"}).json()
    assert [p["id"] for p in pending] == [request["id"]]
    assert alice.get("/api/v1/lifetime/extensions").status_code == 403
    page = admin.get("/admin/lifetime")
    assert page.status_code == 200 and "the fit does not converge" in page.text
    assert alice.get("/admin/lifetime").status_code == 403
    mine = alice.get(f"/instances/{uid}")
    assert 'id="lifetime"' in mine.text and "waiting for an admin" in mine.text

    # Refused through the API: the owner is emailed; a second decision is refused.
    decide = f"/api/v1/lifetime/extensions/{request['id']}"
    assert alice.post(decide, json={"decision": "accept"}).status_code == 403
    r = admin.post(decide, json={"decision": "refuse", "comment": "use the cluster"})
    assert r.status_code == 200 and r.json()["status"] == "REFUSED"
    assert admin.post(decide, json={"decision": "accept"}).status_code == 409
    sink.wait(lambda ms: any("alice@example.org" in m.to and "Extension refused" in m.subject
                             and "use the cluster" in m.body for m in ms))

    # Accepted through the admin page's form: the date moves by the days granted.
    r = alice.post(ext, json={"days": 5, "reason": "one more dataset"})
    assert r.status_code == 201
    admin.get("/admin/lifetime")  # the form's XSRF cookie (kept by the client)
    xsrf = admin.cookies.get("_xsrf")
    assert xsrf
    r = admin.post("/admin/lifetime", data={"_xsrf": xsrf, "request_id": str(r.json()["id"]),
                                             "decision": "accept", "days": "2"})
    assert r.status_code == 302 and "accepted" in r.headers["location"]
    life = alice.get(url).json()
    assert life["termination_date"] == (ten_days + dt.timedelta(days=2)).isoformat() + "Z"
    assert life["extension_requests"][0]["status"] == "ACCEPTED"
    assert life["extension_requests"][0]["granted_days"] == 2

    # Brought within the warning window: banner (API and page) and a warning email.
    assert alice.get("/api/v1/lifetime/warnings").json() == []
    soon = (now + dt.timedelta(hours=30)).replace(microsecond=0)
    assert alice.patch(url, json={"termination_date": soon.isoformat()}).status_code == 200
    [warning] = alice.get("/api/v1/lifetime/warnings").json()
    assert warning["uid"] == uid and warning["warning"]["kind"] == "lifetime"
    assert "data-lifetime-banner" in alice.get(f"/instances/{uid}").text
    sink.wait(lambda ms: any("alice@example.org" in m.to and "will be deleted on" in m.subject
                             and soon.strftime("%Y-%m-%d %H:%M") in m.subject for m in ms))
    # The instance page's form: refusals come back as a message, changes as a notice.
    browser = srv.client("alice")  # a fresh cookie jar: one XSRF cookie
    browser.get(f"/instances/{uid}")
    form = {"_xsrf": browser.cookies.get("_xsrf") or "", "action": "shorten"}
    r = browser.post(f"/instances/{uid}/lifetime",
                     data={**form, "termination_date": (soon + dt.timedelta(days=1)).isoformat()})
    assert r.status_code == 302 and "lifetime_error" in r.headers["location"]
    assert "before the current one" in browser.get(r.headers["location"]).text
    earlier = (soon - dt.timedelta(hours=1)).replace(second=0)
    r = browser.post(f"/instances/{uid}/lifetime",
                     data={**form, "termination_date": earlier.strftime("%Y-%m-%dT%H:%M")})
    assert r.status_code == 302 and "lifetime_notice" in r.headers["location"]
    assert alice.get(url).json()["termination_date"] == earlier.isoformat() + "Z"
    upcoming = admin.get("/api/v1/lifetime/upcoming", params={"days": 2}).json()
    assert uid in [u["uid"] for u in upcoming]
    kinds = [e["kind"] for e in admin.get(f"/api/v1/instances/{uid}/events").json()]
    for kind in ("lifetime-shortened", "extension-requested", "extension-refused",
                 "extension-accepted", "warn-lifetime"):
        assert kind in kinds
    # The scheduled jobs ran here, persisted in the database.
    jobs = {row[0] for row in query(srv.env["ATRIUM_DATABASE_URL"],
                                    "SELECT id FROM apscheduler_jobs")}
    assert jobs == {"reconcile-sweep", "lifetime-warn", "lifetime-expire"}
    doc = httpx.get(f"{srv.url}/api/v1/openapi.json").json()
    assert "/instances/{uid}/extensions" in doc["paths"]
