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
    ApiToken,
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


async def due_provider_checks(session: AsyncSession, interval: dt.timedelta,
                              idle_timeout: dt.timedelta, limit: int = 200) -> list[str]:
    """Live OpenID Connect logins whose provider session was not checked within
    ``interval`` (oldest first), for the background sweep. Logins idle past
    ``idle_timeout`` are dead to Atrium already: not refreshed (a refresh may count as
    activity at the provider and keep its session alive)."""
    now = utcnow()
    return list((await session.scalars(
        select(LoginSession.id_hash)
        .where(LoginSession.method == "oidc", LoginSession.revoked_at.is_(None),
               LoginSession.expires_at > now, LoginSession.refresh_token != "",
               LoginSession.last_seen_at > now - idle_timeout,
               or_(LoginSession.provider_checked_at.is_(None),
                   LoginSession.provider_checked_at <= now - interval))
        .order_by(LoginSession.provider_checked_at).limit(limit))).all())


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
    """The login cannot be tied to an Atrium account without an administrator."""


async def _claimable(session: AsyncSession, user: User, issuer: str,
                     link_unclaimed: bool) -> str:
    """Why a first login of ``issuer`` may not take ``user`` over ("" when it may).

    Accounts are tied to the provider's (issuer, subject), never to a username alone: an
    account that was used (someone logged in to it) or is linked to any identity belongs to
    someone, and only an administrator can say it is this person's.
    """
    linked = set((await session.scalars(select(UserIdentity.issuer).where(
        UserIdentity.user_id == user.id))).all())
    if issuer in linked:
        return (f"the username {user.username!r} is linked to another identity of this "
                "provider")
    if linked or user.last_login_at is not None or not link_unclaimed:
        return (f"an Atrium account named {user.username!r} already exists and is not "
                "linked to your identity at this provider; an administrator can link it "
                f"(atrium user link {user.username} SUBJECT)")
    return ""


async def upsert_user(session: AsyncSession, *, issuer: str, subject: str, username: str,
                      email: str, name: str, groups: list[str], roles: set[Role],
                      managed_roles: set[Role], link_unclaimed: bool = True) -> User:
    """Create the user at first login, update them at later ones.

    The user is found by (issuer, subject). A first login whose username is taken links
    that account only if nobody ever used it (e.g. synced from the user office, whose
    usernames are the provider's) and ``link_unclaimed``; otherwise IdentityConflict
    (see :func:`_claimable`). Roles in ``managed_roles`` follow ``roles``; the others are
    left as admins set them. Groups the provider no longer lists are removed, groups set by
    admins stay.
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
        if user is not None:
            refused = await _claimable(session, user, issuer, link_unclaimed)
            if refused:
                raise IdentityConflict(refused)
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
    await _sync_roles_groups(session, user, identity, groups, roles, managed_roles)
    identity.last_login_at = utcnow()
    await session.flush()
    return user


async def _sync_roles_groups(session: AsyncSession, user: User, identity: UserIdentity,
                             groups: list[str], roles: set[Role],
                             managed_roles: set[Role]) -> None:
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


async def deprovision(session: AsyncSession, user_id: int,
                      managed_roles: set[Role]) -> tuple[list[str], list[str]]:
    """The provider disabled or deleted the user: end every login, revoke every API token,
    drop the roles the provider manages. Returns (login digests, token digests) so caches
    can forget them."""
    now = utcnow()
    logins_ = (await session.scalars(select(LoginSession).where(
        LoginSession.user_id == user_id, LoginSession.revoked_at.is_(None)))).all()
    tokens = (await session.scalars(select(ApiToken).where(
        ApiToken.user_id == user_id, ApiToken.revoked_at.is_(None)))).all()
    for login in logins_:
        login.revoked_at = now
    for token in tokens:
        token.revoked_at = now
    user = await session.get(User, user_id)
    if user is not None:
        user.roles = [r for r in user.roles if r.role not in managed_roles]
    await session.flush()
    return [r.id_hash for r in logins_], [t.token_hash for t in tokens]


async def link_identity(session: AsyncSession, username: str, issuer: str,
                        subject: str) -> User:
    """An administrator's decision: the provider's ``subject`` is the account ``username``
    (its next login there uses it). Refused when that subject is another account's."""
    user = await session.scalar(select(User).where(User.username == username))
    if user is None:
        raise IdentityConflict(f"no user {username!r}")
    identity = await session.get(UserIdentity, (issuer, subject))
    if identity is not None and identity.user_id != user.id:
        raise IdentityConflict(f"subject {subject!r} is linked to another account")
    other = await session.scalar(select(UserIdentity.subject).where(
        UserIdentity.user_id == user.id, UserIdentity.issuer == issuer,
        UserIdentity.subject != subject))
    if other is not None:
        raise IdentityConflict(f"{username!r} is already linked to subject {other!r} of "
                               "this provider")
    if identity is None:
        session.add(UserIdentity(issuer=issuer, subject=subject, user_id=user.id, groups=[]))
    await session.flush()
    return user
