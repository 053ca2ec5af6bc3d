"""Login sessions, pending OpenID Connect logins and provider identities (database side).

The web layer (web/auth.py, web/oidc.py) decides; this module stores. Every function takes
an open :class:`AsyncSession` and leaves committing to the caller unless it says otherwise.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from orchestrator.models import (
    LoginSession,
    PendingLogin,
    Role,
    User,
    UserGroup,
    UserIdentity,
    UserRole,
    utcnow,
)

PENDING_TTL = dt.timedelta(minutes=10)  # how long a user may take at the provider


def hash_session_id(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def _epoch(value: dt.datetime | None) -> float:
    return value.replace(tzinfo=dt.UTC).timestamp() if value is not None else 0.0


@dataclass(frozen=True)
class SessionSnapshot:
    """What deciding on a request needs, cached in memory (times are epoch seconds)."""

    digest: str
    user_id: int
    method: str
    expires_at: float
    last_seen_at: float
    provider_checked_at: float
    revoked: bool
    has_refresh_token: bool


async def create_session(session: AsyncSession, user_id: int, method: str,
                         lifetime: dt.timedelta, *, provider_sid: str = "",
                         id_token: str = "", refresh_token: str = "",
                         user_agent: str = "") -> str:
    """Record a new login and return its id in clear (it goes into the cookie only).

    Logins that ended more than a day ago are purged on the way (the table stays small).
    """
    session_id = secrets.token_urlsafe(32)
    now = utcnow()
    await session.execute(delete(LoginSession).where(or_(
        LoginSession.expires_at < now - dt.timedelta(days=1),
        LoginSession.revoked_at < now - dt.timedelta(days=1))))
    session.add(LoginSession(
        id_hash=hash_session_id(session_id), user_id=user_id, method=method, created_at=now,
        last_seen_at=now, expires_at=now + lifetime, provider_sid=provider_sid[:255],
        id_token=id_token, refresh_token=refresh_token,
        provider_checked_at=now if method == "oidc" else None, user_agent=user_agent[:255]))
    await session.flush()
    return session_id


async def snapshot(session: AsyncSession, digest: str) -> SessionSnapshot | None:
    row = await session.get(LoginSession, digest)
    if row is None:
        return None
    return SessionSnapshot(
        digest=digest, user_id=row.user_id, method=row.method,
        expires_at=_epoch(row.expires_at), last_seen_at=_epoch(row.last_seen_at),
        provider_checked_at=_epoch(row.provider_checked_at or row.created_at),
        revoked=row.revoked_at is not None, has_refresh_token=bool(row.refresh_token))


async def revoke(session: AsyncSession, digest: str) -> LoginSession | None:
    """End one login; returns its row (for the ID token hint) or None if unknown."""
    row = await session.get(LoginSession, digest)
    if row is not None and row.revoked_at is None:
        row.revoked_at = utcnow()
    return row


async def revoke_by_provider_sid(session: AsyncSession, sid: str) -> list[str]:
    """End every login of one provider session; returns their digests."""
    rows = (await session.scalars(select(LoginSession).where(
        LoginSession.provider_sid == sid, LoginSession.revoked_at.is_(None)))).all()
    for row in rows:
        row.revoked_at = utcnow()
    return [r.id_hash for r in rows]


async def revoke_by_subject(session: AsyncSession, issuer: str, subject: str) -> list[str]:
    """End every OpenID Connect login of the user the provider knows as ``subject``."""
    user_id = await session.scalar(select(UserIdentity.user_id).where(
        UserIdentity.issuer == issuer, UserIdentity.subject == subject))
    if user_id is None:
        return []
    rows = (await session.scalars(select(LoginSession).where(
        LoginSession.user_id == user_id, LoginSession.method == "oidc",
        LoginSession.revoked_at.is_(None)))).all()
    for row in rows:
        row.revoked_at = utcnow()
    return [r.id_hash for r in rows]


async def touch(session: AsyncSession, digest: str, when: dt.datetime) -> None:
    """Record activity (throttled by the caller: not once per request)."""
    await session.execute(update(LoginSession).where(LoginSession.id_hash == digest,
                                                     LoginSession.last_seen_at < when)
                          .values(last_seen_at=when))


async def claim_provider_check(session: AsyncSession, digest: str,
                               interval: dt.timedelta) -> LoginSession | None:
    """Take the right to check the provider session now, atomically.

    Returns the row when this caller won (no other request or replica checked within
    ``interval``), else None. The update is the lock: two replicas never use the same
    refresh token at once (providers that rotate them would take the second as a theft).
    """
    now = utcnow()
    result = await session.execute(
        update(LoginSession)
        .where(LoginSession.id_hash == digest, LoginSession.revoked_at.is_(None),
               or_(LoginSession.provider_checked_at.is_(None),
                   LoginSession.provider_checked_at <= now - interval))
        .values(provider_checked_at=now))
    if getattr(result, "rowcount", 0) != 1:
        return None
    return await session.get(LoginSession, digest)


# --- pending logins -------------------------------------------------------------------


async def create_pending(session: AsyncSession, next_url: str) -> PendingLogin:
    """A new pending login with fresh state, nonce and PKCE verifier (old ones are purged)."""
    await session.execute(delete(PendingLogin).where(
        PendingLogin.created_at < utcnow() - PENDING_TTL))
    pending = PendingLogin(state=secrets.token_urlsafe(32), nonce=secrets.token_urlsafe(32),
                           code_verifier=secrets.token_urlsafe(64), next_url=next_url[:1024],
                           created_at=utcnow())
    session.add(pending)
    await session.flush()
    return pending


async def consume_pending(session: AsyncSession, state: str) -> PendingLogin | None:
    """The pending login of ``state``, deleted so no second answer can use it.

    None when unknown, already consumed (a replay) or older than :data:`PENDING_TTL`.
    Commits, so a concurrent replay sees the deletion.
    """
    pending = await session.get(PendingLogin, state)
    if pending is None:
        return None
    result = await session.execute(delete(PendingLogin).where(PendingLogin.state == state))
    await session.commit()
    if getattr(result, "rowcount", 0) != 1 or pending.created_at < utcnow() - PENDING_TTL:
        return None
    return pending


# --- users from the provider ----------------------------------------------------------


async def set_managed_roles(session: AsyncSession, user_id: int, roles: set[Role],
                            managed_roles: set[Role]) -> bool:
    """Make the roles the provider manages follow ``roles`` (as at login, see
    :func:`upsert_user`); the others stay as admins set them. True when something changed."""
    user = await session.get(User, user_id)
    if user is None:
        return False
    held = {r.role for r in user.roles}
    wanted = (held - managed_roles) | (roles & managed_roles)
    if wanted == held:
        return False
    for role in sorted(wanted - held):
        user.roles.append(UserRole(role=role))
    user.roles = [r for r in user.roles if r.role in wanted]
    await session.flush()
    return True


class IdentityConflict(Exception):
    """The username is already linked to another identity of the provider."""


async def upsert_user(session: AsyncSession, *, issuer: str, subject: str, username: str,
                      email: str, name: str, groups: list[str], roles: set[Role],
                      managed_roles: set[Role]) -> User:
    """Create the user at first login, update them at later ones.

    The user is found by (issuer, subject); a first login links an existing user of the
    same username (e.g. synced from the user office) unless that user is linked to another
    subject of the same provider. Roles in ``managed_roles`` follow ``roles``; the others
    are left as admins set them. Groups the provider no longer lists are removed, groups
    set by admins stay.
    """
    identity = await session.get(UserIdentity, (issuer, subject))
    user: User | None
    if identity is not None:
        user = await session.get(User, identity.user_id)
        assert user is not None  # the foreign key cascades
        if user.username != username and await session.scalar(
                select(User.id).where(User.username == username)) is not None:
            raise IdentityConflict(f"the username {username!r} belongs to another account")
    else:
        user = await session.scalar(select(User).where(User.username == username))
        if user is not None and await session.scalar(select(UserIdentity.subject).where(
                UserIdentity.user_id == user.id, UserIdentity.issuer == issuer)) is not None:
            raise IdentityConflict(f"the username {username!r} is linked to another "
                                   "identity of this provider")
        if user is None:
            user = User(username=username, roles=[])
            session.add(user)
            await session.flush()
        identity = UserIdentity(issuer=issuer, subject=subject, user_id=user.id, groups=[])
        session.add(identity)
    user.username = username
    user.email = email[:255] or user.email
    user.display_name = name[:255] or user.display_name
    user.last_login_at = utcnow()
    held = {r.role for r in user.roles}
    for role in managed_roles:
        if role in roles and role not in held:
            user.roles.append(UserRole(role=role))
    user.roles = [r for r in user.roles if r.role not in managed_roles or r.role in roles]
    previous = set(identity.groups or [])
    current = {g[:128] for g in groups}
    have = set((await session.scalars(select(UserGroup.name).where(
        UserGroup.user_id == user.id))).all())
    gone = (previous - current) & have
    if gone:
        await session.execute(delete(UserGroup).where(UserGroup.user_id == user.id,
                                                      UserGroup.name.in_(gone)))
    for group in sorted(current - have):
        session.add(UserGroup(user_id=user.id, name=group))
    identity.groups = sorted(current)
    identity.last_login_at = utcnow()
    await session.flush()
    return user
