"""Production mode: settings, JSON logs, /metrics on its own port (Prometheus' own parser),
/readyz, and the drain on SIGTERM - with a real `atrium serve` and a real local session."""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.logs import JsonFormatter
from orchestrator.settings import SettingsError, load_settings
from tests.conftest import AtriumServer, Databases, cleanup_sessions, free_port
from tests.sessions import launch, run_code, wait_for

METRICS_TOKEN = "scrape-" + "x" * 24


@pytest.mark.parametrize(("name", "value"), [
    ("ATRIUM_LOG_FORMAT", "xml"), ("ATRIUM_METRICS_PORT", "70000"),
    ("ATRIUM_METRICS_PORT", "nine"), ("ATRIUM_SHUTDOWN_GRACE", "-1"),
    ("ATRIUM_SHUTDOWN_DRAIN", "soon")])
def test_bad_production_settings_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        load_settings({name: value})


def test_production_settings_defaults_and_values(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(METRICS_TOKEN + "\n")
    defaults = load_settings({})
    assert (defaults.log_format, defaults.metrics_port, defaults.metrics_token) == ("text", 0, "")
    assert (defaults.shutdown_grace, defaults.shutdown_drain) == (25.0, 0.0)
    s = load_settings({"ATRIUM_LOG_FORMAT": "JSON", "ATRIUM_METRICS_PORT": "9090",
                       "ATRIUM_METRICS_TOKEN_FILE": str(token_file),
                       "ATRIUM_SHUTDOWN_GRACE": "40", "ATRIUM_SHUTDOWN_DRAIN": "5"})
    assert (s.log_format, s.metrics_port, s.metrics_token) == ("json", 9090, METRICS_TOKEN)
    assert (s.shutdown_grace, s.shutdown_drain) == (40.0, 5.0)
    assert METRICS_TOKEN not in repr(s)


def test_json_log_lines_carry_fields_extras_and_tracebacks() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("atrium.test", logging.ERROR, __file__, 1, "launch %s failed",
                                   ("abc",), sys.exc_info())
    record.uid = "abc"
    line = JsonFormatter().format(record)
    assert "\n" not in line
    data = json.loads(line)
    assert data["level"] == "ERROR" and data["logger"] == "atrium.test"
    assert data["message"] == "launch abc failed" and data["uid"] == "abc"
    assert data["time"].endswith("Z") and "ValueError: boom" in data["exception"]


@pytest.fixture(scope="module")
def prod(databases: Databases, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[AtriumServer]:
    # A database of its own: the instance gauge counts every instance in the database.
    srv = AtriumServer(databases.new(), tmp_path_factory.mktemp("prod"),
                       ATRIUM_METRICS_PORT=str(free_port()), ATRIUM_METRICS_TOKEN=METRICS_TOKEN,
                       ATRIUM_LOG_FORMAT="json", ATRIUM_SHUTDOWN_DRAIN="2",
                       ATRIUM_SHUTDOWN_GRACE="10")
    srv.cli("demo", "--seed-only")
    srv.start()
    yield srv
    srv.stop()
    cleanup_sessions(srv)


def scrape(srv: AtriumServer, token: str | None = METRICS_TOKEN) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(f"http://127.0.0.1:{srv.env['ATRIUM_METRICS_PORT']}/metrics",
                     headers=headers, timeout=10)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value, through prometheus_client's own parser."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_need_their_token_and_are_not_on_the_portal_port(prod: AtriumServer) -> None:
    assert scrape(prod, None).status_code == 401
    assert scrape(prod, "wrong").status_code == 401
    assert httpx.get(f"{prod.url}/metrics").status_code == 404
    assert scrape(prod).status_code == 200


async def test_a_launch_shows_in_counters_histogram_and_gauges(prod: AtriumServer) -> None:
    alice = prod.client("alice")
    uid = launch(alice, "metered")
    plan = alice.get(f"/api/v1/instances/{uid}").json()["plan"]
    label = f"{plan['image']['name']}/{plan['flavour']['name']}"
    wait_for(alice, uid, {"ACTIVE"})
    assert await run_code(prod.url, uid, prod.token("alice"), "6*7") == "42"
    r = scrape(prod)
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    got = samples(r.text)
    assert got[("atrium_launches_total", (("backend", "local"), ("plan", label)))] == 1
    assert got[("atrium_launch_duration_seconds_count", (("backend", "local"),))] == 1
    assert got[("atrium_launch_duration_seconds_sum", (("backend", "local"),))] > 0
    assert got[("atrium_instances", (("backend", "local"), ("status", "ACTIVE")))] == 1
    assert got[("atrium_proxy_requests_total", ())] >= 1
    assert got[("atrium_proxy_bytes_total", (("direction", "down"),))] > 0
    assert ("atrium_reconcile_pass_duration_seconds_count", ()) in got
    # A refused API token counts as a login failure.
    before = got.get(("atrium_login_failures_total", (("method", "token"),)), 0)
    assert httpx.get(f"{prod.url}/api/v1/instances", timeout=10,
                     headers={"Authorization": "Bearer nope"}).status_code == 401
    after = samples(scrape(prod).text)
    assert after[("atrium_login_failures_total", (("method", "token"),))] == before + 1
    deadline = time.monotonic() + 30  # the lease is taken on the scheduler's first tick
    while samples(scrape(prod).text)[("atrium_scheduler_leader", ())] != 1:
        assert time.monotonic() < deadline, "this single process never became the leader"
        time.sleep(0.2)
    assert alice.delete(f"/api/v1/instances/{uid}").status_code == 202
    wait_for(alice, uid, {"DELETED"})


def test_logs_are_json_lines(prod: AtriumServer) -> None:
    lines = [json.loads(line) for line in prod.log.read_text().splitlines()
             if line.startswith("{")]
    assert any(entry["message"].startswith("Atrium listening") for entry in lines)


def test_sigterm_drains_not_ready_then_exits(prod: AtriumServer) -> None:
    """Runs last in the module: it stops the server."""
    assert httpx.get(f"{prod.url}/readyz").json() == {"status": "ready"}
    assert prod.proc is not None
    prod.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 5
    while True:  # during the drain: still answering, not ready
        r = httpx.get(f"{prod.url}/readyz", timeout=2)
        if r.status_code == 503:
            break
        assert time.monotonic() < deadline, "/readyz never failed after SIGTERM"
    assert r.json()["reason"].startswith("draining")
    assert httpx.get(f"{prod.url}/healthz").status_code == 200  # alive while draining
    assert prod.proc.wait(timeout=15) == 0
    lines = [json.loads(line)["message"] for line in prod.log.read_text().splitlines()
             if line.startswith("{")]
    assert any(m.startswith("drained") for m in lines)


async def test_schema_check_behind_ahead_and_current(tmp_path: Path) -> None:
    """/readyz's schema rule: a known older revision is behind (not ready); the head, or a
    revision this code does not know (a newer release migrated), is not."""
    from orchestrator.db import Database
    from orchestrator.schema_check import SchemaCheck

    db = Database(f"sqlite+aiosqlite:///{tmp_path}/s.db")
    try:
        await db.upgrade("0001")
        check = SchemaCheck(db)
        assert "run `atrium db upgrade`" in await check.reason()
        await db.upgrade()
        assert await SchemaCheck(db).reason() == ""
        async with db.engine.begin() as conn:
            await conn.exec_driver_sql("DELETE FROM alembic_version")
            await conn.exec_driver_sql("INSERT INTO alembic_version VALUES ('f00dfeed')")
        assert await SchemaCheck(db).reason() == ""
    finally:
        await db.close()
