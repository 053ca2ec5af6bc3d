"""Rotating an instance's secrets after someone who could read them lost access.

A USER member can run code in the session, and so read the JupyterLab token and the VNC
password the session holds. When such a member is removed (or lowered to GUEST), the
instance gets new secrets: the running session is told first, accepting the old token a
moment longer for requests in flight; then the new secrets are stored and announced (the
proxies of every replica use them at once); then the old token stops working.

Backends declare the capability (:attr:`spawners.base.Backend.rotates_secrets`). A stopped
instance gets its new secrets at its next start; a running one on a backend without the
capability keeps its secrets (logged, and said in the instance's events).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from orchestrator.models import Instance, InstanceEvent, InstanceSecret, InstanceStatus
from spawners.base import Backend, BackendError

log = logging.getLogger("atrium.rotation")

# States in which the session's processes may be running and hold the current secrets.
RUNNING = frozenset({InstanceStatus.STARTING, InstanceStatus.ACTIVE,
                     InstanceStatus.PARTIALLY_ACTIVE, InstanceStatus.REBOOTING,
                     InstanceStatus.UNKNOWN, InstanceStatus.UNAVAILABLE})

Commit = Callable[[AsyncSession, str], Awaitable[None]]  # commit and announce the instance


def new_secrets() -> dict[str, str]:
    """Fresh secrets, as a launch makes them (orchestrator/lifecycle.py)."""
    return {"jupyter_token": secrets.token_urlsafe(32),
            "vnc_password": secrets.token_urlsafe(6)[:8]}


async def rotate_secrets(session: AsyncSession, backends: Mapping[str, Backend], uid: str,
                         commit: Commit) -> str:
    """Rotate the secrets of instance ``uid``; returns what happened (``rotated``,
    ``stored`` for a stopped instance, ``unsupported``, ``failed: ...`` or ``gone``)."""
    instance = await session.scalar(select(Instance).where(Instance.uid == uid))
    if instance is None or instance.status is InstanceStatus.DELETED:
        return "gone"
    secret = await session.get(InstanceSecret, instance.id)
    if secret is None:
        return "gone"
    old, fresh = secret.as_dict(), new_secrets()
    backend = backends.get(instance.backend)
    running = instance.status in RUNNING and backend is not None
    if running and backend is not None and not backend.rotates_secrets:
        session.add(InstanceEvent(instance_id=instance.id, kind="secrets-kept",
                                  detail=f"the {backend.name} backend cannot rotate the "
                                         "secrets of a running session"))
        await commit(session, uid)
        return "unsupported"
    state = dict(instance.backend_state or {})
    if running and backend is not None:
        try:
            await backend.rotate_secrets(uid, state, fresh, keep=old)
        except BackendError as err:
            log.warning("rotating the secrets of %s failed: %s", uid, err)
            session.add(InstanceEvent(instance_id=instance.id, kind="secrets-kept",
                                      detail=f"rotation failed: {err}"[:2000]))
            await commit(session, uid)
            return f"failed: {err}"
    secret.jupyter_token, secret.vnc_password = fresh["jupyter_token"], fresh["vnc_password"]
    session.add(InstanceEvent(instance_id=instance.id, kind="secrets-rotated",
                              detail="after a member who could read them lost access"))
    await commit(session, uid)
    if not running or backend is None:
        return "stored"
    try:
        await backend.rotate_secrets(uid, state, fresh)  # the old token ends now
    except BackendError as err:
        log.warning("ending the old secrets of %s failed: %s", uid, err)
    return "rotated"
