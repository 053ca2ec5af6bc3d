"""Migrations keep data: upgrading a populated database loses no row (SQLite rebuilds
tables in batch migrations, which with foreign keys on would cascade-delete children)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from orchestrator.db import Database


async def test_upgrade_from_the_first_revision_keeps_rows(tmp_path: Path) -> None:
    path = tmp_path / "atrium.db"
    db = Database(f"sqlite+aiosqlite:///{path}")
    await db.upgrade("0001")
    with sqlite3.connect(path) as c:
        c.execute("INSERT INTO users (id, username, email, display_name, posix_uid, created_at)"
                  " VALUES (1, 'a', '', '', 0, '2026-01-01')")
        c.execute("INSERT INTO images (id, name, version, description, icon, protocols, "
                  "backend_refs, boot_template, visible, deprecated) "
                  "VALUES (1, 'i', '', '', '', '[]', '{}', '', 1, 0)")
        c.execute("INSERT INTO flavours (id, name, cpus, memory_mb, gpus, backend_refs) "
                  "VALUES (1, 'f', 1, 1, 0, '{}')")
        c.execute("INSERT INTO plans (id, image_id, flavour_id, backend, preset) "
                  "VALUES (1, 1, 1, 'local', 1)")
        c.execute("INSERT INTO instances (id, uid, name, owner_id, plan_id, backend, target, "
                  "status, status_reason, progress, reboot_requested, backend_state, "
                  "endpoints, ready_protocols, created_at, updated_at) VALUES (1, 'u', 'n', 1, "
                  "1, 'local', 'RUNNING', 'ACTIVE', '', '', 0, '{}', '{}', '[]', "
                  "'2026-01-01', '2026-01-01')")
        c.execute("INSERT INTO instance_members (id, instance_id, user_id, role, created_at) "
                  "VALUES (1, 1, 1, 'OWNER', '2026-01-01')")
    await db.upgrade()
    await db.check_schema()
    with sqlite3.connect(path) as c:
        for table in ("users", "plans", "instances", "instance_members"):
            assert c.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 1, table
        assert c.execute("PRAGMA foreign_key_check").fetchall() == []
    await db.close()
