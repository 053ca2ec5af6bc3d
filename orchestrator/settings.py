"""Atrium's settings: the one documented place.

Every setting is read from an environment variable ``ATRIUM_<NAME>`` (upper case), so
secrets never live in files in the repository. :func:`load_settings` validates them all at
start-up and raises :class:`SettingsError` naming the variable and what was expected.

| variable | default | meaning |
|---|---|---|
| ATRIUM_STATE_DIR | ./var | where the embedded default keeps database, sessions, secrets |
| ATRIUM_DATABASE_URL | sqlite in STATE_DIR | SQLAlchemy URL (sqlite:///..., postgresql://...) |
| ATRIUM_HOST / ATRIUM_PORT | 127.0.0.1 / 8000 | where the portal listens |
| ATRIUM_PUBLIC_URL | http://HOST:PORT | the URL users reach (origin checks, links) |
| ATRIUM_SESSION_ORIGINS | subdomain | `subdomain`: instances at origins of their own (9); `path` |
| ATRIUM_SESSIONS_DOMAIN | sessions.localhost | instance UID is served at `UID.<this>[:port]` (9) |
| ATRIUM_ALLOWED_HOSTS | (none) | the portal's names besides PUBLIC_URL's, comma separated (9) |
| ATRIUM_COOKIE_SECRET | generated in demo mode | signs session cookies; required otherwise |
| ATRIUM_DEMO_MODE | false | enables the development login (demo users, no password) |
| ATRIUM_DEPLOYMENT_ID | atrium | labels every backend resource; one per installation |
| ATRIUM_BACKENDS | local | enabled backends, comma separated (`fake`: benchmarks/tests only) |
| ATRIUM_CACHE_TTL | 10 | seconds caches keep facts (a safety net: changes are announced) |
| ATRIUM_RECONCILE_INTERVAL | 10 | seconds between full reconcile passes |
| ATRIUM_START_TIMEOUT | 180 | seconds a session may take to answer before ERROR |
| ATRIUM_EXPERIMENTS_FILE | (none) | YAML/CSV experiment catalogue to sync from |
| ATRIUM_EXPERIMENTS_SQL_URL | (none) | a user-office database to sync from |
| ATRIUM_EXPERIMENTS_SQL_QUERY | experiments_sync.py | the query: one row per experiment member |
| ATRIUM_EXPERIMENTS_SYNC_INTERVAL | 0 | seconds between periodic syncs (0: never) |
| ATRIUM_DEFAULT_QUOTA | 2 | instances a user may own at once when no quota policy sets it |
| ATRIUM_LOCAL_PYTHON | this interpreter | the Python that runs local JupyterLab sessions |
| ATRIUM_LOCAL_SANDBOX | required | sandboxed local sessions, or no start (10) |
| ATRIUM_LOCAL_RUN_DIR | /run/atrium | where local sessions' Unix sockets live (a short path) |
| ATRIUM_LOCAL_CGROUP_PARENT | atrium | control group holding the sessions' groups |
| ATRIUM_LOCAL_PIDS_MAX | 1024 | processes and threads one local session may have |
| ATRIUM_SDK_THREADS | 8 | threads for blocking SDK calls |
| ATRIUM_FAKE_ENDPOINT | (nowhere) | fake backend only: the URL its "sessions" answer at |
| ATRIUM_K8S_NAMESPACE | atrium | namespace of session pods (kubernetes backend) |
| ATRIUM_K8S_KUBECONFIG | in-cluster/default | kubeconfig file of the cluster |
| ATRIUM_K8S_CONTEXT | current | kubeconfig context |
| ATRIUM_K8S_USE_SERVICE | false | reach sessions through a Service per instance |
| ATRIUM_OS_CLOUD | (none) | clouds.yaml entry of the OpenStack backend (credentials there) |
| ATRIUM_OS_NETWORKS | (nova decides) | networks of session servers, comma separated |
| ATRIUM_OS_SECURITY_GROUPS | (none) | more security groups of every session server (11) |
| ATRIUM_OS_FLOATING_NETWORK | (none) | give each server a floating IP from this network |
| ATRIUM_OS_BOOT_CONFIG | (none: NFS 4) | YAML: VM data mount templates (openstack_boot_config.py) |
| ATRIUM_K8S_POD_CONFIG | (none) | YAML shaping session pods (spawners/k8s_config.py) |
| ATRIUM_SESSION_LIFETIME | 604800 | seconds a login lasts at most (then log in again) |
| ATRIUM_SESSION_IDLE_TIMEOUT | 86400 | seconds without a request after which a login ends |
| ATRIUM_TOKEN_DEFAULT_DAYS | 90 | days an API token lives when its creator gives no lifetime |
| ATRIUM_TOKEN_MAX_DAYS | 365 | the longest lifetime a token may be given (all expire) |
| ATRIUM_OS_PORTAL_CIDRS | (none: 0.0.0.0/0) | where the portal reaches OpenStack VMs from (11) |
| ATRIUM_OS_FLAVOUR_SECURITY_GROUPS | (none) | more groups per flavour ref: `ref=group,group;...` |
| ATRIUM_OS_INSTRUMENT_SECURITY_GROUPS | (none) | more groups per instrument: `LOKI=group;...` |
| ATRIUM_OIDC_ISSUER | (none: OIDC off) | the OpenID Connect provider's issuer URL (1) |
| ATRIUM_OIDC_CLIENT_ID | (required with ISSUER) | Atrium's client id at the provider |
| ATRIUM_OIDC_CLIENT_SECRET | (none: public client) | its secret (or *_SECRET_FILE: a file) |
| ATRIUM_OIDC_SCOPES | openid profile email | scopes asked for (with openid; e.g. groups) |
| ATRIUM_OIDC_USERNAME_CLAIM | preferred_username | claim giving the Atrium username |
| ATRIUM_OIDC_EMAIL_CLAIM | email | claim giving the email address |
| ATRIUM_OIDC_NAME_CLAIM | name | claim giving the display name |
| ATRIUM_OIDC_GROUPS_CLAIM | groups | claim listing groups; dots descend: realm_access.roles |
| ATRIUM_OIDC_ROLE_GROUPS | (none) | groups granting roles: `ROLE=group,group;ROLE=group` (2) |
| ATRIUM_OIDC_RECHECK_INTERVAL | 300 | seconds between checks that the provider session lives (3) |
| ATRIUM_OIDC_LABEL | Log in with your facility account | the login button's text |
| ATRIUM_OIDC_LINK_UNCLAIMED | true | a first login may claim a never-used account (12) |
| ATRIUM_OIDC_DEPROVISIONED | "User disabled"... | refusal meaning "account gone" (13) |
| ATRIUM_LIFETIME_DAYS | 14; staff roles 60 (4) | days an instance lives (4) |
| ATRIUM_FLAVOUR_LIFETIME_DAYS | (none) | per-flavour cap on the lifetime: `flavour=days;...` (4) |
| ATRIUM_INACTIVITY_DAYS | 4; staff roles 8 (4) | days unused after which it is deleted (4) |
| ATRIUM_LIFETIME_WARNING_HOURS | 48 | warning (email, banner) this long before the lifetime ends |
| ATRIUM_INACTIVITY_WARNING_HOURS | 24 | warning this long before an inactivity deletion |
| ATRIUM_EXTENSION_AUTO_ACCEPT_DAYS | (none) | requests granted without an admin (5) |
| ATRIUM_EXTENSION_MAX_DAYS | 90 | the longest extension one request may ask for |
| ATRIUM_LIFETIME_INTERVAL | 300 | seconds between expiry and warning sweeps |
| ATRIUM_ACTIVITY_FLUSH_INTERVAL | 60 | seconds between writes of recorded activity (one UPDATE) |
| ATRIUM_LEADER_LEASE | 15 | seconds a scheduler leader holds its lease without renewing it (6) |
| ATRIUM_SMTP_HOST | (none: emails not sent) | the mail server for notifications |
| ATRIUM_SMTP_PORT | 25 | its port |
| ATRIUM_SMTP_FROM | atrium@localhost | the sender of notifications |
| ATRIUM_SMTP_STARTTLS | false | upgrade the connection with STARTTLS |
| ATRIUM_SMTP_USERNAME / _PASSWORD | (none) | mail server login (or SMTP_PASSWORD_FILE) |
| ATRIUM_MAX_BODY, ... | see settings_limits.py | resource bounds: bodies, timeouts, connections |
| ATRIUM_LOG_FORMAT | text | `text`, or `json`: one JSON object per line (log collectors) |
| ATRIUM_METRICS_PORT | 0 (off) | serve Prometheus `/metrics` on this port (not the portal's) (7) |
| ATRIUM_METRICS_TOKEN | (none) | when set, `/metrics` asks for `Authorization: Bearer TOKEN` |
| ATRIUM_SHUTDOWN_GRACE | 25 | seconds SIGTERM may take: drain, close WebSockets, flush (8) |
| ATRIUM_SHUTDOWN_DRAIN | 0 | seconds to keep serving, not ready, before closing (8) |

(1) https, or http on loopback only; discovery at ISSUER/.well-known/openid-configuration.
Register ``PUBLIC_URL/login/oidc/callback`` as the client's redirect URI,
``PUBLIC_URL/logout/done`` as its post-logout redirect URI and (optional, for logouts done
elsewhere to end Atrium logins at once) ``PUBLIC_URL/login/oidc/backchannel-logout`` as its
back-channel logout URI, session required.
(2) Roles: ADMIN, STAFF, SUPPORT, INSTRUMENT_SCIENTIST, GUEST. The roles named here follow
the provider's groups at every login; the others are left as admins set them.
(3) A refresh-token grant: the provider refuses it once its session has ended (logout
elsewhere, expiry), and the Atrium login ends with it. 0: never check.
(4) Days (fractions allowed) per role: a bare number for everyone, `ROLE=days` for holders
of ROLE; a user holding several listed roles gets the longest. Staff roles: STAFF, ADMIN,
SUPPORT, INSTRUMENT_SCIENTIST (the default lifetime is
`14;STAFF=60;ADMIN=60;SUPPORT=60;INSTRUMENT_SCIENTIST=60`). The lifetime is set at
launch and is also capped by the flavour's entry and by the quota policies' maximum
lifetime. Inactivity 0: never deleted for inactivity.
(5) `ROLE=days;...`: a request from an owner holding ROLE for at most that many days is
accepted at once (a bare number: for everyone).
(6) With several Atrium processes on one database, the lease holder runs the scheduled
jobs (expiry, warnings, reconcile sweep); another takes over when it stops renewing.
(7) A port of its own, so the ingress that publishes the portal never publishes the metrics
(web/metrics.py); bind it with ATRIUM_HOST's address.
(8) On SIGTERM the readiness probe (`/readyz`) fails at once; after DRAIN seconds (time for
the load balancer to notice) the portal stops accepting, asks open WebSockets to reconnect
elsewhere (close code 1001), flushes activity and hands over the scheduler lease, all within
GRACE seconds (keep it below the pod's terminationGracePeriodSeconds).
(9) `subdomain` (the default): instance UID at `<scheme>://UID.<SESSIONS_DOMAIN>`, with
PUBLIC_URL's scheme, and its port unless SESSIONS_DOMAIN names one. Requests for any other
name than those, PUBLIC_URL's, ALLOWED_HOSTS and IP literals are refused (DNS rebinding).
Content in a session (notebook output, a replaced server) is written by its owner and
members; served from the portal's origin it would act as whoever opens it. In `subdomain`
mode the portal hands the browser a one-time ticket that the instance's host trades for a
cookie valid there alone. Point a wildcard DNS name (and certificate) at the portal, ideally
under another registrable domain than PUBLIC_URL's (`*.sessions.localhost` needs no DNS:
browsers resolve it to loopback). `path` keeps every session on the portal's origin: only
for set-ups where one person uses Atrium.
(10) `required`: local sessions run sandboxed (root + bubblewrap + cgroups, see README) or
the portal refuses to start; `off-single-user`: unsandboxed, one user only (development).
(11) Comma separated CIDRs. Each server gets its own security group admitting these
addresses on its session ports (JupyterLab, desktop) and nothing else; set it to the
portal's egress address(es).
(12) Accounts are linked to the provider by its (issuer, subject), never by username alone:
a first login whose username belongs to an account that was used (logged in) or is linked
elsewhere is refused; an admin links it with `atrium user link`. A never-used account (made
by the experiment sync from the user office, whose usernames are the provider's) is claimed
by the first login of its username unless this is false.
(13) When the provider refuses a refresh with a message matching this, the user was
disabled or deleted there: every login and API token of theirs is revoked and the roles the
provider manages are dropped. Other refusals (the provider session ended) end that login
alone.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from orchestrator.settings_limits import Limits, load_limits

# The default lifetime rules (4): staff roles get longer.
_STAFF_ROLES = ("STAFF", "ADMIN", "SUPPORT", "INSTRUMENT_SCIENTIST")
LIFETIME_DAYS: dict[str, float] = {"": 14.0, **{r: 60.0 for r in _STAFF_ROLES}}
INACTIVITY_DAYS: dict[str, float] = {"": 4.0, **{r: 8.0 for r in _STAFF_ROLES}}


# How providers word a refresh refused because the account is disabled or deleted
# (Keycloak: "User disabled", "Unknown user"; Atrium's test provider mimics them).
DEPROVISIONED_PATTERN = r"(?i)\b(user|account) (is )?(disabled|deleted|not found)\b|unknown user"


class SettingsError(Exception):
    """A setting is missing or malformed; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    state_dir: Path
    database_url: str
    host: str = "127.0.0.1"
    port: int = 8000
    public_url: str = ""
    cookie_secret: str = ""
    demo_mode: bool = False
    deployment_id: str = "atrium"
    backends: tuple[str, ...] = ("local",)
    reconcile_interval: float = 10.0
    cache_ttl: float = 10.0
    start_timeout: float = 180.0
    experiments_file: Path | None = None
    experiments_sql_url: str = ""
    experiments_sql_query: str = ""
    experiments_sync_interval: float = 0.0
    default_quota: int = 2
    local_python: str = sys.executable
    local_sandbox: str = "required"
    local_run_dir: Path = Path("/run/atrium")
    local_cgroup_parent: str = "atrium"
    local_pids_max: int = 1024
    sdk_threads: int = 8
    fake_endpoint: str = ""
    k8s_namespace: str = "atrium"
    k8s_kubeconfig: str = ""
    k8s_context: str = ""
    k8s_use_service: bool = False
    os_cloud: str = ""
    os_networks: tuple[str, ...] = ()
    os_security_groups: tuple[str, ...] = ()
    os_floating_network: str = ""
    os_boot_config: Path | None = None
    k8s_pod_config: Path | None = None
    session_lifetime: float = 7 * 86400.0
    session_idle_timeout: float = 86400.0
    token_default_days: int = 90
    token_max_days: int = 365
    os_portal_cidrs: tuple[str, ...] = ()
    os_flavour_security_groups: dict[str, tuple[str, ...]] = field(default_factory=dict)
    os_instrument_security_groups: dict[str, tuple[str, ...]] = field(default_factory=dict)
    oidc_issuer: str = ""
    oidc_client_id: str = ""
    oidc_client_secret: str = field(default="", repr=False)
    oidc_scopes: tuple[str, ...] = ("openid", "profile", "email")
    oidc_username_claim: str = "preferred_username"
    oidc_email_claim: str = "email"
    oidc_name_claim: str = "name"
    oidc_groups_claim: str = "groups"
    # role -> the groups granting it; only these roles are managed by the provider.
    oidc_role_groups: dict[str, tuple[str, ...]] = field(default_factory=dict)
    oidc_recheck_interval: float = 300.0
    oidc_label: str = "Log in with your facility account"
    oidc_link_unclaimed: bool = True
    oidc_deprovisioned: str = DEPROVISIONED_PATTERN
    # Lifetime rules (4-6): role ("" = everyone else) or flavour name -> days.
    lifetime_days: dict[str, float] = field(default_factory=lambda: dict(LIFETIME_DAYS))
    flavour_lifetime_days: dict[str, float] = field(default_factory=dict)
    inactivity_days: dict[str, float] = field(default_factory=lambda: dict(INACTIVITY_DAYS))
    lifetime_warning_hours: float = 48.0
    inactivity_warning_hours: float = 24.0
    extension_auto_accept_days: dict[str, float] = field(default_factory=dict)
    extension_max_days: float = 90.0
    lifetime_interval: float = 300.0
    activity_flush_interval: float = 60.0
    leader_lease: float = 15.0
    smtp_host: str = ""
    smtp_port: int = 25
    smtp_from: str = "atrium@localhost"
    smtp_starttls: bool = False
    smtp_username: str = ""
    smtp_password: str = field(default="", repr=False)
    session_origins: str = "subdomain"  # or "path" (see (9))
    sessions_domain: str = ""  # host[:port] under which <uid>.<domain> serves an instance
    allowed_hosts: tuple[str, ...] = ()
    limits: Limits = field(default_factory=Limits)  # settings_limits.py
    log_format: str = "text"
    metrics_port: int = 0
    metrics_token: str = field(default="", repr=False)
    shutdown_grace: float = 25.0
    shutdown_drain: float = 0.0
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def oidc_enabled(self) -> bool:
        return bool(self.oidc_issuer)

    @property
    def secure_cookies(self) -> bool:
        """Cookies carry ``Secure`` when users reach Atrium over https (also behind a
        TLS-terminating ingress, where the request itself arrives over http)."""
        return self.public_url.startswith("https://")

    @property
    def sessions_dir(self) -> Path:
        return self.state_dir / "sessions"

    def check_for_serving(self) -> None:
        """What only the portal needs (the CLI's other commands run without it)."""
        if not self.cookie_secret:
            raise SettingsError(
                "ATRIUM_COOKIE_SECRET is not set: give a long random string "
                "(e.g. `python -c 'import secrets; print(secrets.token_hex(32))'`)"
            )


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _bool(env: dict[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None:
        return default
    if raw.strip().lower() in _TRUE:
        return True
    if raw.strip().lower() in _FALSE:
        return False
    raise SettingsError(f"{name}={raw!r}: expected true or false")


def _number(env: dict[str, str], name: str, default: float, minimum: float = 0) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r}: expected a number") from None
    if value < minimum:
        raise SettingsError(f"{name}={raw!r}: must be at least {minimum}")
    return value


def _port(env: dict[str, str], name: str, default: int) -> int:
    port = int(_number(env, name, default, minimum=1))
    if port > 65535:
        raise SettingsError(f"{name}={port}: must be below 65536")
    return port


def _secret(env: dict[str, str], name: str) -> str:
    """A secret from ``name``, or read from the file named by ``name``_FILE (which wins)."""
    path = env.get(f"{name}_FILE", "")
    if not path:
        return env.get(name, "")
    try:
        return Path(path).read_text().strip()
    except OSError as err:
        raise SettingsError(f"{name}_FILE={path!r}: {err.strerror}") from None


def _file(env: dict[str, str], name: str) -> Path | None:
    """An existing file named by ``name`` (None when unset or empty)."""
    raw = env.get(name)
    if not raw:
        return None
    if not Path(raw).is_file():
        raise SettingsError(f"{name}={raw!r}: no such file")
    return Path(raw)


def _list(env: dict[str, str], name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    raw = env.get(name)
    if raw is None:
        return default
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def normalise_database_url(url: str) -> str:
    """Map plain URLs to the async drivers Atrium uses (aiosqlite, asyncpg)."""
    if url.startswith("sqlite:"):
        return "sqlite+aiosqlite:" + url[len("sqlite:"):]
    for prefix in ("postgresql:", "postgres:", "postgresql+psycopg:", "postgresql+psycopg2:"):
        if url.startswith(prefix):
            return "postgresql+asyncpg:" + url[len(prefix):]
    if url.startswith(("sqlite+aiosqlite:", "postgresql+asyncpg:")):
        return url
    raise SettingsError(
        f"ATRIUM_DATABASE_URL={url!r}: expected sqlite:///PATH or postgresql://USER@HOST/DB"
    )


def load_settings(env: dict[str, str] | None = None, **overrides: object) -> Settings:
    """Read and validate the settings from ``env`` (default: the process environment)."""
    env = dict(os.environ if env is None else env)
    state_dir = Path(env.get("ATRIUM_STATE_DIR") or "var").resolve()
    demo = _bool(env, "ATRIUM_DEMO_MODE", False)
    db_url = env.get("ATRIUM_DATABASE_URL") or f"sqlite:///{state_dir / 'atrium.db'}"
    host = env.get("ATRIUM_HOST", "127.0.0.1")
    port = _port(env, "ATRIUM_PORT", 8000)
    backends = tuple(b.strip() for b in env.get("ATRIUM_BACKENDS", "local").split(",") if b.strip())
    unknown = set(backends) - {"local", "kubernetes", "openstack", "fake"}
    if unknown or not backends:
        raise SettingsError(
            f"ATRIUM_BACKENDS={env.get('ATRIUM_BACKENDS')!r}: choose among local, kubernetes, "
            "openstack"
        )
    cookie_secret = env.get("ATRIUM_COOKIE_SECRET", "")
    if not cookie_secret and demo:
        cookie_secret = _demo_cookie_secret(state_dir)
    elif cookie_secret and len(cookie_secret) < 32:
        raise SettingsError("ATRIUM_COOKIE_SECRET is too short: use at least 32 characters")
    experiments_file = env.get("ATRIUM_EXPERIMENTS_FILE")
    if experiments_file and not Path(experiments_file).is_file():
        raise SettingsError(f"ATRIUM_EXPERIMENTS_FILE={experiments_file!r}: no such file")
    deployment_id = env.get("ATRIUM_DEPLOYMENT_ID", "atrium")
    if not deployment_id.replace("-", "").isalnum() or len(deployment_id) > 40:
        raise SettingsError(
            f"ATRIUM_DEPLOYMENT_ID={deployment_id!r}: letters, digits and '-' only, "
            "at most 40 characters (it becomes a label value)"
        )
    if "openstack" in backends and not env.get("ATRIUM_OS_CLOUD"):
        raise SettingsError("ATRIUM_OS_CLOUD is not set: the openstack backend needs the name "
                            "of a clouds.yaml entry")
    values: dict[str, object] = dict(
        state_dir=state_dir,
        database_url=normalise_database_url(db_url),
        host=host,
        port=port,
        public_url=env.get("ATRIUM_PUBLIC_URL") or f"http://{host}:{port}",
        cookie_secret=cookie_secret,
        demo_mode=demo,
        deployment_id=deployment_id,
        backends=backends,
        reconcile_interval=_number(env, "ATRIUM_RECONCILE_INTERVAL", 10.0, minimum=0.1),
        cache_ttl=_number(env, "ATRIUM_CACHE_TTL", 10.0, minimum=0.0),
        start_timeout=_number(env, "ATRIUM_START_TIMEOUT", 180.0, minimum=1),
        experiments_file=Path(experiments_file) if experiments_file else None,
        experiments_sql_url=env.get("ATRIUM_EXPERIMENTS_SQL_URL", ""),
        experiments_sql_query=env.get("ATRIUM_EXPERIMENTS_SQL_QUERY", ""),
        experiments_sync_interval=_number(env, "ATRIUM_EXPERIMENTS_SYNC_INTERVAL", 0.0),
        default_quota=int(_number(env, "ATRIUM_DEFAULT_QUOTA", 2)),
        local_python=env.get("ATRIUM_LOCAL_PYTHON") or sys.executable,
        **_local(env),
        sdk_threads=int(_number(env, "ATRIUM_SDK_THREADS", 8, minimum=1)),
        fake_endpoint=env.get("ATRIUM_FAKE_ENDPOINT", ""),
        k8s_namespace=env.get("ATRIUM_K8S_NAMESPACE", "atrium"),
        k8s_kubeconfig=env.get("ATRIUM_K8S_KUBECONFIG", ""),
        k8s_context=env.get("ATRIUM_K8S_CONTEXT", ""),
        k8s_use_service=_bool(env, "ATRIUM_K8S_USE_SERVICE", False),
        os_cloud=env.get("ATRIUM_OS_CLOUD", ""),
        os_networks=_list(env, "ATRIUM_OS_NETWORKS", ()),
        # Not Neutron's "default" group: it admits every other server of the project.
        os_security_groups=_list(env, "ATRIUM_OS_SECURITY_GROUPS", ()),
        os_floating_network=env.get("ATRIUM_OS_FLOATING_NETWORK", ""),
        os_boot_config=_file(env, "ATRIUM_OS_BOOT_CONFIG"),
        k8s_pod_config=_file(env, "ATRIUM_K8S_POD_CONFIG"),
        session_lifetime=_number(env, "ATRIUM_SESSION_LIFETIME", 7 * 86400.0, minimum=1),
        session_idle_timeout=_number(env, "ATRIUM_SESSION_IDLE_TIMEOUT", 86400.0, minimum=1),
        **_tokens(env),
        **_os_groups(env),
        **_oidc(env),
        **_lifetime(env),
        **_origins(env, env.get("ATRIUM_PUBLIC_URL") or f"http://{host}:{port}"),
        limits=load_limits(env),
        **_production(env),
    )
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


_LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


def _origins(env: dict[str, str], public_url: str) -> dict[str, object]:
    """Where instances are served (9): their mode, domain and the portal's other names."""
    mode = env.get("ATRIUM_SESSION_ORIGINS", "subdomain").strip().lower() or "subdomain"
    if mode not in ("subdomain", "path"):
        raise SettingsError(f"ATRIUM_SESSION_ORIGINS={mode!r}: expected subdomain or path")
    domain = env.get("ATRIUM_SESSIONS_DOMAIN", "").strip().lower().strip(".")
    name, _, port = (domain or "sessions.localhost").partition(":")
    if not all(part.replace("-", "").isalnum() for part in name.split(".")) or (
            port and not port.isdigit()):
        raise SettingsError(f"ATRIUM_SESSIONS_DOMAIN={domain!r}: expected a DNS name, "
                            "optionally with :port")
    if not port and urlsplit(public_url).port:
        port = str(urlsplit(public_url).port)
    hosts = tuple(h.lower() for h in _list(env, "ATRIUM_ALLOWED_HOSTS", ()))
    if any(not h.replace("-", "").replace(".", "").isalnum() for h in hosts):
        raise SettingsError(f"ATRIUM_ALLOWED_HOSTS={','.join(hosts)!r}: expected host names "
                            "without port, comma separated")
    return dict(session_origins=mode, sessions_domain=f"{name}:{port}" if port else name,
                allowed_hosts=hosts)


def _oidc(env: dict[str, str]) -> dict[str, object]:
    """The OpenID Connect settings (all empty when ATRIUM_OIDC_ISSUER is not set)."""
    issuer = env.get("ATRIUM_OIDC_ISSUER", "").strip().rstrip("/")
    client_id = env.get("ATRIUM_OIDC_CLIENT_ID", "").strip()
    if not issuer:
        if client_id:
            raise SettingsError("ATRIUM_OIDC_CLIENT_ID is set but ATRIUM_OIDC_ISSUER is not: "
                                "give the provider's issuer URL")
        return {}
    parts = urlsplit(issuer)
    # The spec wants https; plain http is accepted for a provider on this machine only.
    if not parts.hostname or parts.scheme not in ("https", "http") or (
            parts.scheme == "http" and parts.hostname not in _LOOPBACK) or parts.query:
        raise SettingsError(f"ATRIUM_OIDC_ISSUER={issuer!r}: expected an https:// URL "
                            "(http:// only on loopback) without query")
    if not client_id:
        raise SettingsError("ATRIUM_OIDC_CLIENT_ID is required when ATRIUM_OIDC_ISSUER is set")
    secret = _secret(env, "ATRIUM_OIDC_CLIENT_SECRET")
    scopes = tuple(env.get("ATRIUM_OIDC_SCOPES", "openid profile email").replace(",", " ")
                   .split())
    if "openid" not in scopes:
        raise SettingsError(f"ATRIUM_OIDC_SCOPES={' '.join(scopes)!r}: must include openid")
    claims: dict[str, object] = {}
    for name, default in (("USERNAME", "preferred_username"), ("EMAIL", "email"),
                          ("NAME", "name"), ("GROUPS", "groups")):
        value = env.get(f"ATRIUM_OIDC_{name}_CLAIM", default).strip()
        if not value or not all(p for p in value.split(".")):
            raise SettingsError(f"ATRIUM_OIDC_{name}_CLAIM={value!r}: expected a claim name")
        claims[f"oidc_{name.lower()}_claim"] = value
    return dict(
        oidc_issuer=issuer, oidc_client_id=client_id, oidc_client_secret=secret,
        oidc_scopes=scopes, **claims,
        oidc_role_groups=parse_role_groups(env.get("ATRIUM_OIDC_ROLE_GROUPS", "")),
        oidc_recheck_interval=_number(env, "ATRIUM_OIDC_RECHECK_INTERVAL", 300.0),
        oidc_label=env.get("ATRIUM_OIDC_LABEL") or "Log in with your facility account",
        oidc_link_unclaimed=_bool(env, "ATRIUM_OIDC_LINK_UNCLAIMED", True),
        oidc_deprovisioned=_regex(env, "ATRIUM_OIDC_DEPROVISIONED", DEPROVISIONED_PATTERN),
    )


def _regex(env: dict[str, str], name: str, default: str) -> str:
    value = env.get(name) or default
    try:
        re.compile(value)
    except re.error as err:
        raise SettingsError(f"{name}={value!r}: not a regular expression ({err})") from None
    return value


def _tokens(env: dict[str, str]) -> dict[str, object]:
    """API token lifetimes: every token expires (default and longest, in days)."""
    max_days = int(_number(env, "ATRIUM_TOKEN_MAX_DAYS", 365, minimum=1))
    default = int(_number(env, "ATRIUM_TOKEN_DEFAULT_DAYS", min(90, max_days), minimum=1))
    if default > max_days:
        raise SettingsError(f"ATRIUM_TOKEN_DEFAULT_DAYS={default} is above "
                            f"ATRIUM_TOKEN_MAX_DAYS={max_days}")
    return {"token_default_days": default, "token_max_days": max_days}


def _groups_map(env: dict[str, str], name: str) -> dict[str, tuple[str, ...]]:
    """``key=group,group;key=group`` (security groups per flavour or instrument)."""
    out: dict[str, tuple[str, ...]] = {}
    for item in filter(None, (p.strip() for p in env.get(name, "").split(";"))):
        key, sep, groups = item.partition("=")
        names = tuple(g.strip() for g in groups.split(",") if g.strip())
        if not sep or not key.strip() or not names:
            raise SettingsError(f"{name}: {item!r} is not `key=group,group`")
        out[key.strip()] = names
    return out


def _os_groups(env: dict[str, str]) -> dict[str, object]:
    cidrs = _list(env, "ATRIUM_OS_PORTAL_CIDRS", ())
    for cidr in cidrs:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise SettingsError(f"ATRIUM_OS_PORTAL_CIDRS: {cidr!r} is not an address or "
                                "CIDR") from None
    return {"os_portal_cidrs": cidrs,
            "os_flavour_security_groups": _groups_map(env, "ATRIUM_OS_FLAVOUR_SECURITY_GROUPS"),
            "os_instrument_security_groups": _groups_map(
                env, "ATRIUM_OS_INSTRUMENT_SECURITY_GROUPS")}


def _lifetime(env: dict[str, str]) -> dict[str, object]:
    """The lifetime, inactivity, warning, extension, scheduling and SMTP settings."""
    password = _secret(env, "ATRIUM_SMTP_PASSWORD")
    port = _port(env, "ATRIUM_SMTP_PORT", 25)
    lifetime = parse_days(env, "ATRIUM_LIFETIME_DAYS", LIFETIME_DAYS, roles=True)
    if any(v <= 0 for v in lifetime.values()):
        raise SettingsError("ATRIUM_LIFETIME_DAYS: every lifetime must be above 0 "
                            "(nothing runs forever)")
    flavours = parse_days(env, "ATRIUM_FLAVOUR_LIFETIME_DAYS", {}, roles=False)
    if any(v <= 0 for v in flavours.values()):
        raise SettingsError("ATRIUM_FLAVOUR_LIFETIME_DAYS: every lifetime must be above 0")
    return dict(
        lifetime_days=lifetime,
        flavour_lifetime_days=flavours,
        inactivity_days=parse_days(env, "ATRIUM_INACTIVITY_DAYS", INACTIVITY_DAYS, roles=True),
        lifetime_warning_hours=_number(env, "ATRIUM_LIFETIME_WARNING_HOURS", 48.0),
        inactivity_warning_hours=_number(env, "ATRIUM_INACTIVITY_WARNING_HOURS", 24.0),
        extension_auto_accept_days=parse_days(env, "ATRIUM_EXTENSION_AUTO_ACCEPT_DAYS", {},
                                              roles=True),
        extension_max_days=_number(env, "ATRIUM_EXTENSION_MAX_DAYS", 90.0, minimum=0.01),
        lifetime_interval=_number(env, "ATRIUM_LIFETIME_INTERVAL", 300.0, minimum=0.1),
        activity_flush_interval=_number(env, "ATRIUM_ACTIVITY_FLUSH_INTERVAL", 60.0,
                                        minimum=0.1),
        leader_lease=_number(env, "ATRIUM_LEADER_LEASE", 15.0, minimum=1),
        smtp_host=env.get("ATRIUM_SMTP_HOST", "").strip(),
        smtp_port=port,
        smtp_from=env.get("ATRIUM_SMTP_FROM") or "atrium@localhost",
        smtp_starttls=_bool(env, "ATRIUM_SMTP_STARTTLS", False),
        smtp_username=env.get("ATRIUM_SMTP_USERNAME", ""),
        smtp_password=password,
    )


def _production(env: dict[str, str]) -> dict[str, object]:
    """Logs, metrics and shutdown (7, 8)."""
    log_format = env.get("ATRIUM_LOG_FORMAT", "text").strip().lower() or "text"
    if log_format not in ("text", "json"):
        raise SettingsError(f"ATRIUM_LOG_FORMAT={log_format!r}: expected text or json")
    metrics_port = env.get("ATRIUM_METRICS_PORT", "")
    return dict(
        log_format=log_format,
        metrics_port=_port(env, "ATRIUM_METRICS_PORT", 0) if metrics_port not in ("", "0")
        else 0,
        metrics_token=_secret(env, "ATRIUM_METRICS_TOKEN"),
        shutdown_grace=_number(env, "ATRIUM_SHUTDOWN_GRACE", 25.0),
        shutdown_drain=_number(env, "ATRIUM_SHUTDOWN_DRAIN", 0.0),
    )


def parse_days(env: dict[str, str], name: str, default: dict[str, float], *,
               roles: bool) -> dict[str, float]:
    """``"14;STAFF=60"`` -> ``{"": 14.0, "STAFF": 60.0}`` (``""``: everyone else).

    With ``roles``, keys are role names (checked, upper-cased) and a bare number sets the
    default; otherwise keys are flavour names, as written. Unset: ``default``. Raises
    :class:`SettingsError` naming ``name`` on anything else.
    """
    from orchestrator.models import Role

    raw = env.get(name)
    if raw is None or not raw.strip():
        return dict(default)
    result: dict[str, float] = {}
    for item in filter(None, (i.strip() for i in raw.split(";"))):
        key, sep, value = item.rpartition("=") if "=" in item else ("", "", item)
        key = key.strip().upper() if roles else key.strip()
        try:
            days = float(value)
        except ValueError:
            days = -1.0
        if days < 0 or (sep and not key) or (roles and key and key not in Role.__members__) \
                or (not roles and not key):
            what = "ROLE=days with ROLE one of " + ", ".join(Role.__members__) \
                if roles else "flavour=days"
            raise SettingsError(f"{name}: {item!r}: expected {what}"
                                + (" or a number of days for everyone" if roles else ""))
        result[key] = days
    if roles and "" not in result and "" in default:
        result[""] = default[""]
    return result


def parse_role_groups(raw: str) -> dict[str, tuple[str, ...]]:
    """``"ADMIN=admins;STAFF=staff,beamline"`` -> ``{"ADMIN": ("admins",), "STAFF": (...)}``.

    Raises :class:`SettingsError` (naming ATRIUM_OIDC_ROLE_GROUPS) on an unknown role or a
    role without groups.
    """
    from orchestrator.models import Role

    result: dict[str, tuple[str, ...]] = {}
    for item in filter(None, (i.strip() for i in raw.split(";"))):
        role, sep, groups = item.partition("=")
        role = role.strip().upper()
        names = tuple(g.strip() for g in groups.split(",") if g.strip())
        if role not in Role.__members__ or not sep or not names:
            raise SettingsError(
                f"ATRIUM_OIDC_ROLE_GROUPS: {item!r}: expected ROLE=group[,group...] with ROLE "
                f"one of {', '.join(Role.__members__)}")
        result[role] = result.get(role, ()) + names
    return result


def _local(env: dict[str, str]) -> dict[str, object]:
    sandbox = env.get("ATRIUM_LOCAL_SANDBOX") or "required"
    if sandbox not in ("required", "off-single-user"):
        raise SettingsError(f"ATRIUM_LOCAL_SANDBOX={sandbox!r}: expected required or "
                            "off-single-user")
    run_dir = env.get("ATRIUM_LOCAL_RUN_DIR") or "/run/atrium"
    if not run_dir.startswith("/") or len(run_dir) > 60:
        raise SettingsError(f"ATRIUM_LOCAL_RUN_DIR={run_dir!r}: an absolute path of at most "
                            "60 characters (Unix socket paths are short)")
    parent = env.get("ATRIUM_LOCAL_CGROUP_PARENT") or "atrium"
    if not all(part.replace("-", "").replace("_", "").isalnum() for part in parent.split("/")):
        raise SettingsError(f"ATRIUM_LOCAL_CGROUP_PARENT={parent!r}: names of letters, digits, "
                            "'-', '_', separated by '/'")
    return {"local_sandbox": sandbox, "local_run_dir": Path(run_dir),
            "local_cgroup_parent": parent,
            "local_pids_max": int(_number(env, "ATRIUM_LOCAL_PIDS_MAX", 1024, minimum=16))}


def _demo_cookie_secret(state_dir: Path) -> str:
    """A secret kept in the state dir, so demo logins survive restarts."""
    path = state_dir / "cookie_secret"
    if path.exists():
        return path.read_text().strip()
    state_dir.mkdir(parents=True, exist_ok=True)
    value = secrets.token_hex(32)
    path.write_text(value)
    path.chmod(0o600)
    return value
