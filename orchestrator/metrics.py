"""Prometheus metrics of one Atrium process (``prometheus_client``), in one registry.

Every process counts what it did itself (the launches it recorded, the sessions it drove to
ACTIVE, the bytes its proxy relayed); Prometheus sums the replicas. The gauges that describe
shared state (instances by status) are read from the database at scrape time
(:func:`refresh_instances`), so any replica reports the whole deployment.

Names follow the Prometheus conventions: ``atrium_`` prefix, ``_total`` counters, base units
(seconds, bytes). The functions below are the only way the rest of Atrium touches metrics:
one line at each place something worth counting happens, never a failure of its own.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest
from sqlalchemy import func, select

from orchestrator.db import Database
from orchestrator.models import Instance, InstanceStatus

REGISTRY = CollectorRegistry(auto_describe=True)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

INSTANCES = Gauge("atrium_instances", "Instances (not deleted) by status and backend",
                  ["status", "backend"], registry=REGISTRY)
LAUNCHES = Counter("atrium_launches", "Launches recorded (API or page), by plan and backend",
                   ["plan", "backend"], registry=REGISTRY)
LAUNCH_FAILURES = Counter("atrium_launch_failures",
                          "Launches that ended in ERROR before ever being ACTIVE",
                          ["plan", "backend"], registry=REGISTRY)
LAUNCH_SECONDS = Histogram(
    "atrium_launch_duration_seconds", "From the launch request to ACTIVE",
    ["backend"], registry=REGISTRY,
    buckets=(1, 2.5, 5, 10, 20, 30, 60, 120, 180, 300, 600, 1200))
PROXY_REQUESTS = Counter("atrium_proxy_requests", "HTTP requests relayed to sessions",
                         registry=REGISTRY)
PROXY_BYTES = Counter("atrium_proxy_bytes", "Bytes relayed by the proxy and bridges",
                      ["direction"], registry=REGISTRY)  # up: to the session; down: to users
WEBSOCKETS = Gauge("atrium_proxy_websockets_open", "WebSockets open to sessions",
                   ["kind"], registry=REGISTRY)
UPSTREAM_ERRORS = Counter("atrium_proxy_upstream_errors",
                          "Sessions that did not answer the proxy (502)", ["kind"],
                          registry=REGISTRY)
RECONCILE_SECONDS = Histogram("atrium_reconcile_pass_duration_seconds",
                              "Duration of one full reconcile pass", registry=REGISTRY,
                              buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
QUOTA_REFUSALS = Counter("atrium_quota_refusals", "Launches refused by a quota",
                         ["backend"], registry=REGISTRY)
LEADER = Gauge("atrium_scheduler_leader",
               "1 while this process holds the scheduler lease", registry=REGISTRY)
LOGIN_FAILURES = Counter("atrium_login_failures", "Refused logins, by method", ["method"],
                         registry=REGISTRY)
INFO = Gauge("atrium_build_info", "Constant 1, labelled with the version",
             ["version"], registry=REGISTRY)


def _version() -> str:
    try:
        return importlib.metadata.version("atrium")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


INFO.labels(_version()).set(1)


def plan_label(instance_or_plan: Any) -> str:
    """``image/flavour`` of a plan (or of an instance's plan); "" when not loaded."""
    plan = getattr(instance_or_plan, "plan", instance_or_plan)
    try:
        return f"{plan.image.name}/{plan.flavour.name}"
    except Exception:  # a detached row without its relationships: count it unlabelled
        return ""


def launched(plan: Any, backend: str) -> None:
    LAUNCHES.labels(plan_label(plan), backend).inc()


def instance_changed(instance: Instance, event: str, never_active: bool) -> None:
    """Called by the reconciler after it recorded ``event`` on ``instance`` (``never_active``:
    it had not been ACTIVE before): its first ``active`` observes the launch duration; an
    ``error`` before any activation is a failed launch."""
    if not never_active:
        return
    if event == "active" and instance.activated_at is not None and instance.created_at:
        seconds = (instance.activated_at - instance.created_at).total_seconds()
        LAUNCH_SECONDS.labels(instance.backend).observe(max(seconds, 0.0))
    elif event == "error":
        LAUNCH_FAILURES.labels(plan_label(instance), instance.backend).inc()


def track_leader(is_leader: Callable[[], bool]) -> None:
    LEADER.set_function(lambda: 1.0 if is_leader() else 0.0)


async def refresh_instances(db: Database) -> None:
    """Set :data:`INSTANCES` from the database (one grouped query)."""
    async with db.session() as s:
        rows = (await s.execute(
            select(Instance.status, Instance.backend, func.count())
            .where(Instance.status != InstanceStatus.DELETED)
            .group_by(Instance.status, Instance.backend))).all()
    INSTANCES.clear()
    for status, backend, count in rows:
        INSTANCES.labels(status.value, backend).set(count)


def exposition() -> bytes:
    """The registry in the Prometheus text format."""
    return generate_latest(REGISTRY)
