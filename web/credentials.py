"""What authenticated an open connection, so that revoking it reaches the connection.

A long-lived connection (a lab or desktop WebSocket, a streaming HTTP request) keeps the
:class:`Credential` it was opened with: the user, and the login session or API token.
Revalidation resolves the credential again (:func:`resolve`), through the same caches as
a new request, so logout, revocation of the session or token, and changed user roles
reach it as soon as those caches are dropped. Other ways of authenticating (e.g. a
session host's own cookie bound to a login session) map onto the same keys.
"""

from __future__ import annotations

from dataclasses import dataclass

from tornado.web import RequestHandler

from orchestrator.tokens import hash_token
from sharing.policy import Principal
from web.auth import Authenticator, bearer_token


@dataclass(frozen=True)
class Credential:
    """Revocation keys of a connection: its user and login session or API token digest."""

    user_id: int
    session: str = ""  # SHA-256 of the login session id (orchestrator/logins.py)
    token: str = ""  # SHA-256 of the API token (orchestrator/tokens.py)


def credential_of(auth: Authenticator, handler: RequestHandler,
                  principal: Principal | None) -> Credential | None:
    """The credential the request was authenticated with (None for anonymous requests).

    A handler that authenticated otherwise (e.g. a session host's cookie) sets its own
    ``credential`` attribute, naming the login session that cookie is bound to.
    """
    if principal is None:
        return None
    own = getattr(handler, "credential", None)
    if isinstance(own, Credential):
        return own
    token = bearer_token(handler)
    if token is not None:
        return Credential(principal.user_id, token=hash_token(token))
    return Credential(principal.user_id, session=auth.session_digest(handler) or "")


async def resolve(auth: Authenticator, credential: Credential) -> Principal | None:
    """Who the credential stands for now: None once it was revoked or expired."""
    if credential.token:
        user_id = await auth.tokens.get(credential.token)
    elif credential.session:
        user_id = await auth.session_user(credential.session)
    else:  # known only by its user: user-level revocation (roles, account) still applies
        user_id = credential.user_id
    if user_id != credential.user_id:
        return None
    return await auth.principals.get(user_id)
