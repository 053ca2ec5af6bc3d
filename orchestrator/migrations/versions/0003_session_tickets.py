"""one-time tickets that carry a browser to an instance's own origin

Revision ID: 0003_session_tickets
Revises: 0001
Create Date: 2026-11-29 18:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_session_tickets"
down_revision: str | None = "0001"
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "session_tickets",
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("instance_uid", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("login_digest", sa.String(length=64), nullable=False),
        sa.Column("state_digest", sa.String(length=64), nullable=False),
        sa.Column("next_url", sa.String(length=1024), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("digest"),
    )
    op.create_index("ix_session_tickets_expires_at", "session_tickets", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_session_tickets_expires_at", table_name="session_tickets")
    op.drop_table("session_tickets")
