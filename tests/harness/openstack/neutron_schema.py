"""Create Neutron's schema for a fresh harness database, then stamp it at the heads.

Runs inside the services venv: ``python neutron_schema.py <neutron.conf>``.
Neutron 29's alembic migrations do not run on PostgreSQL (nor SQLite), so the tables are
created from the models and alembic is told they are current.
"""

from __future__ import annotations

import configparser
import sys

import sqlalchemy as sa
from neutron.db.migration.models import head


def main(conf_path: str) -> None:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(conf_path)
    engine = sa.create_engine(parser["database"]["connection"])
    head.get_metadata().create_all(engine)
    engine.dispose()

    from neutron.db.migration import cli

    sys.argv = ["neutron-db-manage", "--config-file", conf_path, "stamp", "heads"]
    cli.main()


if __name__ == "__main__":
    main(sys.argv[1])
