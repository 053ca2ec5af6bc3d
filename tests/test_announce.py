"""Announcements and revocation, fast tier: payloads, the revocation rules, presence in
memory, the identity provider's rotating token file (no services)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.announce import EVERYTHING, PAYLOAD_MAX, Change, asyncpg_dsn, decode, encode
from orchestrator.models import MemberRole
from sharing.members import read_secrets
from sharing.policy import InstanceAccess, Principal
from web.credentials import Credential
from web.presence import Presence
from web.routes import Route

KINDS = st.sampled_from(["instance", "user", "session", "token", "presence", "catalogue"])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(KINDS, st.text(max_size=80)), max_size=300))
def test_payloads_round_trip_and_stay_under_the_notify_limit(items: list) -> None:
    changes = [Change(k, v) for k, v in items]
    payloads = encode(changes, "me")
    assert all(len(p.encode()) < 8000 for p in payloads)
    decoded = []
    for payload in payloads:
        origin, part = decode(payload)
        assert origin == "me"
        decoded += part
    assert decoded == changes


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200).map(lambda b: b.hex()),
                 st.recursive(st.none() | st.integers() | st.text(max_size=10),
                              lambda c: st.lists(c, max_size=4)
                              | st.dictionaries(st.text(max_size=3), c, max_size=4))
                 .map(json.dumps)))
def test_hostile_payloads_never_raise_and_carry_only_known_kinds(payload: str) -> None:
    _, changes = decode(payload)
    assert all(c.kind in {"instance", "user", "session", "token", "presence", "catalogue",
                          "everything"} for c in changes)


def test_an_unreadable_payload_drops_every_cache_and_unknown_kinds_are_ignored() -> None:
    for unreadable in ("{not json", '{"c": 5}', "[]", '"text"', '{"c": {"a": 1}}'):
        assert decode(unreadable)[1] in ([EVERYTHING], []), unreadable
    assert decode("{not json")[1] == [EVERYTHING]
    assert decode('{"c": [[["token"], "x"], [1, 2], ["user"]]}')[1] == []
    assert decode(json.dumps({"o": "x", "c": [["drop-table", "users"], ["token", "ab"]]}))[1] \
        == [Change("token", "ab")]
    big = [Change("session", "f" * 64)] * 400
    assert len(encode(big, "o")) > 1 and all(len(p) <= PAYLOAD_MAX + 100
                                             for p in encode(big, "o"))


def test_asyncpg_gets_a_plain_libpq_url() -> None:
    assert asyncpg_dsn("postgresql+asyncpg://u:p%40ss@h:5432/db") == \
        "postgresql://u:p%40ss@h:5432/db"


@pytest.mark.parametrize("before, after, rotate", [
    (MemberRole.USER, None, True), (MemberRole.USER, MemberRole.GUEST, True),
    (MemberRole.USER, MemberRole.USER, False), (MemberRole.GUEST, None, False),
    (MemberRole.GUEST, MemberRole.USER, False), (MemberRole.SUPPORT, None, False)])
def test_secrets_rotate_when_someone_who_could_read_them_loses_access(
        before: MemberRole, after: MemberRole | None, rotate: bool) -> None:
    assert read_secrets(before, after) is rotate


# --- presence in memory ---------------------------------------------------------------


class FakeConnection:
    def __init__(self) -> None:
        self.principal: Any = None
        self.verdicts: list[tuple[Any, bool]] = []

    def revalidate(self, route: Route | None, owner_present: bool) -> None:
        self.verdicts.append((self.principal, owner_present))


async def test_revalidation_resolves_each_connection_by_its_own_credential() -> None:
    presence = Presence()
    route = Route(access=InstanceAccess("u1", owner_id=1, members={2: MemberRole.USER}),
                  status=SimpleNamespace())  # type: ignore[arg-type]
    live = {"tok-live"}

    async def route_of(uid: str) -> Route | None:
        return route if uid == "u1" else None

    async def resolve(c: Credential) -> Principal | None:
        return Principal(c.user_id, "bob") if c.token in live else None

    presence._route_of, presence._resolve = route_of, resolve
    by_token, by_other = FakeConnection(), FakeConnection()
    presence.opened("u1", by_token, Credential(2, token="tok-live"), "lab")
    presence.opened("u1", by_other, Credential(2, token="tok-other"), "http")
    presence.opened("u1", FakeConnection(), None, "lab")  # anonymous: never registered
    assert presence.connections("u1") == 2 and presence.users() == {2: 2}
    assert presence.connected("u1", 2) and not presence.connected("u1", 1)
    await presence.revalidate_where(lambda c: c.token == "tok-live")
    assert by_token.verdicts == [(Principal(2, "bob"), False)] and by_other.verdicts == []
    await presence.revalidate("u1")
    assert by_other.verdicts == [(None, False)]  # its token is unknown: it will close
    presence.seen("u1", 1)  # the owner made a request: present
    await presence.revalidate("u1")
    assert by_token.verdicts[-1] == (Principal(2, "bob"), True)
    presence.closed("u1", by_token)
    presence.closed("u1", by_other)
    presence.closed("u1", by_other)  # twice is harmless
    assert presence.connections("u1") == 0


# --- the identity provider's token file ---------------------------------------------------


def test_identity_provider_follows_the_token_file_without_restarting(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from images.jupyter_identity import AtriumIdentityProvider

    token_file = tmp_path / "jupyter-token"
    token_file.write_text("old\n")
    monkeypatch.setenv("ATRIUM_SESSION_TOKEN_FILE", str(token_file))
    monkeypatch.setenv("ATRIUM_SESSION_TOKEN", "from-env")
    provider = AtriumIdentityProvider()
    assert "ATRIUM_SESSION_TOKEN" not in os.environ  # kernels do not inherit it

    def accepts(token: str) -> bool:
        handler = SimpleNamespace(request=SimpleNamespace(
            headers={"Authorization": f"token {token}"}))
        return provider.get_user(handler) is not None

    assert accepts("old") and not accepts("from-env") and not accepts("")
    replacement = tmp_path / "next"
    replacement.write_text("new\nold\n")
    replacement.replace(token_file)  # as the backend rotates: new, and old a moment longer
    assert accepts("new") and accepts("old")
    replacement.write_text("new\n")
    replacement.replace(token_file)
    assert accepts("new") and not accepts("old")
    token_file.unlink()
    assert not accepts("new")  # no file, nobody
