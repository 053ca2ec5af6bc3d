"""List the options of rendered service configs that point outside the harness' own dirs.

Runs inside the services venv: ``python system_paths.py <allowed dirs> <service>=<config
file>...`` (``<allowed dirs>``: colon-separated, e.g. the cloud's run dir and the venv).
For each service, registers every option it (and the oslo libraries it uses) declares,
through the same ``oslo.config.opts`` entry points ``oslo-config-generator`` reads, loads
its config file, and reports ``{"group.option": value}`` for each option whose effective
value (defaults and ``$state_path``-style interpolation included) is an absolute path or
``file://`` URL outside the allowed dirs (e.g. /etc/keystone/fernet-keys, /var/lib/nova,
/tmp/staging), or a relative file name the service would look up in /etc (policy files),
plus ``"_missing"``: the namespaces this venv does not provide. Prints one JSON object
``{service: report}``. The harness' configs must leave every report empty, so no service
of a test cloud ever falls back to a host path, whether or not the feature behind the
option is on.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

from oslo_config import cfg, generator

# The oslo-config-generator namespaces of each service (from their etc/oslo-config-generator
# files), plus the libraries the harness' configuration switches on.
COMMON = ["oslo.log", "oslo.policy", "oslo.db", "oslo.middleware", "oslo.concurrency",
          "oslo.messaging", "keystonemiddleware.auth_token", "oslo.cache", "osprofiler"]
NAMESPACES = {
    "keystone": ["keystone"],
    "glance": ["glance.api", "glance.store", "glance.multi_store", "oslo.limit"],
    "placement": ["placement.conf"],
    "neutron": ["neutron", "neutron.agent", "neutron.db", "neutron.extensions",
                "neutron.ml2", "nova.auth", "oslo.service.wsgi", "oslo.reports"],
    "nova": ["nova.conf", "oslo.service.service", "oslo.service.periodic_task",
             "oslo.service.sslutils", "oslo.privsep", "oslo.reports", "os_vif",
             "oslo.limit", "castellan.config"],
}
PATH = re.compile(r"^(file://)?(/[^\s]*)$")
# options naming a file that oslo.config looks up in the config dirs, then ~ and /etc/<project>
LOOKED_UP = {"oslo_policy.policy_file", "oslo_policy.policy_dirs"}
IGNORED = {"DEFAULT.config_file", "DEFAULT.config_dir", "DEFAULT.config_source"}


def _register(conf: cfg.ConfigOpts, namespaces: list[str]) -> list[str]:
    missing = []
    for ns in namespaces:
        try:
            groups = generator._list_opts([ns])
        except Exception:  # a namespace the venv lacks (or fails to import)
            missing.append(ns)
            continue
        for _, listing in groups:
            for group, opts in listing:
                name = getattr(group, "name", group) or None
                for opt in opts:
                    try:
                        conf.register_opt(opt, group=None if name == "DEFAULT" else name)
                    except cfg.DuplicateOptError:
                        pass  # the same name declared twice: the first one wins
    return missing


def _walk(conf: cfg.ConfigOpts, allowed: list[str]) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def outside(item: str) -> bool:
        match = PATH.match(item)
        return match is not None and not any(
            match.group(2) == a or match.group(2).startswith(a.rstrip("/") + "/")
            for a in allowed)

    def check(key: str, value: Any) -> None:
        if key in IGNORED:
            return
        values = value if isinstance(value, list) else [value]
        for item in values:
            if isinstance(item, str) and (outside(item) or (
                    key in LOOKED_UP and not item.startswith("/"))):
                found[key] = value
                return

    for name in list(conf):
        try:
            value = conf[name]
        except Exception:  # an option whose default cannot be resolved here
            continue
        if isinstance(value, cfg.ConfigOpts.GroupAttr):
            for opt in list(value):
                try:
                    check(f"{name}.{opt}", value[opt])
                except Exception:
                    continue
        else:
            check(f"DEFAULT.{name}", value)
    return found


def report(service: str, allowed: list[str], path: str) -> dict[str, Any]:
    conf = cfg.ConfigOpts()
    # required options of middleware the harness does not use must not stop the listing
    conf._check_required_opts = lambda *a, **k: None  # type: ignore[method-assign]
    missing = _register(conf, COMMON + NAMESPACES[service])
    conf(args=[], project=service, default_config_files=[path], default_config_dirs=[],
         validate_default_values=False)
    return {**_walk(conf, allowed), "_missing": missing}


def main(allowed: list[str], services: list[str]) -> None:
    print(json.dumps({svc: report(svc, allowed, path)
                      for svc, path in (arg.split("=", 1) for arg in services)},
                     sort_keys=True))


if __name__ == "__main__":
    main(sys.argv[1].split(":"), sys.argv[2:])
