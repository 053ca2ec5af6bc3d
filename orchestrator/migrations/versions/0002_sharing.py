"""sharing: instrument scientists, invitations, access requests, unrestricted access

Revision ID: 0002_sharing
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_sharing"
down_revision: str | None = "0001"
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None

ROLE = sa.Enum("OWNER", "USER", "GUEST", "SUPPORT", name="memberrole", native_enum=False,
               length=24)


def upgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("unrestricted_member_access", sa.Boolean(), nullable=False,
                                   server_default=sa.false()))
    op.create_table(
        "instrument_scientists",
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("instrument_id", sa.Integer(),
                  sa.ForeignKey("instruments.id", ondelete="CASCADE"), primary_key=True),
    )
    op.create_table(
        "invitations",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("instance_id", sa.Integer(),
                  sa.ForeignKey("instances.id", ondelete="CASCADE"), nullable=False),
        sa.Column("role", ROLE, nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("created_by", sa.Integer(), sa.ForeignKey("users.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.Column("used_at", sa.DateTime()),
        sa.Column("used_by", sa.Integer(), sa.ForeignKey("users.id", ondelete="SET NULL")),
    )
    op.create_index("ix_invitations_instance_id", "invitations", ["instance_id"])
    op.create_table(
        "access_requests",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("instance_id", sa.Integer(),
                  sa.ForeignKey("instances.id", ondelete="CASCADE"), nullable=False),
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("status", sa.Enum("PENDING", "ACCEPTED", "REFUSED", name="requeststatus",
                                    native_enum=False, length=24), nullable=False),
        sa.Column("role", ROLE),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("decided_at", sa.DateTime()),
        sa.Column("decided_by", sa.Integer(), sa.ForeignKey("users.id", ondelete="SET NULL")),
    )
    op.create_index("ix_access_requests_instance", "access_requests",
                    ["instance_id", "status"])


def downgrade() -> None:
    op.drop_table("access_requests")
    op.drop_table("invitations")
    op.drop_table("instrument_scientists")
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("unrestricted_member_access")
