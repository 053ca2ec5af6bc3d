"""Database access: the async engine, sessions, and the schema-version guard."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

MIGRATIONS = Path(__file__).parent / "migrations"


class SchemaOutOfDate(Exception):
    """The database schema is not the one this code expects."""


def make_engine(url: str) -> AsyncEngine:
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        Path(url.split("///", 1)[-1]).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": 30}
    else:
        kwargs.update(pool_size=10, max_overflow=20, pool_pre_ping=True)
    engine = create_async_engine(url, **kwargs)
    if url.startswith("sqlite"):
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets readers run beside the writer; foreign keys are off by default in SQLite.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


async def begin_write(session: AsyncSession) -> None:
    """Turn the session's transaction into a write transaction now, on SQLite.

    SQLite's driver opens a transaction lazily, at the first write, so two sessions may both
    read a count and then both write (check-then-insert races). ``BEGIN IMMEDIATE`` takes
    the database's single write lock first (waiting up to the busy timeout), so everything
    the session reads afterwards is current until it commits, and writers run one at a time.
    If the session has already written, it holds that lock already. On PostgreSQL this does
    nothing: callers lock the rows their decision depends on (``SELECT ... FOR UPDATE``).
    """
    conn = await session.connection()
    if conn.dialect.name != "sqlite":
        return
    raw = await conn.get_raw_connection()
    if not raw.driver_connection.in_transaction:  # type: ignore[union-attr]
        await conn.exec_driver_sql("BEGIN IMMEDIATE")


class Database:
    """The engine and a session factory; one per process."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite")

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        async with self.sessions() as session:
            yield session

    async def close(self) -> None:
        await self.engine.dispose()

    # --- migrations -------------------------------------------------------------------

    def _alembic_config(self) -> Config:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        return cfg

    async def upgrade(self, revision: str = "heads") -> None:
        cfg = self._alembic_config()

        def run(conn: Connection) -> None:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)

        async with self.engine.connect() as conn:
            if self.is_sqlite:
                # Batch migrations rebuild SQLite tables (copy, drop, rename): with foreign
                # keys enforced, dropping a parent would cascade-delete its children's rows.
                # The pragma only takes effect outside a transaction.
                await conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
            await conn.run_sync(run)
            await conn.commit()
            if self.is_sqlite:
                await conn.exec_driver_sql("PRAGMA foreign_keys=ON")

    async def revisions(self) -> tuple[str, str]:
        """(revisions of the database, head revisions of the code), comma-separated.

        Migrations may branch (features developed side by side); every head is applied.
        """
        heads = ScriptDirectory.from_config(self._alembic_config()).get_heads()
        async with self.engine.connect() as conn:
            current = await conn.run_sync(
                lambda c: MigrationContext.configure(c).get_current_heads()
            )
        return ",".join(sorted(current)), ",".join(sorted(heads))

    async def check_schema(self) -> None:
        """Raise :class:`SchemaOutOfDate` with the fix when the schema is not at head."""
        current, head = await self.revisions()
        if current != head:
            raise SchemaOutOfDate(
                f"the database schema is at revision {current or 'none (empty database)'}, "
                f"this version of Atrium needs {head}: run `atrium db upgrade`"
            )
