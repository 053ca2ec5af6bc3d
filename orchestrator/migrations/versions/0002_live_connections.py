"""live connections: open WebSockets and recent requests per replica (shared presence)

Revision ID: 0002_live_connections
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_live_connections"
down_revision: str | None = "0001"
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "live_connections",
        sa.Column("id", sa.String(96), primary_key=True),
        sa.Column("instance_uid", sa.String(32), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("protocol", sa.String(16), nullable=False),
        sa.Column("replica", sa.String(64), nullable=False),
        sa.Column("opened_at", sa.DateTime(), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_live_connections_instance", "live_connections", ["instance_uid"])
    op.create_index("ix_live_connections_replica", "live_connections", ["replica"])


def downgrade() -> None:
    op.drop_table("live_connections")
