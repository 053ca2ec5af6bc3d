"""The `atrium` command."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import os
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from sqlalchemy import select

from orchestrator import cli_catalog, logs
from orchestrator.db import Database, SchemaOutOfDate
from orchestrator.errors import RequestError
from orchestrator.settings import Settings, SettingsError, load_settings


def _db(settings: Settings) -> Database:
    return Database(settings.database_url)


async def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    from web.app import serve

    await serve(settings)
    return 0


async def cmd_db_upgrade(settings: Settings, args: argparse.Namespace) -> int:
    db = _db(settings)
    try:
        before, head = await db.revisions()
        await db.upgrade()
        print(f"database at revision {head} (was {before or 'empty'})")
    finally:
        await db.close()
    return 0


async def cmd_db_current(settings: Settings, args: argparse.Namespace) -> int:
    db = _db(settings)
    try:
        current, head = await db.revisions()
    finally:
        await db.close()
    print(f"current: {current or 'none'}  head: {head}")
    return 0 if current == head else 1


async def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from orchestrator.demo import seed

    db = _db(settings)
    try:
        await db.upgrade()
        print(await seed(db, settings.state_dir / "demo-data"))
    finally:
        await db.close()
    if args.seed_only:
        return 0
    print(f"\n  Atrium demo: open {settings.public_url} and log in as alice, bob, carol "
          "or admin.\n")
    return await cmd_serve(settings, args)


async def cmd_sync(settings: Settings, args: argparse.Namespace) -> int:
    from orchestrator import experiments_sync

    db = _db(settings)
    try:
        await db.check_schema()
        if args.file:
            data_root = Path(args.data_root).resolve() if args.data_root else None
            records, users = experiments_sync.read_file(Path(args.file), data_root)
            async with db.session() as s:
                report = await experiments_sync.apply(s, records, users)
                await s.commit()
        else:
            if not settings.experiments_file and not settings.experiments_sql_url:
                raise RequestError("no source: give a FILE, or set ATRIUM_EXPERIMENTS_FILE or "
                                   "ATRIUM_EXPERIMENTS_SQL_URL")
            report = await experiments_sync.sync_from_settings(settings, db)
    finally:
        await db.close()
    print(report)
    return 0


async def cmd_token_create(settings: Settings, args: argparse.Namespace) -> int:
    from orchestrator.models import User
    from orchestrator.tokens import create_token

    db = _db(settings)
    try:
        await db.check_schema()
        async with db.session() as s:
            user = await s.scalar(select(User).where(User.username == args.username))
            if user is None:
                raise RequestError(f"no user {args.username!r}")
            days = args.expires_days or settings.token_default_days
            if not 1 <= days <= settings.token_max_days:
                raise RequestError(f"--expires-days must be between 1 and "
                                   f"{settings.token_max_days} (ATRIUM_TOKEN_MAX_DAYS)")
            lifetime = dt.timedelta(days=days)
            token = await create_token(s, user, args.name, lifetime)
            await s.commit()
    finally:
        await db.close()
    print(token)
    return 0


async def cmd_user_link(settings: Settings, args: argparse.Namespace) -> int:
    """Tie an existing account to a provider identity (the admin's answer to a refused
    first login: "an Atrium account named X already exists")."""
    from orchestrator.logins import IdentityConflict, link_identity

    issuer = (args.issuer or settings.oidc_issuer).rstrip("/")
    if not issuer:
        raise RequestError("give --issuer or set ATRIUM_OIDC_ISSUER")
    db = _db(settings)
    try:
        await db.check_schema()
        async with db.session() as s:
            try:
                await link_identity(s, args.username, issuer, args.subject)
            except IdentityConflict as err:
                raise RequestError(str(err)) from None
            await s.commit()
    finally:
        await db.close()
    print(f"{args.username} is linked to {args.subject} at {issuer}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="atrium", description="Analysis sessions next to the data.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the portal (web, API, proxy, reconciler)")
    demo = sub.add_parser("demo", help="set up demo data on the embedded default and serve")
    demo.add_argument("--seed-only", action="store_true", help="seed, do not serve")
    db = sub.add_parser("db", help="database schema").add_subparsers(dest="db_command",
                                                                    required=True)
    db.add_parser("upgrade", help="migrate the schema to this version")
    db.add_parser("current", help="show the schema revision (exit 1 when out of date)")
    sync = sub.add_parser("sync-experiments", help="sync the experiment catalogue")
    sync.add_argument("file", nargs="?", help="YAML or CSV file (default: the settings' sources)")
    sync.add_argument("--data-root", help="base of relative data paths in FILE")
    token = sub.add_parser("token", help="API tokens").add_subparsers(dest="token_command",
                                                                     required=True)
    create = token.add_parser("create", help="create an API token for USER and print it")
    create.add_argument("username")
    create.add_argument("--name", default="cli", help="a label for the token")
    create.add_argument("--expires-days", type=int, default=0,
                        help="days until the token expires (default: "
                             "ATRIUM_TOKEN_DEFAULT_DAYS)")
    user = sub.add_parser("user", help="accounts").add_subparsers(dest="user_command",
                                                                   required=True)
    link = user.add_parser("link", help="link USERNAME to the provider's SUBJECT (its first "
                                        "login was refused: the account already existed)")
    link.add_argument("username")
    link.add_argument("subject", help="the provider's 'sub' (shown on the refused login page)")
    link.add_argument("--issuer", help="default: ATRIUM_OIDC_ISSUER")
    cli_catalog.add_parsers(sub)
    return p


COMMANDS: dict[str, Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, int]]] = {
    "serve": cmd_serve, "demo": cmd_demo, "db upgrade": cmd_db_upgrade,
    "db current": cmd_db_current, "sync-experiments": cmd_sync,
    "token create": cmd_token_create, "user link": cmd_user_link,
    **cli_catalog.COMMANDS,
}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("tornado.access").setLevel(logging.WARNING)
    name = " ".join(filter(None, [args.command, getattr(args, "db_command", None),
                                  getattr(args, "token_command", None),
                                  getattr(args, "user_command", None),
                                  getattr(args, "catalog_command", None)]))
    env = dict(os.environ)
    if args.command == "demo":
        env.setdefault("ATRIUM_DEMO_MODE", "true")
    try:
        settings = load_settings(env)
        logs.configure(settings.log_format, args.verbose)
        return asyncio.run(COMMANDS[name](settings, args))
    except SettingsError as err:
        print(f"atrium: bad setting: {err}", file=sys.stderr)
    except SchemaOutOfDate as err:
        print(f"atrium: {err}", file=sys.stderr)
    except RequestError as err:
        print(f"atrium: {err.message}", file=sys.stderr)
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
