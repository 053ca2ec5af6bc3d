"""Alembic environment: runs on the connection handed over by orchestrator.db."""

from alembic import context

import orchestrator.connections
import orchestrator.session_tickets  # noqa: F401 - registers the tickets table
import sharing.models  # noqa: F401 - registers sharing's tables
from orchestrator.models import Base

config = context.config
connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `atrium db upgrade`")
context.configure(connection=connection, target_metadata=Base.metadata,
                  render_as_batch=True, compare_type=True)
with context.begin_transaction():
    context.run_migrations()
