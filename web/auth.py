"""Who is calling: a signed session cookie (browsers) or a bearer API token (scripts)."""

from __future__ import annotations

from tornado.web import RequestHandler

from orchestrator.db import Database
from orchestrator.tokens import hash_token, user_id_for_token
from sharing.policy import Principal
from web.routes import PrincipalCache, TtlCache

SESSION_COOKIE = "atrium_session"
SESSION_DAYS = 7


def bearer_token(handler: RequestHandler) -> str | None:
    scheme, _, value = handler.request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() in ("bearer", "token") and value.strip():
        return value.strip()
    return None


class Authenticator:
    """Resolves a request to a :class:`Principal` from memory in the common case."""

    def __init__(self, db: Database, principals: PrincipalCache, token_ttl: float = 10.0) -> None:
        self.db = db
        self.principals = principals
        self.tokens: TtlCache[str, int | None] = TtlCache(self._token_owner, token_ttl)

    async def _token_owner(self, digest: str) -> int | None:
        async with self.db.session() as s:
            return await user_id_for_token(s, digest)

    async def principal(self, handler: RequestHandler) -> Principal | None:
        token = bearer_token(handler)
        if token is not None:
            user_id = await self.tokens.get(hash_token(token))
        else:
            raw = handler.get_signed_cookie(SESSION_COOKIE, max_age_days=SESSION_DAYS)
            user_id = int(raw) if raw and raw.isdigit() else None
        if user_id is None:
            return None
        return await self.principals.get(user_id)

    def revoke(self, token: str) -> None:
        self.tokens.invalidate(hash_token(token))
