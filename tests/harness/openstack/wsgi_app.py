"""One WSGI entry point for every OpenStack API of the harness, served by gunicorn.

Runs inside the services venv (never imported by the test process). gunicorn loads
``wsgi_app:application``; env ``ATRIUM_OS_SERVICE`` picks the service and
``ATRIUM_OS_ETC`` is the session's rendered config dir. argv is cleared first because
every OpenStack app parses ``sys.argv`` with oslo.config and would choke on gunicorn's.
"""

from __future__ import annotations

import os
import sys
from typing import Any

sys.argv = sys.argv[:1]
_service = os.environ["ATRIUM_OS_SERVICE"]
_etc = os.environ["ATRIUM_OS_ETC"]


def _allow_loopback_subnets() -> None:
    """Let Neutron accept 127.0.0.0/8 subnets (harness only).

    neutron-lib rejects loopback CIDRs as "not routable". The harness wants them: servers
    get fixed IPs like 127.42.0.17 that the compute driver can really bind on this machine,
    so probes of a server's fixed IP stay on loopback.
    """
    import netaddr
    from neutron_lib.api import validators

    stock = validators.validators["type:subnet"]

    def validate_subnet(data: Any, valid_values: Any = None) -> str | None:
        try:
            net = netaddr.IPNetwork(data)
            if net.is_loopback() and "/" in data and net.network == net.ip:
                return None
        except Exception:  # malformed input: let the stock validator word the error
            pass
        result: str | None = stock(data, valid_values)
        return result

    validators.validators["type:subnet"] = validate_subnet


if _service == "keystone":
    os.environ.setdefault("OS_KEYSTONE_CONFIG_FILES", f"{_etc}/keystone.conf")
    from keystone.wsgi.api import application
elif _service == "glance":
    os.environ.setdefault("OS_GLANCE_CONFIG_DIR", _etc)
    from glance.wsgi.api import application
elif _service == "placement":
    os.environ.setdefault("OS_PLACEMENT_CONFIG_DIR", _etc)
    from placement.wsgi.api import application
elif _service == "neutron":
    os.environ.setdefault("OS_NEUTRON_CONFIG_DIR", _etc)
    os.environ.setdefault("OS_NEUTRON_CONFIG_FILES", "neutron.conf")
    _allow_loopback_subnets()
    import sqlalchemy.orm
    from neutron.db.migration.models import head  # noqa: F401  (registers every model)

    # Mappers must be configured before the first request, or the port_forwardings
    # backref on Port is missing and port queries fail.
    sqlalchemy.orm.configure_mappers()
    from neutron.wsgi.api import application
elif _service == "nova-api":
    os.environ.setdefault("OS_NOVA_CONFIG_DIR", _etc)
    os.environ.setdefault("OS_NOVA_CONFIG_FILES", "api-paste.ini;nova.conf")
    from nova.wsgi.osapi_compute import application
else:
    raise SystemExit(f"unknown ATRIUM_OS_SERVICE {_service!r}")

__all__ = ["application"]
