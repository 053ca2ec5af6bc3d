"""Seeding for the scale benchmark: users, experiments, instances and events in PostgreSQL.

Rows are made by ``INSERT ... SELECT generate_series`` statements, so 100,000 instances
take seconds. The schema comes from ``atrium db upgrade`` and the catalogue from
``atrium demo --seed-only``; this adds a plan on the FAKE backend (``spawners/fake.py``:
nothing runs) and the bulk rows, owned by users ``u00001``... Instances are at rest
(STOPPED or ERROR, so the reconciler leaves them alone) except a few that the fake
backend "runs" at the benchmark's own upstream.
"""

from __future__ import annotations

import psycopg

SEED_USERS = """
INSERT INTO users (username, email, display_name, posix_uid, created_at)
SELECT 'u' || lpad(g::text, 5, '0'), 'u' || g || '@example.org', 'User ' || g, 0,
       now() - interval '400 days'
FROM generate_series(1, %(users)s::int) g
"""

SEED_EXPERIMENTS = """
INSERT INTO experiments (proposal, title, instrument_id, start_date, end_date, data_path,
                         synced_at)
SELECT 'S' || lpad(g::text, 6, '0'), 'Scale experiment ' || g,
       (SELECT min(id) FROM instruments), current_date - 30, current_date + 30, '', now()
FROM generate_series(1, %(experiments)s::int) g
"""

SEED_EXPERIMENT_MEMBERS = """
INSERT INTO experiment_members (experiment_id, user_id)
SELECT DISTINCT e.id, u.id
FROM users u
JOIN experiments e ON e.proposal IN (
    'S' || lpad((1 + (u.id * 7) %% %(experiments)s)::text, 6, '0'),
    'S' || lpad((1 + (u.id * 13) %% %(experiments)s)::text, 6, '0'))
WHERE u.username LIKE 'u%%'
"""

# g: instance number. Owners cycle through the bench users; statuses are at rest.
SEED_INSTANCES = """
INSERT INTO instances (uid, name, owner_id, plan_id, backend, target, status, status_reason,
                       progress, reboot_requested, unrestricted_member_access, backend_state,
                       endpoints, ready_protocols, created_at, updated_at, activated_at,
                       deleted_at, termination_date, last_seen_at)
SELECT md5(%(tag)s::text || g), 'bench-' || g,
       (SELECT min(id) FROM users WHERE username LIKE 'u%%') + (g %% %(users)s),
       %(plan)s, 'fake',
       CASE WHEN g %% 10 = 0 THEN 'RUNNING' ELSE 'STOPPED' END,
       CASE WHEN g %% 10 = 0 THEN 'ERROR' ELSE 'STOPPED' END,
       '', '', false, false, '{}', '{}', '[]',
       now() - (g %% 30) * interval '1 day' - interval '1 hour',
       now() - interval '1 hour',
       now() - (g %% 30) * interval '1 day',
       NULL,
       now() + ((g %% 20) - 2) * interval '1 day' + (g %% 24) * interval '1 hour',
       now() - (g %% 6) * interval '1 day'
FROM generate_series(%(first)s::int, %(last)s::int) g
"""

SEED_MEMBERS = """
INSERT INTO instance_members (instance_id, user_id, role, created_at)
SELECT i.id, i.owner_id, 'OWNER', i.created_at FROM instances i WHERE i.name LIKE 'bench-%%'
  AND i.id >= %(min_id)s
UNION ALL
SELECT i.id, (SELECT min(id) FROM users WHERE username LIKE 'u%%')
             + ((i.owner_id + 1) %% %(users)s), 'USER', i.created_at
FROM instances i WHERE i.name LIKE 'bench-%%' AND i.id %% 5 = 0 AND i.id >= %(min_id)s
"""

SEED_INSTANCE_EXPERIMENTS = """
INSERT INTO instance_experiments (instance_id, experiment_id)
SELECT i.id, (SELECT min(id) FROM experiments WHERE proposal LIKE 'S%%')
             + (i.id %% %(experiments)s)
FROM instances i WHERE i.name LIKE 'bench-%%' AND i.id >= %(min_id)s
"""

SEED_SECRETS = """
INSERT INTO instance_secrets (instance_id, jupyter_token, vnc_password)
SELECT i.id, md5('t' || i.id), substr(md5('v' || i.id), 1, 8)
FROM instances i WHERE i.name LIKE 'bench-%%' AND i.id >= %(min_id)s
"""

# Events: for each instance an "active" and, for most, a later "stopped" (what accounting
# reads), then filler kinds up to the requested count.
SEED_EVENTS = """
INSERT INTO instance_events (instance_id, user_id, kind, detail, created_at)
SELECT i.id, NULL, k.kind, '', i.created_at + k.delay
FROM instances i
CROSS JOIN (VALUES ('active', interval '5 minutes'), ('stopped', interval '6 hours'))
     AS k(kind, delay)
WHERE i.name LIKE 'bench-%%' AND i.id >= %(min_id)s
"""

SEED_FILLER_EVENTS = """
INSERT INTO instance_events (instance_id, user_id, kind, detail, created_at)
SELECT (SELECT min(id) FROM instances WHERE name LIKE 'bench-%%') + (g %% %(instances)s),
       NULL, 'note', 'filler event ' || g, now() - (g %% 1000) * interval '1 minute'
FROM generate_series(1, %(count)s::int) g
"""

PLAN = """
INSERT INTO plans (image_id, flavour_id, backend, preset, enabled)
SELECT p.image_id, p.flavour_id, 'fake', false, true FROM plans p
WHERE p.image_id IN (SELECT id FROM images WHERE protocols::text LIKE '%%jupyter%%')
ORDER BY p.id LIMIT 1
RETURNING id
"""


def connect(url: str) -> psycopg.Connection:
    return psycopg.connect(url.replace("postgresql+asyncpg://", "postgresql://"),
                           autocommit=True)


def fake_plan(url: str) -> int:
    with connect(url) as conn:
        row = conn.execute(PLAN).fetchone()
        assert row is not None, "the demo catalogue has no JupyterLab plan"
        return int(row[0])


def seed(url: str, *, users: int, experiments: int, instances: int, events: int,
         plan: int) -> None:
    """Users, experiments and ``instances`` instances with about ``events`` events."""
    with connect(url) as conn:
        conn.execute(SEED_USERS, {"users": users})
        conn.execute(SEED_EXPERIMENTS, {"experiments": experiments})
        conn.execute(SEED_EXPERIMENT_MEMBERS, {"experiments": experiments})
    add_instances(url, first=1, count=instances, users=users, experiments=experiments,
                  plan=plan)
    with connect(url) as conn:
        filler = max(0, events - 2 * instances)
        if filler:
            conn.execute(SEED_FILLER_EVENTS, {"instances": instances, "count": filler})
        conn.execute("ANALYZE")


def add_instances(url: str, *, first: int, count: int, users: int, experiments: int,
                  plan: int) -> None:
    """``count`` more instances numbered from ``first``, with members, secrets, events."""
    with connect(url) as conn:
        row = conn.execute("SELECT coalesce(max(id), 0) + 1 FROM instances").fetchone()
        min_id = int(row[0]) if row else 1
        conn.execute(SEED_INSTANCES, {"tag": "bench", "users": users, "plan": plan,
                                      "first": first, "last": first + count - 1})
        params = {"min_id": min_id, "users": users, "experiments": experiments}
        for statement in (SEED_MEMBERS, SEED_INSTANCE_EXPERIMENTS, SEED_SECRETS, SEED_EVENTS):
            conn.execute(statement, params)
        conn.execute("ANALYZE")
