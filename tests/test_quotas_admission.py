"""Quota policies and admission, on SQLite and PostgreSQL (no server, no sessions started:
admission is decided before any backend is involved)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

import quotas.admission
from orchestrator import lifecycle
from orchestrator.db import Database
from orchestrator.models import Instance, Plan, QuotaPolicy, QuotaScope, Target, User
from orchestrator.settings import normalise_database_url
from quotas.policies import resolve
from quotas.usage import Usage, refusal
from tests.conftest import Databases
from tests.quota_helpers import experiment_ids, plan_on, seeded, set_policy, try_launch


@pytest.fixture
async def db(databases: Databases, tmp_path: Path) -> AsyncIterator[Database]:
    database = await seeded(normalise_database_url(databases.new()), tmp_path / "data")
    yield database
    await database.close()


async def instances_of(db: Database, username: str) -> int:
    async with db.session() as s:
        return int(await s.scalar(
            select(func.count()).select_from(Instance).join(User, User.id == Instance.owner_id)
            .where(User.username == username, Instance.target != Target.DELETED)) or 0)


# --- 20 concurrent launches, quota 2 -----------------------------------------------------

async def _slow_usage(monkeypatch: pytest.MonkeyPatch) -> None:
    """Widen the race window: every admission waits 20 ms between reading the user's use
    and inserting the instance, so unserialised admissions would all read the same count."""
    real = quotas.admission.usage_of

    async def slow(session: Any, user_id: int) -> Usage:
        usage = await real(session, user_id)
        await asyncio.sleep(0.02)
        return usage

    monkeypatch.setattr(quotas.admission, "usage_of", slow)


async def test_twenty_concurrent_launches_admit_exactly_the_quota(
        db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    await _slow_usage(monkeypatch)
    plan = await plan_on(db, "small")
    results = await asyncio.gather(*[try_launch(db, "alice", plan, [], quota=2, name=f"c{n}")
                                     for n in range(20)])
    statuses = sorted(status for status, _ in results)
    assert statuses == [201] * 2 + [409] * 18, results
    refusals = {message for status, message in results if status == 409}
    assert refusals == {"quota reached: you have 2 of 2 instances; delete one first"}
    assert await instances_of(db, "alice") == 2


async def test_without_the_lock_the_same_launches_overrun(
        db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """The negative control: it is the lock that keeps the test above at 2."""
    await _slow_usage(monkeypatch)

    async def no_lock(session: Any, user: Any) -> None:
        return None

    monkeypatch.setattr(quotas.admission, "lock_user", no_lock)
    plan = await plan_on(db, "small")
    results = await asyncio.gather(*[try_launch(db, "alice", plan, [], quota=2, name=f"c{n}")
                                     for n in range(20)])
    assert sum(status == 201 for status, _ in results) > 2
    assert await instances_of(db, "alice") > 2


# --- resource limits and the messages that name them -------------------------------------

async def test_resource_limits_name_the_limit_hit(db: Database) -> None:
    small, medium = await plan_on(db, "small"), await plan_on(db, "medium")
    await set_policy(db, QuotaScope.USER, "alice", max_instances=5, max_cpus=3,
                     max_memory_mb=11264)
    assert (await try_launch(db, "alice", medium, []))[0] == 201  # 2 vCPU, 8 GiB
    status, message = await try_launch(db, "alice", medium, [])
    assert (status, message) == (409, "quota reached: you use 2 of 3 vCPU and the medium "
                                      "flavour needs 2 more; delete an instance or choose a "
                                      "smaller plan")
    assert (await try_launch(db, "alice", small, []))[0] == 201  # 3 of 3 vCPU, 10 of 11 GiB
    status, message = await try_launch(db, "alice", small, [])
    assert status == 409 and "you use 3 of 3 vCPU" in message
    await set_policy(db, QuotaScope.USER, "alice", max_cpus=None)
    status, message = await try_launch(db, "alice", small, [])
    assert status == 409 and "you use 10 of 11 GiB of memory and the small flavour needs 2 " \
                             "more" in message
    assert await instances_of(db, "alice") == 2


async def test_gpu_quota_and_flavours_bigger_than_the_quota(db: Database) -> None:
    gpu = await plan_on(db, "large-gpu")
    loki = await experiment_ids(db, "20261001")
    await set_policy(db, QuotaScope.DEFAULT, "", max_gpus=0)
    status, message = await try_launch(db, "alice", gpu, loki)
    assert (status, message) == (409, "quota too small: the large-gpu flavour needs 1 GPU and "
                                      "your quota allows 0 in total; choose a smaller plan")
    await set_policy(db, QuotaScope.ROLE, "STAFF", max_gpus=1)
    assert (await try_launch(db, "carol", gpu, []))[0] == 201  # staff: the role's GPU
    status, message = await try_launch(db, "carol", gpu, [])
    assert status == 409 and "you use 1 of 1 GPU" in message


async def test_lifetime_limit_sets_the_termination_date(db: Database) -> None:
    await set_policy(db, QuotaScope.ROLE, "STAFF", max_lifetime_hours=48)
    before = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    status, uid = await try_launch(db, "carol", await plan_on(db, "small"), [])
    assert status == 201
    async with db.session() as s:
        instance = await s.scalar(select(Instance).where(Instance.uid == uid))
        assert instance is not None and instance.termination_date is not None
        assert dt.timedelta(hours=47.9) < instance.termination_date - before \
            < dt.timedelta(hours=48.1)


async def test_deleting_frees_the_quota_at_once(db: Database) -> None:
    plan = await plan_on(db, "small")
    uids = [(await try_launch(db, "bob", plan, [], quota=1))[1] for _ in range(2)]
    assert uids[1] == "quota reached: you have 1 of 1 instances; delete one first"
    async with db.session() as s:
        instance = await s.scalar(select(Instance).where(Instance.uid == uids[0]))
        assert instance is not None
        instance.target = Target.DELETED  # what a delete request writes
        await s.commit()
    assert (await try_launch(db, "bob", plan, [], quota=1))[0] == 201


# --- flavour limits ----------------------------------------------------------------------

async def test_flavour_limited_to_a_role_or_an_instrument(db: Database) -> None:
    gpu = await plan_on(db, "large-gpu")
    loki, dream = await experiment_ids(db, "20261001", "20261002")
    bobs = await experiment_ids(db, "20261003")
    status, message = await try_launch(db, "bob", gpu, bobs)
    assert (status, message) == (403, "the large-gpu flavour is reserved for STAFF, or "
                                      "experiments on LOKI; select one of those experiments")
    status, message = await try_launch(db, "alice", gpu, [dream])
    assert status == 403 and "reserved for STAFF, or experiments on LOKI" in message
    assert (await try_launch(db, "alice", gpu, [loki, dream]))[0] == 201
    assert (await try_launch(db, "carol", gpu, []))[0] == 201  # STAFF
    assert (await try_launch(db, "admin", gpu, []))[0] == 201  # admins may use everything
    assert await instances_of(db, "bob") == 0


async def test_plans_offered_follow_the_flavour_limits(db: Database) -> None:
    async with db.session() as s:
        offered = {}
        for name in ("alice", "bob", "carol"):
            user = await s.scalar(select(User).where(User.username == name))
            assert user is not None
            offered[name] = {p.flavour.name for p in await lifecycle.plans_for(s, user)}
    assert "large-gpu" in offered["alice"]  # a LOKI experiment
    assert "large-gpu" in offered["carol"]  # STAFF
    assert "large-gpu" not in offered["bob"]
    assert {"small", "medium"} <= offered["bob"]


async def test_disabled_plans_cannot_be_launched(db: Database) -> None:
    plan = await plan_on(db, "medium")
    async with db.session() as s:
        row = await s.get(Plan, plan)
        assert row is not None
        row.enabled = False
        await s.commit()
    assert await try_launch(db, "alice", plan, []) == (404, f"unknown plan {plan}")


# --- policy resolution (pure) ------------------------------------------------------------

def policy(scope: QuotaScope, subject: str = "", **limits: Any) -> QuotaPolicy:
    return QuotaPolicy(scope=scope, subject=subject, **limits)


POLICIES = [
    policy(QuotaScope.DEFAULT, max_instances=2, max_cpus=4, max_gpus=0),
    policy(QuotaScope.ROLE, "STAFF", max_instances=4, max_cpus=16, max_lifetime_hours=1440),
    policy(QuotaScope.ROLE, "INSTRUMENT_SCIENTIST", max_instances=6),
    policy(QuotaScope.GROUP, "gpu-users", max_gpus=2),
    policy(QuotaScope.GROUP, "big-gpu", max_gpus=4),
    policy(QuotaScope.USER, "dora", max_instances=1),
]


@pytest.mark.parametrize("who, roles, groups, expected", [
    # nobody special: the default policy; memory unlimited
    ("eve", [], [], {"instances": 2, "cpus": 4, "memory_mb": None, "gpus": 0}),
    # a role overrides the default, per limit (gpus still from the default)
    ("sam", ["STAFF"], [], {"instances": 4, "cpus": 16, "gpus": 0, "lifetime_hours": 1440}),
    # two roles: the more generous
    ("sam", ["STAFF", "INSTRUMENT_SCIENTIST"], [], {"instances": 6, "cpus": 16}),
    # a group beats a role; two groups: the more generous
    ("gus", ["STAFF"], ["gpu-users", "big-gpu"], {"gpus": 4, "instances": 4}),
    # the user's own policy beats everything, for the limits it sets
    ("dora", ["STAFF"], ["gpu-users"], {"instances": 1, "cpus": 16, "gpus": 2}),
])
def test_most_specific_policy_wins_per_limit(who: str, roles: list[str], groups: list[str],
                                             expected: dict[str, Any]) -> None:
    limits = resolve(POLICIES, username=who, roles=roles, groups=groups, default_instances=9)
    assert {k: getattr(limits, k) for k in expected} == expected


def test_without_policies_the_setting_is_the_fallback() -> None:
    limits = resolve([], username="x", roles=[], groups=[], default_instances=2)
    assert (limits.instances, limits.cpus, limits.gpus) == (2, None, None)
    assert limits.sources == {"instances": "ATRIUM_DEFAULT_QUOTA"}
    limits = resolve(POLICIES, username="dora", roles=["STAFF"], groups=[],
                     default_instances=2)
    assert limits.sources["instances"] == "user dora"
    assert limits.sources["cpus"] == "role STAFF"
    assert limits.sources["gpus"] == "default"


def test_refusals_say_which_limit() -> None:
    from quotas.policies import Limits

    limits = Limits(instances=2, cpus=4, memory_mb=8192, gpus=1)
    assert refusal(limits, Usage(1, 2, 4096, 0), "small", 1, 2048, 0) is None
    assert refusal(limits, Usage(2, 2, 4096, 0), "small", 1, 2048, 0) == \
        "quota reached: you have 2 of 2 instances; delete one first"
    assert "you use 3 of 4 vCPU and the medium flavour needs 2 more" in \
        str(refusal(limits, Usage(1, 3, 0, 0), "medium", 2, 2048, 0))
    assert "you use 6 of 8 GiB of memory and the big flavour needs 4 more" in \
        str(refusal(limits, Usage(1, 1, 6144, 0), "big", 1, 4096, 0))
    assert "needs 2 GPU and your quota allows 1 in total" in \
        str(refusal(limits, Usage(0, 0, 0, 0), "gpu", 1, 1024, 2))
