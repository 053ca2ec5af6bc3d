"""Helpers for the quota and catalogue tests: a migrated, seeded database; launches."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from orchestrator import lifecycle
from orchestrator.db import Database
from orchestrator.demo import seed
from orchestrator.errors import RequestError
from orchestrator.models import Experiment, Flavour, Plan, QuotaPolicy, QuotaScope, User


async def seeded(url: str, data_root: Path) -> Database:
    """A fresh database at ``url`` with the demo users, experiments and catalogue:
    alice (LOKI 20261001, DREAM 20261002), bob (DREAM 20261003), carol (STAFF, LOKI), admin;
    the ``large-gpu`` flavour is limited to STAFF and LOKI."""
    db = Database(url)
    await db.upgrade()
    await seed(db, data_root)
    return db


async def user_named(db: Database, username: str) -> User:
    async with db.session() as s:
        user = await s.scalar(select(User).where(User.username == username))
        assert user is not None
        return user


async def plan_on(db: Database, flavour: str) -> int:
    """The id of the JupyterLab plan on ``flavour``."""
    async with db.session() as s:
        plan_id = await s.scalar(select(Plan.id).join(Flavour, Flavour.id == Plan.flavour_id)
                                 .where(Flavour.name == flavour).order_by(Plan.id))
        assert plan_id is not None
        return int(plan_id)


async def experiment_ids(db: Database, *proposals: str) -> list[int]:
    async with db.session() as s:
        rows = {p: i for p, i in await s.execute(select(Experiment.proposal, Experiment.id))}
        return [rows[p] for p in proposals]


async def try_launch(db: Database, username: str, plan_id: int, experiments: list[int],
                     quota: int = 2, name: str = "test") -> tuple[int, str]:
    """Launch as ``username`` in its own transaction: (201, uid) or (status, message)."""
    async with db.session() as s:
        user = await s.scalar(select(User).where(User.username == username))
        assert user is not None
        try:
            instance = await lifecycle.launch(s, user, name=name, plan_id=plan_id,
                                              experiment_ids=experiments,
                                              backends=("local",), quota=quota)
            await s.commit()
        except RequestError as err:
            return err.status, err.message
        return 201, instance.uid


async def set_policy(db: Database, scope: QuotaScope, subject: str, **limits: object) -> None:
    async with db.session() as s:
        policy = await s.scalar(select(QuotaPolicy).where(QuotaPolicy.scope == scope,
                                                          QuotaPolicy.subject == subject))
        if policy is None:
            policy = QuotaPolicy(scope=scope, subject=subject)
            s.add(policy)
        for key, value in limits.items():
            setattr(policy, key, value)
        await s.commit()
