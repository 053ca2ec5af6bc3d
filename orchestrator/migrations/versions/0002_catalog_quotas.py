"""catalogue and quotas: flavour limits, plan switch, user groups, quota policies

Revision ID: 0002_catalog_quotas
Revises: 0001
Create Date: 2026-11-22 01:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_catalog_quotas"
down_revision: str | None = "0001"
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None


def upgrade() -> None:
    # Existing rows get the neutral values: no flavour limits, every plan enabled.
    with op.batch_alter_table("flavours") as batch:
        batch.add_column(sa.Column("limit_roles", sa.JSON(), nullable=False,
                                   server_default=sa.text("'[]'")))
        batch.add_column(sa.Column("limit_instruments", sa.JSON(), nullable=False,
                                   server_default=sa.text("'[]'")))
    with op.batch_alter_table("plans") as batch:
        batch.add_column(sa.Column("enabled", sa.Boolean(), nullable=False,
                                   server_default=sa.true()))
    op.create_table(
        "user_groups",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("user_id", "name"),
    )
    op.create_index("ix_user_groups_name", "user_groups", ["name"])
    op.create_table(
        "quota_policies",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("scope", sa.Enum("USER", "GROUP", "ROLE", "DEFAULT", name="quotascope",
                                   native_enum=False, length=24), nullable=False),
        sa.Column("subject", sa.String(length=128), nullable=False),
        sa.Column("max_instances", sa.Integer(), nullable=True),
        sa.Column("max_cpus", sa.Float(), nullable=True),
        sa.Column("max_memory_mb", sa.Integer(), nullable=True),
        sa.Column("max_gpus", sa.Integer(), nullable=True),
        sa.Column("max_lifetime_hours", sa.Float(), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("scope", "subject"),
    )


def downgrade() -> None:
    op.drop_table("quota_policies")
    op.drop_index("ix_user_groups_name", table_name="user_groups")
    op.drop_table("user_groups")
    with op.batch_alter_table("plans") as batch:
        batch.drop_column("enabled")
    with op.batch_alter_table("flavours") as batch:
        batch.drop_column("limit_instruments")
        batch.drop_column("limit_roles")
