"""The `atrium catalog`, `atrium usage` and `atrium quota` commands (admins' tools)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from sqlalchemy import select

from orchestrator.announce import Announcer, Change
from orchestrator.catalog import apply_spec, dump_catalog, export_catalog, load_catalog
from orchestrator.catalog_spec import parse_catalog
from orchestrator.db import Database
from orchestrator.errors import RequestError
from orchestrator.settings import Settings

Command = Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, int]]


async def cmd_catalog_apply(settings: Settings, args: argparse.Namespace) -> int:
    """Validate the whole file first (nothing changes on error), then apply it in one
    transaction, printing the diff; a dry run rolls the transaction back."""
    spec = parse_catalog(load_catalog(Path(args.file)), args.file)
    db = Database(settings.database_url)
    try:
        await db.check_schema()
        async with db.session() as s:
            changes = await apply_spec(s, spec, prune=args.prune)
            if args.dry_run:
                await s.rollback()
            else:  # every running portal hears of it (PostgreSQL)
                await Announcer(db).commit(s, Change("catalogue"))
    finally:
        await db.close()
    for change in changes:
        print(change)
    if not changes:
        print("no changes: the database already matches the catalogue")
    elif args.dry_run:
        print(f"dry run: {len(changes)} change(s) would be made; nothing was changed")
    else:
        print(f"{len(changes)} change(s) applied")
    return 0


async def cmd_catalog_export(settings: Settings, args: argparse.Namespace) -> int:
    db = Database(settings.database_url)
    try:
        await db.check_schema()
        async with db.session() as s:
            text = dump_catalog(await export_catalog(s))
    finally:
        await db.close()
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


async def cmd_usage(settings: Settings, args: argparse.Namespace) -> int:
    from quotas.accounting import DIMENSIONS, account, parse_time

    since, until = parse_time(args.since, "--since"), parse_time(args.until, "--until")
    db = Database(settings.database_url)
    try:
        await db.check_schema()
        async with db.session() as s:
            report = await account(s, since=since, until=until)
    finally:
        await db.close()
    if args.csv:
        sys.stdout.write(report.csv())
        return 0
    print(f"usage from {since or 'the beginning'} to {report.until:%Y-%m-%d %H:%M} UTC")
    for dimension in DIMENSIONS:
        print(f"\n{'by ' + dimension:<24} {'instances':>9} {'hours':>10} {'vCPU-h':>10} "
              f"{'GPU-h':>8} {'GiB-h':>10}")
        for name, t in report.rows(dimension):
            print(f"{name:<24} {len(t.instances):>9} {t.hours:>10.2f} {t.vcpu_hours:>10.2f} "
                  f"{t.gpu_hours:>8.2f} {t.memory_gib_hours:>10.2f}")
    return 0


async def cmd_quota(settings: Settings, args: argparse.Namespace) -> int:
    from orchestrator.models import User
    from quotas.admission import quota_status

    db = Database(settings.database_url)
    try:
        await db.check_schema()
        async with db.session() as s:
            user = await s.scalar(select(User).where(User.username == args.username))
            if user is None:
                raise RequestError(f"no user {args.username!r}")
            status = await quota_status(s, user, settings.default_quota)
    finally:
        await db.close()
    for line in status.lines():
        source = status.limits.sources.get(line.name, "")
        limit = f"of {line.limit}" if line.limit is not None else "(no limit)"
        print(f"{line.label:<10} {line.used} {limit}" + (f"  [{source}]" if source else ""))
    hours = status.limits.lifetime_hours
    if hours is None:
        print("lifetime   (no limit)")
    else:
        print(f"lifetime   at most {hours:g} hours  [{status.limits.sources['lifetime_hours']}]")
    return 0


def add_parsers(sub: Any) -> None:
    """Add the commands to ``atrium``'s subparsers."""
    catalog = sub.add_parser("catalog", help="images, flavours, plans and quota policies"
                             ).add_subparsers(dest="catalog_command", required=True)
    apply = catalog.add_parser("apply", help="make the catalogue match FILE (prints a diff)")
    apply.add_argument("file", help="a catalogue YAML file, e.g. images/catalog.yaml")
    apply.add_argument("--dry-run", action="store_true", help="show the diff, change nothing")
    apply.add_argument("--prune", action="store_true",
                       help="also remove what the file's sections do not list (what is still "
                            "in use is disabled or deprecated instead)")
    export = catalog.add_parser("export", help="print the catalogue as YAML")
    export.add_argument("-o", "--output", help="write to this file instead")
    usage = sub.add_parser("usage", help="instance-hours per user, experiment, instrument")
    usage.add_argument("--csv", action="store_true", help="CSV on standard output")
    usage.add_argument("--since", help="from this date/time (UTC), e.g. 2026-11-01")
    usage.add_argument("--until", help="up to this date/time (UTC; default: now)")
    quota = sub.add_parser("quota", help="a user's limits and current use")
    quota.add_argument("username")


COMMANDS: dict[str, Command] = {
    "catalog apply": cmd_catalog_apply, "catalog export": cmd_catalog_export,
    "usage": cmd_usage, "quota": cmd_quota,
}
