"""The chart with real Helm, no cluster: lint, template with the minimal site values and with
every documented option on, the schema's refusals, the restricted pod security standard, and
RBAC that covers exactly what the Kubernetes backend calls."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from tests.helm.chart import (
    CHART,
    ROOT,
    ci_values,
    find,
    merged,
    objects,
    pod_specs,
    render,
    restricted_violations,
)

KUBE_VERSIONS = ("v1.20.2", "v1.30.0")  # the harness's API server; a current one


@pytest.mark.parametrize("kube", KUBE_VERSIONS)
@pytest.mark.parametrize("values", ["minimal", "all-options"])
def test_helm_lint_is_clean(helm: Any, values: str, kube: str) -> None:
    report = helm.lint(str(CHART), ci_values(values), strict=True, kube_version=kube)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def _leaves(tree: dict[str, Any], prefix: str = "") -> set[str]:
    out = set()
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out |= _leaves(value, path + ".")
        else:
            out.add(path)
    return out


def test_every_value_is_documented_and_switched_on_in_all_options() -> None:
    """values.yaml documents each value (a comment right above it), and
    ci/all-options-values.yaml sets every one (the "every option on" rendering)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented = []
    parents: list[tuple[int, bool]] = []  # (indent, documented) of the enclosing keys
    for i, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z][A-Za-z0-9]*):\s*(\S.*)?$", line)
        if not match:
            continue
        indent = len(match.group(1))
        parents = [p for p in parents if p[0] < indent]
        documented = lines[i - 1].strip().startswith("#") or any(d for _, d in parents)
        parents.append((indent, documented))
        if match.group(3) is not None and not documented:  # a value, not a section
            undocumented.append(match.group(2))
    assert undocumented == []
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    everything = ci_values("all-options")
    missing = {leaf for leaf in _leaves(defaults)
               if not any(o == leaf or o.startswith(leaf + ".") for o in _leaves(everything))}
    assert missing == set()


def test_defaults_deploy_two_probed_replicas_with_hooks_and_namespaced_rbac(helm: Any) -> None:
    objs = objects(render(helm, ci_values("minimal")))
    kinds = {o["kind"] for o in objs}
    assert {"Deployment", "Service", "Ingress", "PodDisruptionBudget", "ServiceAccount",
            "Role", "RoleBinding", "NetworkPolicy", "Job"} <= kinds
    assert not kinds & {"ClusterRole", "ClusterRoleBinding", "ServiceMonitor", "Namespace"}
    deployment = find(objs, "Deployment")[0]
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    portal = pod["containers"][0]
    assert portal["args"] == ["atrium", "serve"]
    assert portal["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert portal["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert portal["resources"]["requests"] and portal["resources"]["limits"]
    env = {e["name"]: e for e in portal["env"]}
    assert env["ATRIUM_COOKIE_SECRET"]["valueFrom"]["secretKeyRef"] == {
        "name": "atrium", "key": "cookie-secret"}
    assert env["ATRIUM_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "atrium", "key": "database-url"}
    assert env["ATRIUM_K8S_NAMESPACE"]["value"] == "atrium"  # the release namespace
    assert pod["automountServiceAccountToken"] is True
    assert not find(objs, "Secret"), "secrets are referenced, never made from values"
    (job,) = find(objs, "Job")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["atrium", "db",
                                                                       "upgrade"]
    assert job["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    pdb = find(objs, "PodDisruptionBudget")[0]
    assert pdb["spec"]["minAvailable"] == 1
    ingress = find(objs, "Ingress")[0]
    assert [r["host"] for r in ingress["spec"]["rules"]] == ["atrium.example.org"]
    timeouts = ingress["metadata"]["annotations"]
    assert timeouts["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "3600"
    assert timeouts["nginx.ingress.kubernetes.io/proxy-send-timeout"] == "3600"


def test_every_option_on_renders_what_it_promises(helm: Any) -> None:
    objs = objects(render(helm, ci_values("all-options")))
    deployment = find(objs, "Deployment")[0]
    pod = deployment["spec"]["template"]["spec"]
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in env.values()
            if "secretKeyRef" in e.get("valueFrom", {})}
    assert refs == {"atrium", "atrium-database", "atrium-oidc", "atrium-smtp",
                    "atrium-metrics"}
    assert env["ATRIUM_SESSIONS_DOMAIN"]["value"] == "sessions.example.org"
    assert env["ATRIUM_HOST"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["clouds"]["secret"]["secretName"] == "atrium-clouds"
    (config,) = find(objs, "ConfigMap", "atrium")
    assert yaml.safe_load(config["data"]["pod-config.yaml"])["home_path"] == "/home/jovyan"
    assert "20260001" in config["data"]["experiments.yaml"]
    for kind in ("Role", "RoleBinding", "NetworkPolicy"):
        assert {o["metadata"]["namespace"] for o in find(objs, kind)} == {"atrium-sessions"}
    ingress = find(objs, "Ingress")[0]
    assert [r["host"] for r in ingress["spec"]["rules"]] == [
        "atrium.example.org", "*.sessions.example.org"]
    assert {t["secretName"] for t in ingress["spec"]["tls"]} == {"atrium-tls",
                                                                  "atrium-sessions-tls"}
    weight = {f"{o['kind']}/{o['metadata']['name']}":
              int(o["metadata"]["annotations"]["helm.sh/hook-weight"]) for o in objs
              if "helm.sh/hook" in (o["metadata"].get("annotations") or {})}
    # The URL secret, then the catalogue file, the migration, the catalogue applied.
    assert list(sorted(weight, key=weight.__getitem__)) == [
        "Secret/atrium-database", "ConfigMap/atrium-catalog", "Job/atrium-migrate",
        "Job/atrium-catalog"]
    job = find(objs, "Job", "atrium-catalog")[0]["spec"]["template"]["spec"]["containers"][0]
    assert job["args"] == ["atrium", "catalog", "apply", "$(ATRIUM_CATALOG_FILE)", "--prune"]
    monitor = find(objs, "ServiceMonitor")[0]
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert find(objs, "Service")[0]["spec"]["ports"][1] == {
        "name": "metrics", "port": 9100, "targetPort": "metrics", "protocol": "TCP"}


@pytest.mark.parametrize("values", ["minimal", "all-options"])
def test_every_pod_passes_the_restricted_pod_security_standard(helm: Any, values: str) -> None:
    specs = pod_specs(objects(render(helm, ci_values(values))))
    assert len(specs) >= 2
    assert {name: restricted_violations(spec) for name, spec in specs} == {
        name: [] for name, _ in specs}


def test_restricted_check_catches_a_privileged_pod() -> None:
    """The checker itself: a pod a restricted namespace would refuse."""
    bad = {"hostNetwork": True, "volumes": [{"name": "h", "hostPath": {"path": "/"}}],
           "containers": [{"name": "c", "securityContext": {"privileged": True}}]}
    assert len(restricted_violations(bad)) == 7


_CALLS = re.compile(r"\b(create|delete|patch|read|list|replace)_namespaced_([a-z_]+?)\(")
_VERBS = {"create": "create", "delete": "delete", "patch": "patch", "read": "get",
          "list": "list", "replace": "update"}


def test_role_covers_what_the_kubernetes_backend_calls_and_no_more(helm: Any) -> None:
    source = "".join(p.read_text() for p in (ROOT / "spawners").glob("k*.py"))
    needed = {(res + "s", _VERBS[verb]) for verb, res in _CALLS.findall(source)}
    needed.add(("pods", "watch"))  # the shared watch (list with watch=True)
    role = find(objects(render(helm, ci_values("minimal"))), "Role")[0]
    granted = {(res, verb) for rule in role["rules"] for res in rule["resources"]
               for verb in rule["verbs"]}
    assert needed <= granted, f"missing: {needed - granted}"
    assert all("*" not in rule["verbs"] and "*" not in rule["resources"]
               for rule in role["rules"])
    resources = {res for res, _ in granted}
    # Sessions' objects, their events and NetworkPolicies (one per session): nothing else.
    assert resources == {"pods", "secrets", "services", "events", "networkpolicies"}


BAD_VALUES = [
    ({"portal": {"replicas": 0}}, "/portal/replicas"),
    ({"portal": {"logFormat": "xml"}}, "/portal/logFormat"),
    ({"portal": {"publicUrl": "atrium.example.org"}}, "/portal/publicUrl"),
    ({"portal": {"backends": ["docker"]}}, "/portal/backends/0"),
    ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    ({"sessions": {"domain": "*.sessions.example.org"}}, "/sessions/domain"),
    ({"database": {"url": "mysql://db/atrium"}}, "/database/url"),
    ({"metrics": {"port": 70000}}, "/metrics/port"),
    ({"kubernetes": {"sessionsNamespace": "Bad_Namespace"}}, "/kubernetes/sessionsNamespace"),
    ({"portal": {"extraEnv": {"lower-case": "x"}}}, "/portal/extraEnv"),
    ({"replicas": 3}, "replicas"),  # a typo at the top level: not silently ignored
]


@pytest.mark.parametrize(("bad", "where"), BAD_VALUES, ids=[w for _, w in BAD_VALUES])
def test_schema_rejects_a_bad_value_naming_it(helm: Any, bad: dict[str, Any],
                                              where: str) -> None:
    values = merged(ci_values("minimal"), bad)
    with helm.Chart.load(str(CHART)) as chart:
        with pytest.raises(helm.HelmValuesError) as err:
            chart.validate_schema(values)
    assert where in str(err.value)
    # helm lint (and so install/upgrade/template) refuses it too.
    report = helm.lint(str(CHART), values)
    assert any(where in e for e in report["errors"]), report["errors"]


REQUIRED = [
    ({"portal": {"publicUrl": ""}}, "portal.publicUrl is required"),
    ({"cookieSecret": {"existingSecret": ""}}, "cookieSecret.existingSecret is required"),
    ({"database": {"existingSecret": ""}}, "database.existingSecret (or database.url)"),
    ({"portal": {"backends": ["kubernetes", "openstack"]}}, "openstack.cloud and openstack."),
    ({"portal": {"shutdown": {"graceSeconds": 30}}}, "portal.shutdown.graceSeconds must be"),
]


@pytest.mark.parametrize(("change", "message"), REQUIRED, ids=[m for _, m in REQUIRED])
def test_missing_site_values_fail_naming_them(helm: Any, change: dict[str, Any],
                                              message: str) -> None:
    with pytest.raises(helm.HelmRenderError) as err:
        render(helm, merged(ci_values("minimal"), change))
    assert message in str(err.value)


def test_notes_tell_the_url_and_what_uninstall_leaves(helm: Any) -> None:
    notes = render(helm, ci_values("minimal"))["atrium/templates/NOTES.txt"]
    assert "https://atrium.example.org" in notes
    assert "keep running" in notes and "atrium/deployment=atrium" in notes
