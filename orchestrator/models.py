"""The domain model (SQLAlchemy 2, typed). Schema changes go through Alembic migrations."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Date,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[str]: JSON}


class Role(enum.StrEnum):
    """Roles of people (a user holds any number of them)."""

    ADMIN = "ADMIN"
    STAFF = "STAFF"
    SUPPORT = "SUPPORT"
    INSTRUMENT_SCIENTIST = "INSTRUMENT_SCIENTIST"
    GUEST = "GUEST"


class MemberRole(enum.StrEnum):
    """Roles on one instance."""

    OWNER = "OWNER"
    USER = "USER"  # full control
    GUEST = "GUEST"  # watch only
    SUPPORT = "SUPPORT"  # staff helping, audited


class InstanceStatus(enum.StrEnum):
    """Observed state of an instance (VISA's states)."""

    BUILDING = "BUILDING"
    STARTING = "STARTING"
    ACTIVE = "ACTIVE"
    PARTIALLY_ACTIVE = "PARTIALLY_ACTIVE"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"
    REBOOTING = "REBOOTING"
    DELETING = "DELETING"
    DELETED = "DELETED"
    ERROR = "ERROR"
    UNKNOWN = "UNKNOWN"
    UNAVAILABLE = "UNAVAILABLE"


class Target(enum.StrEnum):
    """Desired state of an instance, set by users; the reconciler drives towards it."""

    RUNNING = "RUNNING"
    STOPPED = "STOPPED"
    DELETED = "DELETED"


def _enum(cls: type[enum.Enum], length: int = 24) -> Enum:
    # Stored as plain strings (no native ENUM type) so adding a value needs no DDL.
    return Enum(cls, native_enum=False, length=length, validate_strings=True)


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    email: Mapped[str] = mapped_column(String(255), default="")
    display_name: Mapped[str] = mapped_column(String(255), default="")
    # POSIX identity sessions run as (pods, VMs); 0 lets the backend choose.
    posix_uid: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    last_login_at: Mapped[dt.datetime | None] = mapped_column(DateTime)

    roles: Mapped[list[UserRole]] = relationship(
        back_populates="user", cascade="all, delete-orphan", lazy="selectin"
    )

    @property
    def role_names(self) -> set[str]:
        return {r.role for r in self.roles}

    @property
    def label(self) -> str:
        return self.display_name or self.username


class UserRole(Base):
    __tablename__ = "user_roles"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"),
                                         primary_key=True)
    role: Mapped[Role] = mapped_column(_enum(Role), primary_key=True)
    user: Mapped[User] = relationship(back_populates="roles")


class Instrument(Base):
    __tablename__ = "instruments"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    facility: Mapped[str] = mapped_column(String(64), default="")


class Experiment(Base):
    """A proposal/experiment from the facility's user office, with its data location."""

    __tablename__ = "experiments"

    id: Mapped[int] = mapped_column(primary_key=True)
    proposal: Mapped[str] = mapped_column(String(64), unique=True)
    title: Mapped[str] = mapped_column(String(500), default="")
    instrument_id: Mapped[int | None] = mapped_column(ForeignKey("instruments.id"))
    start_date: Mapped[dt.date | None] = mapped_column(Date)
    end_date: Mapped[dt.date | None] = mapped_column(Date)
    data_path: Mapped[str] = mapped_column(String(1024), default="")
    synced_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    instrument: Mapped[Instrument | None] = relationship(lazy="joined")


class ExperimentMember(Base):
    __tablename__ = "experiment_members"

    experiment_id: Mapped[int] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"),
                                         primary_key=True, index=True)


class Image(Base):
    __tablename__ = "images"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(64), default="")
    description: Mapped[str] = mapped_column(Text, default="")
    icon: Mapped[str] = mapped_column(String(255), default="")
    protocols: Mapped[list[str]] = mapped_column(JSON, default=list)
    backend_refs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    boot_template: Mapped[str] = mapped_column(Text, default="")
    visible: Mapped[bool] = mapped_column(Boolean, default=True)
    deprecated: Mapped[bool] = mapped_column(Boolean, default=False)


class Flavour(Base):
    __tablename__ = "flavours"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    cpus: Mapped[float] = mapped_column(Float, default=1.0)
    memory_mb: Mapped[int] = mapped_column(Integer, default=2048)
    gpus: Mapped[int] = mapped_column(Integer, default=0)
    backend_refs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # Flavour limits: when either list is non-empty, only holders of one of the roles, or
    # launches with an experiment on one of the instruments (by name), may use the flavour.
    limit_roles: Mapped[list[str]] = mapped_column(JSON, default=list)
    limit_instruments: Mapped[list[str]] = mapped_column(JSON, default=list)

    @property
    def limited(self) -> bool:
        return bool(self.limit_roles or self.limit_instruments)


class Plan(Base):
    """An image on a flavour, on one backend: what users pick when they launch."""

    __tablename__ = "plans"
    __table_args__ = (UniqueConstraint("image_id", "flavour_id", "backend"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"))
    flavour_id: Mapped[int] = mapped_column(ForeignKey("flavours.id"))
    backend: Mapped[str] = mapped_column(String(32), default="local")
    preset: Mapped[bool] = mapped_column(Boolean, default=False)
    # Disabled plans are kept for the instances (and accounting) that refer to them, but
    # nobody can launch them any more.
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)

    image: Mapped[Image] = relationship(lazy="joined")
    flavour: Mapped[Flavour] = relationship(lazy="joined")


class Instance(Base):
    """One analysis session. ``target`` is what users asked for, ``status`` what was seen."""

    __tablename__ = "instances"
    __table_args__ = (
        Index("ix_instances_status", "status"),
        Index("ix_instances_owner_status", "owner_id", "status"),
        Index("ix_instances_termination_date", "termination_date"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    uid: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(100))
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    plan_id: Mapped[int] = mapped_column(ForeignKey("plans.id"))
    backend: Mapped[str] = mapped_column(String(32))
    target: Mapped[Target] = mapped_column(_enum(Target), default=Target.RUNNING)
    status: Mapped[InstanceStatus] = mapped_column(_enum(InstanceStatus),
                                                   default=InstanceStatus.BUILDING)
    status_reason: Mapped[str] = mapped_column(Text, default="")
    progress: Mapped[str] = mapped_column(String(255), default="")
    reboot_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # Members may connect while the owner is away (else only while the owner is connected).
    unrestricted_member_access: Mapped[bool] = mapped_column(Boolean, default=False)
    backend_state: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    endpoints: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    ready_protocols: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)
    activated_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    deleted_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    termination_date: Mapped[dt.datetime | None] = mapped_column(DateTime)
    last_seen_at: Mapped[dt.datetime | None] = mapped_column(DateTime)

    owner: Mapped[User] = relationship(lazy="joined")
    plan: Mapped[Plan] = relationship(lazy="joined")
    experiments: Mapped[list[Experiment]] = relationship(
        secondary="instance_experiments", lazy="selectin", order_by="Experiment.proposal"
    )
    members: Mapped[list[InstanceMember]] = relationship(
        back_populates="instance", lazy="selectin", cascade="all, delete-orphan"
    )
    secret: Mapped[InstanceSecret | None] = relationship(
        lazy="raise", cascade="all, delete-orphan", uselist=False
    )


class InstanceExperiment(Base):
    __tablename__ = "instance_experiments"

    instance_id: Mapped[int] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"),
                                             primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id"), primary_key=True)


class InstanceSecret(Base):
    """The instance's own secrets, apart so they never ride along with an instance query.

    They go to the backend (to start the session) and to the proxy (to inject them);
    never to a browser or an API response.
    """

    __tablename__ = "instance_secrets"

    instance_id: Mapped[int] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"),
                                             primary_key=True)
    jupyter_token: Mapped[str] = mapped_column(String(128))
    vnc_password: Mapped[str] = mapped_column(String(64))

    def as_dict(self) -> dict[str, str]:
        return {"jupyter_token": self.jupyter_token, "vnc_password": self.vnc_password}


class InstanceMember(Base):
    __tablename__ = "instance_members"
    __table_args__ = (UniqueConstraint("instance_id", "user_id"),
                      Index("ix_instance_members_user", "user_id"))

    id: Mapped[int] = mapped_column(primary_key=True)
    instance_id: Mapped[int] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    role: Mapped[MemberRole] = mapped_column(_enum(MemberRole))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    instance: Mapped[Instance] = relationship(back_populates="members")
    user: Mapped[User] = relationship(lazy="joined")


class InstanceEvent(Base):
    """The audit trail: who did what to which instance, and what the reconciler saw."""

    __tablename__ = "instance_events"
    __table_args__ = (Index("ix_instance_events_instance", "instance_id", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    instance_id: Mapped[int] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    kind: Mapped[str] = mapped_column(String(64))
    detail: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    user: Mapped[User | None] = relationship(lazy="joined")


class UserGroup(Base):
    """A group a user belongs to (from the identity provider or set by admins); quota
    policies may name groups."""

    __tablename__ = "user_groups"
    __table_args__ = (Index("ix_user_groups_name", "name"),)

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"),
                                         primary_key=True)
    name: Mapped[str] = mapped_column(String(128), primary_key=True)


class QuotaScope(enum.StrEnum):
    """Whom a quota policy applies to; the most specific scope wins (USER first)."""

    USER = "USER"
    GROUP = "GROUP"
    ROLE = "ROLE"
    DEFAULT = "DEFAULT"


class QuotaPolicy(Base):
    """Limits for a user, a group, a role or everyone. ``None`` means "not set here": the
    limit then comes from a less specific policy (see quotas/policies.py)."""

    __tablename__ = "quota_policies"
    __table_args__ = (UniqueConstraint("scope", "subject"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    scope: Mapped[QuotaScope] = mapped_column(_enum(QuotaScope))
    subject: Mapped[str] = mapped_column(String(128), default="")  # username/group/role
    max_instances: Mapped[int | None] = mapped_column(Integer)
    max_cpus: Mapped[float | None] = mapped_column(Float)
    max_memory_mb: Mapped[int | None] = mapped_column(Integer)
    max_gpus: Mapped[int | None] = mapped_column(Integer)
    max_lifetime_hours: Mapped[float | None] = mapped_column(Float)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)


class ApiToken(Base):
    """A personal API token; only its SHA-256 is stored."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100), default="")
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(12))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime)

    user: Mapped[User] = relationship(lazy="joined")


class LoginSession(Base):
    """A browser's login. The cookie holds a random id; only its SHA-256 is stored, so the
    table cannot be used to hijack sessions. Logout and revocation mark ``revoked_at``.

    OpenID Connect logins keep the provider's tokens: the ID token as ``id_token_hint`` at
    logout, the refresh token to check now and then that the provider session still lives.
    """

    __tablename__ = "login_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    method: Mapped[str] = mapped_column(String(16))  # "oidc" or "demo"
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    last_seen_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    provider_sid: Mapped[str] = mapped_column(String(255), default="")
    id_token: Mapped[str] = mapped_column(Text, default="")
    refresh_token: Mapped[str] = mapped_column(Text, default="")
    provider_checked_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    user_agent: Mapped[str] = mapped_column(String(255), default="")


class PendingLogin(Base):
    """An OpenID Connect login between the redirect to the provider and its answer.

    Consumed (deleted) by the one answer that uses it, so a replayed answer finds nothing.
    """

    __tablename__ = "pending_logins"

    state: Mapped[str] = mapped_column(String(64), primary_key=True)
    nonce: Mapped[str] = mapped_column(String(64))
    code_verifier: Mapped[str] = mapped_column(String(128))
    next_url: Mapped[str] = mapped_column(String(1024), default="/")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)


class UserIdentity(Base):
    """Links a provider's subject (stable, unlike usernames) to an Atrium user."""

    __tablename__ = "user_identities"

    issuer: Mapped[str] = mapped_column(String(255), primary_key=True)
    subject: Mapped[str] = mapped_column(String(255), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    # The groups the provider gave at the last login, so groups that disappear there are
    # removed here while groups set by admins stay.
    groups: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    last_login_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


# --- lifetime: notifications, extension requests, the scheduler's lease and job runs ---


class NotificationStatus(enum.StrEnum):
    PENDING = "PENDING"  # to be sent
    SENDING = "SENDING"  # claimed by one process (retried if it stays so: a crash)
    SENT = "SENT"
    FAILED = "FAILED"  # gave up after several attempts
    SKIPPED = "SKIPPED"  # no mail server configured or no address: shown in-app only


class Notification(Base):
    """An email to one person, rendered when recorded and sent by whichever process claims
    it. ``key`` makes a notification happen once: e.g. the warning for one deadline of one
    instance. Warnings keep their ``deadline``; ``cancelled_at`` is set when that deadline
    no longer holds (the owner reconnected, the lifetime was extended)."""

    __tablename__ = "notifications"
    __table_args__ = (Index("ix_notifications_status", "status"),
                      Index("ix_notifications_instance", "instance_id", "kind"))

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(255), unique=True)
    kind: Mapped[str] = mapped_column(String(40))
    instance_id: Mapped[int | None] = mapped_column(
        ForeignKey("instances.id", ondelete="SET NULL"))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    recipient: Mapped[str] = mapped_column(String(255), default="")
    subject: Mapped[str] = mapped_column(String(500), default="")
    body: Mapped[str] = mapped_column(Text, default="")
    deadline: Mapped[dt.datetime | None] = mapped_column(DateTime)
    status: Mapped[NotificationStatus] = mapped_column(_enum(NotificationStatus),
                                                       default=NotificationStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    claimed_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    sent_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    cancelled_at: Mapped[dt.datetime | None] = mapped_column(DateTime)


class ExtensionStatus(enum.StrEnum):
    PENDING = "PENDING"
    ACCEPTED = "ACCEPTED"
    REFUSED = "REFUSED"
    CANCELLED = "CANCELLED"  # the instance was deleted before a decision


class ExtensionRequest(Base):
    """An owner asking for more time (``days`` past the termination date), with a reason."""

    __tablename__ = "extension_requests"
    __table_args__ = (Index("ix_extension_requests_status", "status"),
                      Index("ix_extension_requests_instance", "instance_id"))

    id: Mapped[int] = mapped_column(primary_key=True)
    instance_id: Mapped[int] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"))
    requester_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"))
    days: Mapped[float] = mapped_column(Float)
    reason: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[ExtensionStatus] = mapped_column(_enum(ExtensionStatus),
                                                    default=ExtensionStatus.PENDING)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    decided_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    decided_by_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"))
    auto: Mapped[bool] = mapped_column(Boolean, default=False)
    comment: Mapped[str] = mapped_column(Text, default="")
    granted_days: Mapped[float | None] = mapped_column(Float)
    old_termination: Mapped[dt.datetime | None] = mapped_column(DateTime)
    new_termination: Mapped[dt.datetime | None] = mapped_column(DateTime)

    instance: Mapped[Instance] = relationship(lazy="joined")
    requester: Mapped[User | None] = relationship(foreign_keys=[requester_id], lazy="joined")
    decided_by: Mapped[User | None] = relationship(foreign_keys=[decided_by_id],
                                                   lazy="joined")


class SchedulerLease(Base):
    """Leader election: the holder runs the scheduled jobs until ``expires_at``, renewing
    it well before; another process takes the lease only once it has expired."""

    __tablename__ = "scheduler_leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(255), default="")
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime)
    acquired_at: Mapped[dt.datetime | None] = mapped_column(DateTime)


class JobRun(Base):
    """Per scheduled job: how often it ran, when and where last (admins, tests)."""

    __tablename__ = "job_runs"

    job: Mapped[str] = mapped_column(String(64), primary_key=True)
    runs: Mapped[int] = mapped_column(Integer, default=0)
    last_holder: Mapped[str] = mapped_column(String(255), default="")
    last_started_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    last_finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    last_error: Mapped[str] = mapped_column(Text, default="")
