"""Helpers for the lifetime tests: a real SMTP server, a scripted clock, database access."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from tests.conftest import free_port


@dataclass
class Mail:
    to: list[str]
    subject: str
    body: str


@dataclass
class SmtpSink:
    """A real SMTP server (aiosmtpd, in its own thread) keeping what it receives."""

    port: int
    messages: list[Mail] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        body = msg.get_body(("plain",))
        with self.lock:
            self.messages.append(Mail(list(envelope.rcpt_tos), str(msg["Subject"]),
                                      body.get_content() if body else ""))
        return "250 Message accepted for delivery"

    def to(self, address: str) -> list[Mail]:
        with self.lock:
            return [m for m in self.messages if address in m.to]

    def wait(self, predicate: Callable[[list[Mail]], bool], timeout: float = 30) -> list[Mail]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                snapshot = list(self.messages)
            if predicate(snapshot):
                return snapshot
            time.sleep(0.1)
        raise AssertionError(f"no such email within {timeout} s; got "
                             f"{[(m.to, m.subject) for m in self.messages]}")


@contextmanager
def smtp_server() -> Iterator[SmtpSink]:
    sink = SmtpSink(free_port())
    controller = Controller(sink, hostname="127.0.0.1", port=sink.port)
    controller.start()
    try:
        yield sink
    finally:
        controller.stop()


@pytest.fixture
def smtp() -> Iterator[SmtpSink]:
    with smtp_server() as sink:
        yield sink


def lifetime_env(sink: SmtpSink, **extra: str) -> dict[str, str]:
    """Server settings for the lifetime tests: fast jobs, mail to ``sink``."""
    return {"ATRIUM_SMTP_HOST": "127.0.0.1", "ATRIUM_SMTP_PORT": str(sink.port),
            "ATRIUM_LIFETIME_INTERVAL": "1", "ATRIUM_ACTIVITY_FLUSH_INTERVAL": "0.5",
            "ATRIUM_RECONCILE_INTERVAL": "1", "ATRIUM_LEADER_LEASE": "3", **extra}


class ScriptedClock:
    """The injectable clock: returns ``now``, which the test moves."""

    def __init__(self, start: dt.datetime) -> None:
        self.start = start
        self.now = start

    def __call__(self) -> dt.datetime:
        return self.now

    def at(self, **delta: float) -> dt.datetime:
        """Move to ``start + delta`` (days=..., hours=..., minutes=...)."""
        self.now = self.start + dt.timedelta(**delta)
        return self.now

    def epoch(self) -> float:
        return self.now.replace(tzinfo=dt.UTC).timestamp()


def sync_engine(database_url: str) -> Engine:
    url = database_url.replace("postgresql://", "postgresql+psycopg://", 1) \
        if database_url.startswith("postgresql://") else database_url
    return create_engine(url)


def query(database_url: str, sql: str, **params: Any) -> list[Any]:
    """Rows of ``sql`` (a quick look at the database behind Atrium's back)."""
    engine = sync_engine(database_url)
    try:
        with engine.begin() as conn:
            return list(conn.execute(text(sql), params).all())
    finally:
        engine.dispose()


def execute(database_url: str, sql: str, **params: Any) -> None:
    """Run one writing statement behind Atrium's back (e.g. to move a recorded time)."""
    engine = sync_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(text(sql), params)
    finally:
        engine.dispose()
