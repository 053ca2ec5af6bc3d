"""Personal API tokens: the /tokens page and /api/v1/tokens.

A token is shown once, when it is created, and stored as its SHA-256 only. Revoking one
drops it from this process's cache at once, so the next request with it is refused.
Creating a token needs a browser login (or the CLI): a leaked token cannot mint others.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import tornado.web
from sqlalchemy import select

from orchestrator.announce import Change
from orchestrator.errors import RequestError
from orchestrator.models import ApiToken
from orchestrator.tokens import (
    create_token,
    hash_token,
    revoke_token,
    token_state,
    tokens_of,
)
from web.auth import bearer_token
from web.base import ApiHandler, BaseHandler

NAME_MAX = 100
LIFETIME_CHOICES = (7, 30, 90, 365)  # the page's menu, cut at the longest allowed


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() + "Z" if value is not None else None


def token_json(row: ApiToken) -> dict[str, Any]:
    """A token as its owner sees it later: never the token itself."""
    return {"id": row.id, "name": row.name, "prefix": row.prefix, "state": token_state(row),
            "created_at": _iso(row.created_at), "expires_at": _iso(row.expires_at),
            "revoked_at": _iso(row.revoked_at)}


def parse_request(name: Any, days: Any, default_days: int,
                  max_days: int) -> tuple[str, dt.timedelta]:
    """Validate a token's name (1-100 characters) and lifetime in days: 1..``max_days``,
    ``default_days`` when not given. Every token expires."""
    if not isinstance(name, str) or not name.strip():
        raise RequestError("give the token a name (what will use it?)")
    if len(name.strip()) > NAME_MAX:
        raise RequestError(f"the token name is longer than {NAME_MAX} characters")
    if days in (None, ""):
        return name.strip(), dt.timedelta(days=default_days)
    try:
        value = int(days)
    except (TypeError, ValueError):
        raise RequestError(f"expires_in_days={days!r}: expected a whole number of days") \
            from None
    if not 1 <= value <= max_days:
        raise RequestError(f"expires_in_days must be between 1 and {max_days} "
                           "(ATRIUM_TOKEN_MAX_DAYS)")
    return name.strip(), dt.timedelta(days=value)


class TokensPage(BaseHandler):
    @tornado.web.authenticated
    async def get(self) -> None:
        await self._render()

    async def _render(self, new_token: str = "", error: str = "") -> None:
        assert self.principal is not None
        async with self.portal.db.session() as s:
            rows = await tokens_of(s, self.principal.user_id)
        self.set_header("Cache-Control", "no-store")
        settings = self.portal.settings
        choices = sorted({d for d in LIFETIME_CHOICES if d <= settings.token_max_days}
                         | {settings.token_default_days})
        self.render_page("tokens.html", tokens=rows, state=token_state, new_token=new_token,
                         error=error, lifetimes=choices,
                         default_days=settings.token_default_days)

    @tornado.web.authenticated
    async def post(self) -> None:
        who = self.principal
        assert who is not None
        action = self.get_argument("action", "")
        if action == "revoke":
            try:
                token_id = int(self.get_argument("token_id", ""))
            except ValueError:
                raise RequestError("no such token", 404) from None
            async with self.portal.db.session() as s:
                digest = await revoke_token(s, who.user_id, token_id)
                if digest is None:
                    raise RequestError("no such token", 404)
                await self.portal.commit(s, Change("token", digest))
            self.redirect("/tokens")
            return
        if action != "create":
            raise RequestError(f"unknown action {action!r}")
        try:
            name, lifetime = parse_request(self.get_argument("name", ""),
                                           self.get_argument("expires_in_days", ""),
                                           *self._limits())
        except RequestError as err:
            self.set_status(err.status)
            await self._render(error=err.message)
            return
        async with self.portal.db.session() as s:
            token = await create_token(s, await self.load_user(s), name, lifetime)
            await s.commit()
        self.set_status(201)
        await self._render(new_token=token)


    def _limits(self) -> tuple[int, int]:
        return self.portal.settings.token_default_days, self.portal.settings.token_max_days


class TokensApi(ApiHandler):
    async def get(self) -> None:
        who = self.require_user()
        async with self.portal.db.session() as s:
            self.send_list([token_json(r) for r in await tokens_of(s, who.user_id)])

    async def post(self) -> None:
        self.require_user()
        if bearer_token(self) is not None:
            raise RequestError("create tokens from a browser login (the tokens page) or with "
                               "`atrium token create`, not with another token", 403)
        body = self.json_body()
        settings = self.portal.settings
        name, lifetime = parse_request(body.get("name"), body.get("expires_in_days"),
                                       settings.token_default_days, settings.token_max_days)
        async with self.portal.db.session() as s:
            token = await create_token(s, await self.load_user(s), name, lifetime)
            await s.commit()
            row = await s.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(token)))
            assert row is not None
            self.set_header("Cache-Control", "no-store")
            self.set_header("Location", f"/api/v1/tokens/{row.id}")
            self.send({**token_json(row), "token": token}, 201)


class TokenApi(ApiHandler):
    async def delete(self, token_id: str) -> None:
        who = self.require_user()
        async with self.portal.db.session() as s:
            digest = await revoke_token(s, who.user_id, int(token_id))
            if digest is None:
                raise RequestError("no such token", 404)
            await self.portal.commit(s, Change("token", digest))
            row = await s.get(ApiToken, int(token_id))
            assert row is not None
            self.send(token_json(row))


TOKEN_ROUTES: list[tuple[str, type]] = [
    (r"/tokens", TokensPage),
    (r"/api/v1/tokens", TokensApi),
    (r"/api/v1/tokens/([0-9]{1,12})", TokenApi),
]
