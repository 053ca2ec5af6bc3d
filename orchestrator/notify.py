"""Email notifications: recorded in the database with the change that causes them, sent
afterwards by whichever process claims them.

* :func:`enqueue` renders a Jinja2 template (``orchestrator/templates/email/``) and inserts
  the notification in the caller's transaction, unless one with the same ``key`` exists:
  a warning for one deadline of one instance is recorded, hence sent, once.
* :func:`deliver` claims pending notifications one by one (a conditional UPDATE, so two
  processes never send the same one), sends them over SMTP in a thread, and records the
  outcome. A failed send is retried at the next delivery, up to :data:`MAX_ATTEMPTS`; a
  claim left by a crashed process is taken again after :data:`STALE_CLAIM`. A crash between
  sending and recording can therefore repeat one email: at least once, never silently lost.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import smtplib
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any

import jinja2
from sqlalchemy import or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from orchestrator.db import Database
from orchestrator.lifetime_policy import Clock
from orchestrator.models import Notification, Role, User, UserRole
from orchestrator.models import NotificationStatus as N
from orchestrator.settings import Settings

log = logging.getLogger("atrium.notify")

MAX_ATTEMPTS = 5
STALE_CLAIM = dt.timedelta(minutes=10)

_TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates" / "email"),
    autoescape=False,  # plain-text emails
    undefined=jinja2.StrictUndefined, keep_trailing_newline=True, trim_blocks=True,
    lstrip_blocks=True)
_TEMPLATES.filters["when"] = lambda d: d.strftime("%Y-%m-%d %H:%M UTC") if d else "never"


def render(template: str, **context: Any) -> tuple[str, str]:
    """(subject, body) of ``template``; its first line is ``Subject: ...``."""
    text = _TEMPLATES.get_template(f"{template}.txt.j2").render(**context)
    first, _, body = text.partition("\n")
    if not first.startswith("Subject:"):
        raise ValueError(f"email template {template} must start with 'Subject: '")
    return first.removeprefix("Subject:").strip(), body.lstrip("\n")


class Mailer:
    """Sends one email over SMTP (blocking smtplib, run in a thread)."""

    def __init__(self, settings: Settings) -> None:
        self.host = settings.smtp_host
        self.port = settings.smtp_port
        self.sender = settings.smtp_from
        self.starttls = settings.smtp_starttls
        self.username = settings.smtp_username
        self.password = settings.smtp_password

    @property
    def configured(self) -> bool:
        return bool(self.host)

    def _send(self, to: str, subject: str, body: str) -> None:
        msg = EmailMessage()
        msg["From"] = self.sender
        msg["To"] = to
        msg["Subject"] = subject
        msg["Date"] = formatdate(localtime=False)
        msg["Message-ID"] = make_msgid(domain="atrium")
        msg.set_content(body)
        with smtplib.SMTP(self.host, self.port, timeout=30) as smtp:
            if self.starttls:
                smtp.starttls()
            if self.username:
                smtp.login(self.username, self.password)
            smtp.send_message(msg)

    async def send(self, to: str, subject: str, body: str) -> None:
        await asyncio.to_thread(self._send, to, subject, body)


async def enqueue(session: AsyncSession, mailer: Mailer, *, key: str, kind: str,
                  template: str, context: dict[str, Any], now: dt.datetime,
                  user: User | None = None, recipient: str = "",
                  instance_id: int | None = None, deadline: dt.datetime | None = None
                  ) -> bool:
    """Record a notification to ``user`` (or the address ``recipient``) unless one with
    ``key`` exists; True when recorded. The caller commits.

    Without a mail server or an address it is recorded as SKIPPED (the in-app banner and
    the audit trail still show what it said).
    """
    subject, body = render(template, **context)
    to = recipient or (user.email if user else "")
    status, why = N.PENDING, ""
    if not mailer.configured:
        status, why = N.SKIPPED, "no mail server (ATRIUM_SMTP_HOST) configured"
    elif not to:
        status, why = N.SKIPPED, "no email address"
    values = dict(key=key[:255], kind=kind, instance_id=instance_id,
                  user_id=user.id if user else None, recipient=to, subject=subject[:500],
                  body=body, deadline=deadline, status=status, attempts=0, last_error=why,
                  created_at=now)
    conn = await session.connection()
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    stmt = insert(Notification).values(**values).on_conflict_do_nothing(
        index_elements=["key"]).returning(Notification.id)
    return (await session.execute(stmt)).first() is not None


async def admins(session: AsyncSession) -> list[User]:
    """The users holding the ADMIN role (recipients of extension requests)."""
    rows = await session.scalars(select(User).join(UserRole, UserRole.user_id == User.id)
                                 .where(UserRole.role == Role.ADMIN).order_by(User.id))
    return list(rows.unique())


async def deliver(db: Database, mailer: Mailer, clock: Clock, limit: int = 200) -> int:
    """Send pending notifications (see the module); returns how many were sent."""
    if not mailer.configured:
        return 0
    now = clock()
    claimable = or_(Notification.status == N.PENDING,
                    (Notification.status == N.SENDING)
                    & (Notification.claimed_at < now - STALE_CLAIM))
    async with db.session() as s:
        ids = (await s.scalars(select(Notification.id).where(claimable)
                               .order_by(Notification.id).limit(limit))).all()
    sent = 0
    for nid in ids:
        async with db.session() as s:
            claimed = (await s.execute(
                update(Notification).where(Notification.id == nid, claimable)
                .values(status=N.SENDING, claimed_at=now, attempts=Notification.attempts + 1)
                .returning(Notification.recipient, Notification.subject, Notification.body,
                           Notification.attempts))).first()
            await s.commit()
        if claimed is None:
            continue  # another process has it
        to, subject, body, attempts = claimed
        try:
            await mailer.send(to, subject, body)
        except Exception as err:
            log.warning("sending notification %s to %s failed (attempt %s): %s", nid, to,
                        attempts, err)
            values: dict[str, Any] = dict(
                status=N.FAILED if attempts >= MAX_ATTEMPTS else N.PENDING,
                last_error=str(err)[:2000])
        else:
            sent += 1
            values = dict(status=N.SENT, sent_at=clock(), last_error="")
        async with db.session() as s:
            await s.execute(update(Notification).where(Notification.id == nid).values(**values))
            await s.commit()
    return sent
