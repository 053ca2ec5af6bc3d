"""The bounds' pure parts: settings parsing, per-instance slots, per-user leases, the 413."""

from __future__ import annotations

import asyncio
import json

import pytest

from orchestrator.settings import SettingsError, load_settings
from orchestrator.settings_limits import Limits
from web.bodylimit import declared_length, too_large_response
from web.limits import InstanceSlots, UserConnections


def test_limits_default_and_parse() -> None:
    assert load_settings({}).limits == Limits()
    limits = load_settings({"ATRIUM_MAX_BODY": "2048", "ATRIUM_BODY_TIMEOUT": "2.5",
                            "ATRIUM_USER_CONNECTIONS": "7"}).limits
    assert (limits.max_body, limits.body_timeout, limits.user_connections) == (2048, 2.5, 7)


@pytest.mark.parametrize("env, words", [
    ({"ATRIUM_MAX_BODY": "lots"}, "ATRIUM_MAX_BODY='lots': expected a number"),
    ({"ATRIUM_MAX_BODY": "1.5"}, "ATRIUM_MAX_BODY='1.5': expected a whole number"),
    ({"ATRIUM_USER_CONNECTIONS": "0"}, "ATRIUM_USER_CONNECTIONS='0': must be at least 1"),
    ({"ATRIUM_MAX_BODY": "4096", "ATRIUM_LAB_MAX_BODY": "1024"}, "ATRIUM_LAB_MAX_BODY"),
])
def test_bad_limits_name_the_variable(env: dict[str, str], words: str) -> None:
    with pytest.raises(SettingsError, match=words.replace("(", r"\(")):
        load_settings(env)


async def test_instance_slots_queue_in_order_and_refuse_beyond_the_queue() -> None:
    slots = InstanceSlots(size=2, queue=1)
    tickets = [slots.enter("a") for _ in range(3)]
    assert all(tickets) and slots.enter("a") is None  # 2 slots + 1 waiting
    assert slots.enter("b") is not None  # another instance is not affected
    order: list[int] = []

    async def use(n: int, release: asyncio.Event) -> None:
        ticket = tickets[n]
        assert ticket is not None
        async with ticket:
            order.append(n)
            await release.wait()

    events = [asyncio.Event() for _ in range(3)]
    tasks = [asyncio.create_task(use(n, events[n])) for n in range(3)]
    while len(order) < 2:
        await asyncio.sleep(0)
    assert order == [0, 1]  # the third waits
    events[0].set()
    while len(order) < 3:
        await asyncio.sleep(0)
    assert order == [0, 1, 2]
    for event in events:
        event.set()
    await asyncio.gather(*tasks)
    assert slots.in_use("a") == 0 and "a" not in slots._gates


async def test_a_ticket_abandoned_while_waiting_gives_its_place_back() -> None:
    slots = InstanceSlots(size=1, queue=1)
    held, waiting = slots.enter("a"), slots.enter("a")
    assert held is not None and waiting is not None
    await held.__aenter__()
    task = asyncio.create_task(waiting.__aenter__())
    await asyncio.sleep(0)
    task.cancel()  # the client went away while queued
    with pytest.raises(asyncio.CancelledError):
        await task
    waiting.close()
    waiting.close()  # idempotent
    assert slots.in_use("a") == 1
    held.close()
    assert slots.in_use("a") == 0
    again = slots.enter("a")
    assert again is not None
    async with again:  # the slot is free: no wait
        pass


def test_user_leases_cap_per_user_and_release_once() -> None:
    users = UserConnections(cap=2)
    first, second = users.acquire(1), users.acquire(1)
    assert first and second and users.acquire(1) is None
    assert users.acquire(2) is not None
    first.release()
    first.release()  # idempotent: frees one place, not two
    assert users.acquire(1) is not None and users.acquire(1) is None


def test_the_413_answer_is_json_and_closes() -> None:
    raw = too_large_response(1024)
    head, body = raw.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 413 ") and b"Connection: close" in head
    assert f"Content-Length: {len(body)}".encode() in head
    assert json.loads(body) == {"error": {"status": 413, "message":
                                          "the request body is too large (at most 1024 bytes)"}}


@pytest.mark.parametrize("value, length", [("10", 10), (" 7 ", 7), ("-1", None),
                                           ("1e9", None), (None, None)])
def test_declared_length(value: str | None, length: int | None) -> None:
    from tornado.httputil import HTTPHeaders

    headers = HTTPHeaders({"Content-Length": value} if value is not None else {})
    assert declared_length(headers) == length
