"""The OpenStack backend: each instance is one Nova server booted with Atrium's user-data.

A server is created from ``InstanceSpec.image_ref`` / ``flavour_ref`` (Glance and Nova
names or ids), on the configured networks and security groups, with the cloud-init
document of :mod:`spawners.cloudinit` as user-data, and optionally a floating IP.

Finding servers again. Nova tags cannot contain ``/``, so the base labels are written as

* tags ``atrium-instance=<uid>`` and ``atrium-deployment=<id>`` (set atomically by the
  create call, filterable by the list API: :meth:`list_managed` is ONE list call), and
* metadata ``atrium:instance`` / ``atrium:deployment`` (for humans and other tools).

Nova -> :class:`~spawners.base.ResourceState`: BUILD, REBOOT, HARD_REBOOT, REBUILD,
resizes and migrations -> PENDING; ACTIVE -> RUNNING; SHUTOFF, SUSPENDED, PAUSED, SHELVED*
-> STOPPED; ERROR -> FAILED with Nova's fault message as the reason (e.g. "No valid host
was found"); DELETED, SOFT_DELETED or 404 -> GONE. FAILED servers are kept (their fault
stays readable) until :meth:`delete`.

Every SDK call runs in a :class:`~spawners.base.BlockingPool` and is retried with
exponential backoff on 5xx, 429, timeouts and connection failures; create re-checks the
tags before each retry so a lost reply never makes a second server. Quota refusals raise
:class:`~spawners.base.CapacityError` before anything exists.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, TypeVar

import openstack
from keystoneauth1 import exceptions as ksa_exc
from openstack import exceptions as os_exc

from spawners import openstack_secgroups as secgroups
from spawners.base import (
    LABEL_DEPLOYMENT,
    LABEL_INSTANCE,
    Backend,
    BackendError,
    BackendState,
    BlockingPool,
    CapacityError,
    Checkpoint,
    InstanceSpec,
    Observation,
    ResourceState,
)
from spawners.cloudinit import BootSettings, BootTemplateError, render_user_data
from spawners.probe import jupyter_ready, rfb_ready

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_TAG = 60  # Nova's limit on one tag

_STATES: dict[str, ResourceState] = {
    "ACTIVE": ResourceState.RUNNING,
    "BUILD": ResourceState.PENDING,
    "REBOOT": ResourceState.PENDING,
    "HARD_REBOOT": ResourceState.PENDING,
    "REBUILD": ResourceState.PENDING,
    "MIGRATING": ResourceState.PENDING,
    "RESIZE": ResourceState.PENDING,
    "VERIFY_RESIZE": ResourceState.PENDING,
    "REVERT_RESIZE": ResourceState.PENDING,
    "PASSWORD": ResourceState.RUNNING,
    "SHUTOFF": ResourceState.STOPPED,
    "STOPPED": ResourceState.STOPPED,
    "SUSPENDED": ResourceState.STOPPED,
    "PAUSED": ResourceState.STOPPED,
    "SHELVED": ResourceState.STOPPED,
    "SHELVED_OFFLOADED": ResourceState.STOPPED,
    "ERROR": ResourceState.FAILED,
    "DELETED": ResourceState.GONE,
    "SOFT_DELETED": ResourceState.GONE,
}


def tag(label: str, value: str) -> str:
    """The Nova tag for a base label: ``atrium/instance`` -> ``atrium-instance=<value>``."""
    return f"{label.replace('/', '-')}={value}"


def meta_key(label: str) -> str:
    """The Nova metadata key for a base label (``/`` is not allowed there either)."""
    return label.replace("/", ":")


def map_status(server: Any) -> tuple[ResourceState, str]:
    """Nova's status (and fault, task state) -> (state, reason). Pure."""
    status = str(getattr(server, "status", "") or "").upper()
    task = getattr(server, "task_state", None)
    if status == "ERROR":
        fault = getattr(server, "fault", None) or {}
        message = str(fault.get("message") or "").strip()
        return ResourceState.FAILED, message or "Nova reports the server in ERROR"
    if status == "UNKNOWN":
        # the compute host stopped reporting: may come back, don't call it failed
        return ResourceState.PENDING, "Nova cannot reach the server's compute host"
    if task == "deleting":
        return ResourceState.PENDING, "the server is being deleted"
    if task == "powering-on":
        # still SHUTOFF, but a start is under way: not STOPPED (starting it again is a 409)
        return ResourceState.PENDING, "the server is being started"
    state = _STATES.get(status)
    if state is None:
        return ResourceState.PENDING, f"Nova status {status or 'missing'}"
    return state, ""


def is_retryable(err: BaseException) -> bool:
    """Worth retrying: server-side errors, throttling, timeouts, connection failures."""
    if isinstance(err, os_exc.HttpException):
        code = err.status_code
        return code is None or code >= 500 or code == 429
    if isinstance(err, ksa_exc.http.HttpError):
        return bool(err.http_status and (err.http_status >= 500 or err.http_status == 429))
    return isinstance(err, (ksa_exc.RetriableConnectionFailure, ksa_exc.ConnectionError,
                            ksa_exc.DiscoveryFailure, TimeoutError))


def _is_quota_error(err: os_exc.HttpException) -> bool:
    text = f"{err.message} {err.details}".lower()
    return err.status_code in (403, 413) and "quota" in text


class OpenStackBackend(Backend):
    """Instances as Nova servers.

    Connection: ``cloud`` names a clouds.yaml entry, or ``auth`` gives keystoneauth
    settings (``auth_url``, ``username``, ``password``, ``project_name``,
    ``user_domain_name``, ``project_domain_name``; ``auth_type`` picks another plugin,
    e.g. ``v3applicationcredential``). ``networks`` are network names or ids (none: Nova
    decides); ``security_groups`` apply to every server, plus ``flavour_security_groups``
    [flavour_ref] and ``protocol_security_groups``[protocol] (e.g. open 6080 only for
    desktops). ``floating_ip_network`` (a name or id) gives each server a floating IP,
    and ``endpoint_address="floating"`` makes endpoints use it instead of the fixed IP.
    """

    name = "openstack"

    def __init__(self, deployment_id: str, *, cloud: str | None = None,
                 auth: Mapping[str, str] | None = None, auth_type: str = "password",
                 region_name: str | None = None, networks: Sequence[str] = (),
                 security_groups: Sequence[str] = (),
                 portal_cidrs: Sequence[str] = ("0.0.0.0/0",),
                 egress_cidrs: Sequence[str] = ("0.0.0.0/0", "::/0"),
                 flavour_security_groups: Mapping[str, Sequence[str]] | None = None,
                 instrument_security_groups: Mapping[str, Sequence[str]] | None = None,
                 protocol_security_groups: Mapping[str, Sequence[str]] | None = None,
                 floating_ip_network: str | None = None, endpoint_address: str = "fixed",
                 key_name: str | None = None, boot: BootSettings | None = None,
                 max_workers: int = 8, retries: int = 4, backoff: float = 0.5,
                 api_timeout: float = 30.0, delete_timeout: float = 180.0,
                 probe_timeout: float = 2.0, leftover_grace: float = 60.0) -> None:
        super().__init__(deployment_id)
        if cloud is None and auth is None:
            raise ValueError("OpenStackBackend needs a clouds.yaml cloud name or auth settings")
        if endpoint_address not in ("fixed", "floating"):
            raise ValueError("endpoint_address must be 'fixed' or 'floating'")
        self.deployment_tag = tag(LABEL_DEPLOYMENT, deployment_id)
        if len(self.deployment_tag) > MAX_TAG or "," in deployment_id:
            raise ValueError(f"deployment id {deployment_id!r} does not fit a Nova tag")
        self._cloud = cloud
        self._auth = dict(auth or {})
        self._auth_type = auth_type
        self._region = region_name
        self._networks = tuple(networks)
        self._security_groups = tuple(security_groups)
        self._flavour_groups = {k: tuple(v) for k, v in (flavour_security_groups or {}).items()}
        self._instrument_groups = {k: tuple(v)
                                   for k, v in (instrument_security_groups or {}).items()}
        self._portal_cidrs = tuple(portal_cidrs)
        self._egress_cidrs = tuple(egress_cidrs)
        # A bad CIDR fails here, not at launch.
        secgroups.wanted_rules(self._portal_cidrs, (), self._egress_cidrs)
        self._leftover_grace = leftover_grace
        self._protocol_groups = {k: tuple(v)
                                 for k, v in (protocol_security_groups or {}).items()}
        self._fip_network = floating_ip_network
        self._endpoint_address = endpoint_address
        self._key_name = key_name
        boot = boot or BootSettings()
        self.boot = boot if boot.deployment_id else replace(boot, deployment_id=deployment_id)
        self._retries = retries
        self._backoff = backoff
        self._api_timeout = api_timeout
        self._delete_timeout = delete_timeout
        self._probe_timeout = probe_timeout
        self._pool = BlockingPool(max_workers=max_workers, name="atrium-openstack")
        self._conn_lock = threading.Lock()
        self._connection: openstack.connection.Connection | None = None
        self._closed = False

    # -- plumbing ---------------------------------------------------------------------

    def _conn(self) -> openstack.connection.Connection:
        """The shared SDK connection, created on first use (in a pool thread)."""
        with self._conn_lock:
            if self._connection is None:
                if self._cloud is not None:
                    self._connection = openstack.connect(
                        cloud=self._cloud, region_name=self._region,
                        api_timeout=self._api_timeout)
                else:
                    self._connection = openstack.connection.Connection(
                        auth=self._auth, auth_type=self._auth_type,
                        region_name=self._region, api_timeout=self._api_timeout)
            return self._connection

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking, idempotent SDK operation in the pool, retrying transient errors."""
        call = functools.partial(fn, *args, **kwargs)
        for attempt in range(self._retries + 1):
            try:
                return await self._pool.run(call)
            except Exception as err:
                if attempt >= self._retries or not is_retryable(err):
                    raise
                delay = self._backoff * (2 ** attempt) * (0.5 + random.random())
                log.warning("openstack: %s failed (%s), retry %d in %.1fs",
                            getattr(fn, "__name__", "call"), err, attempt + 1, delay)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    @staticmethod
    def _reason(err: Exception) -> str:
        if isinstance(err, os_exc.HttpException):
            detail = (err.details or err.message or "").strip()
            return f"OpenStack refused the request (HTTP {err.status_code}): {detail}"
        return f"OpenStack unreachable: {err}"

    # -- blocking helpers (run in the pool) --------------------------------------------

    def _instance_tags(self, uid: str) -> str:
        return f"{tag(LABEL_INSTANCE, uid)},{self.deployment_tag}"

    def _find_servers(self, uid: str) -> list[Any]:
        """Every server of this deployment tagged with ``uid`` (normally 0 or 1)."""
        servers = self._conn().compute.servers(details=True, tags=self._instance_tags(uid))
        return [s for s in servers if str(s.status).upper() not in ("DELETED",)]

    def _get_server(self, state: BackendState, uid: str) -> Any | None:
        """The server recorded in ``state``, else the one found by tags; None if gone."""
        server_id = state.get("server_id")
        if server_id:
            try:
                server = self._conn().compute.get_server(server_id)
            except os_exc.NotFoundException:
                return None
            return None if str(server.status).upper() == "DELETED" else server
        found = self._find_servers(uid)
        return found[0] if found else None

    def _resolve(self, spec: InstanceSpec) -> dict[str, Any]:
        conn = self._conn()
        try:
            image = conn.image.find_image(spec.image_ref, ignore_missing=False)
            flavour = conn.compute.find_flavor(spec.flavour_ref, ignore_missing=False)
            networks = [self._network_id(n) for n in self._networks]
        except (os_exc.NotFoundException, os_exc.ResourceNotFound,
                os_exc.DuplicateResource) as err:
            raise BackendError(f"OpenStack configuration: {err}") from err
        groups = self._security_groups + self._flavour_groups.get(spec.flavour_ref, ())
        for instrument in spec.instruments:
            groups += self._instrument_groups.get(instrument, ())
        for protocol in spec.protocols:
            groups += self._protocol_groups.get(protocol, ())
        own = secgroups.ensure_group(conn, spec.uid, tag(LABEL_INSTANCE, spec.uid),
                                     self.deployment_tag, self._session_rules(spec))
        return {"image_id": image.id, "flavor_id": flavour.id,
                "networks": [{"uuid": n} for n in networks] if networks else None,
                # The session's own group by id (its name is not unique in Neutron).
                "security_groups": [{"name": own},
                                    *({"name": g} for g in dict.fromkeys(groups))]}

    def _session_rules(self, spec: InstanceSpec) -> set[secgroups.Rule]:
        ports = {"jupyter": self.boot.jupyter_port, "desktop": self.boot.desktop_port}
        return secgroups.wanted_rules(self._portal_cidrs,
                                      [ports[p] for p in spec.protocols if p in ports],
                                      self._egress_cidrs)

    def _network_id(self, name_or_id: str) -> str:
        network = self._conn().network.find_network(name_or_id, ignore_missing=False)
        if network is None:  # not with ignore_missing=False; keeps the type checker honest
            raise BackendError(f"network {name_or_id!r} not found")
        return str(network.id)

    def _create_server(self, spec: InstanceSpec, refs: dict[str, Any],
                       user_data: str) -> Any:
        metadata = {meta_key(LABEL_INSTANCE): spec.uid,
                    meta_key(LABEL_DEPLOYMENT): self.deployment_id,
                    "atrium:name": spec.name[:255]}
        kwargs: dict[str, Any] = {
            "name": f"atrium-{spec.uid}", "metadata": metadata,
            "tags": [tag(LABEL_INSTANCE, spec.uid), self.deployment_tag],
            "user_data": base64.b64encode(user_data.encode()).decode(), **refs}
        if kwargs["networks"] is None:
            del kwargs["networks"]
        if self._key_name:
            kwargs["key_name"] = self._key_name
        return self._conn().compute.create_server(**kwargs)

    def _attach_floating_ip(self, server_id: str, uid: str, wait: float = 60) -> str | None:
        """Give the server's first port a floating IP; None if the server never got one."""
        conn = self._conn()
        assert self._fip_network is not None
        network_id = self._network_id(self._fip_network)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            ports = list(conn.network.ports(device_id=server_id))
            if ports:
                existing = list(conn.network.ips(port_id=ports[0].id))
                if existing:
                    return str(existing[0].id)
                fip = conn.network.create_ip(floating_network_id=network_id,
                                             port_id=ports[0].id,
                                             description=tag(LABEL_INSTANCE, uid))
                return str(fip.id)
            server = conn.compute.get_server(server_id)
            if str(server.status).upper() == "ERROR":
                return None
            time.sleep(1)
        return None

    def _delete_floating_ips(self, state: BackendState, uid: str) -> None:
        if not self._fip_network:
            return
        conn = self._conn()
        ids = {state["floating_ip_id"]} if state.get("floating_ip_id") else set()
        ids |= {ip.id for ip in conn.network.ips(description=tag(LABEL_INSTANCE, uid))}
        for fip_id in ids:
            conn.network.delete_ip(fip_id, ignore_missing=True)

    def _delete_servers(self, state: BackendState, uid: str) -> None:
        """Delete the recorded server and any other tagged with uid; wait until gone."""
        conn = self._conn()
        ids = {s.id for s in self._find_servers(uid)}
        if state.get("server_id"):
            ids.add(state["server_id"])
        for server_id in ids:
            conn.compute.delete_server(server_id, ignore_missing=True)
        deadline = time.monotonic() + self._delete_timeout
        pending = set(ids)
        while pending:
            for server_id in list(pending):
                try:
                    server = conn.compute.get_server(server_id)
                    if str(server.status).upper() == "DELETED":
                        pending.discard(server_id)
                except os_exc.NotFoundException:
                    pending.discard(server_id)
            if not pending:
                break
            if time.monotonic() > deadline:
                raise BackendError(f"servers {sorted(pending)} still exist after "
                                   f"{self._delete_timeout:.0f}s")
            time.sleep(1)
        self._delete_floating_ips(state, uid)
        # Last: the server is gone, so it was never reachable without its group.
        secgroups.delete_groups(conn, uid, tag(LABEL_INSTANCE, uid), self.deployment_tag)

    def _action(self, uid: str, state: BackendState, wanted: str) -> None:
        """Bring a server towards ``wanted`` ("start", "stop", "reboot"), idempotently."""
        conn = self._conn()
        server = self._get_server(state, uid)
        if server is None:
            raise BackendError(f"the server of instance {uid} no longer exists")
        status = str(server.status).upper()
        if status == "ERROR":
            raise BackendError(map_status(server)[1])
        if wanted == "stop":
            if status == "ACTIVE":
                conn.compute.stop_server(server)
        elif status in ("SHUTOFF", "STOPPED"):
            conn.compute.start_server(server)  # start, and reboot of a stopped server
        elif status == "SUSPENDED":
            conn.compute.resume_server(server)
        elif status == "PAUSED":
            conn.compute.unpause_server(server)
        elif status in ("SHELVED", "SHELVED_OFFLOADED"):
            conn.compute.unshelve_server(server)
        elif wanted == "reboot" and status == "ACTIVE":
            conn.compute.reboot_server(server, "SOFT")
        # other states are transitions already under way: observe() follows them

    # -- the Backend contract ----------------------------------------------------------

    async def create(self, spec: InstanceSpec, checkpoint: Checkpoint) -> BackendState:
        """Create the server (or adopt the one tagged with ``spec.uid``); don't wait for it."""
        if len(tag(LABEL_INSTANCE, spec.uid)) > MAX_TAG or "," in spec.uid:
            raise BackendError(f"instance uid {spec.uid!r} does not fit a Nova tag")
        try:
            user_data = render_user_data(spec, self.boot)
        except BootTemplateError as err:
            raise BackendError(f"boot template: {err}") from err
        try:
            existing = await self._call(self._find_servers, spec.uid)
            if existing:
                state: BackendState = {"server_id": existing[0].id}
                await checkpoint(state)
                return state
            refs = await self._call(self._resolve, spec)
            server = await self._create_once(spec, refs, user_data)
        except os_exc.HttpException as err:
            if _is_quota_error(err):
                raise CapacityError(f"OpenStack quota exceeded: {err.details or err}") from err
            raise BackendError(self._reason(err)) from err
        except (ksa_exc.ClientException, os_exc.SDKException) as err:
            raise BackendError(self._reason(err)) from err
        state = {"server_id": server.id}
        await checkpoint(state)  # before anything else can fail
        if self._fip_network:
            try:
                fip = await self._call(self._attach_floating_ip, server.id, spec.uid)
            except (ksa_exc.ClientException, os_exc.SDKException) as err:
                raise BackendError(f"floating IP: {self._reason(err)}") from err
            if fip:
                state = {**state, "floating_ip_id": fip}
                await checkpoint(state)
        return state

    async def _create_once(self, spec: InstanceSpec, refs: dict[str, Any],
                           user_data: str) -> Any:
        """POST the server; after a transient failure, adopt it if the POST did land."""
        for attempt in range(self._retries + 1):
            try:
                return await self._pool.run(
                    functools.partial(self._create_server, spec, refs, user_data))
            except Exception as err:
                if attempt >= self._retries or not is_retryable(err):
                    raise
                await asyncio.sleep(self._backoff * (2 ** attempt) * (0.5 + random.random()))
                landed = await self._call(self._find_servers, spec.uid)
                if landed:
                    return landed[0]
        raise AssertionError("unreachable")

    async def _act(self, uid: str, state: BackendState, wanted: str) -> None:
        try:
            await self._call(self._action, uid, state, wanted)
        except os_exc.ConflictException as err:
            # Nova refuses actions while a task runs on the server: a transient state
            raise BackendError(f"cannot {wanted} now: {err.details or err}") from err
        except (ksa_exc.ClientException, os_exc.SDKException) as err:
            raise BackendError(self._reason(err)) from err

    async def start(self, spec: InstanceSpec, state: BackendState,
                    checkpoint: Checkpoint) -> BackendState:
        await self._act(spec.uid, state, "start")
        return state

    async def stop(self, uid: str, state: BackendState) -> BackendState:
        """Stop the server; return once Nova reports it stopped (Nova's stop is async, and
        a start issued while it powers off would be lost: the server still looks ACTIVE)."""
        await self._act(uid, state, "stop")
        deadline = time.monotonic() + self._delete_timeout
        while True:
            try:
                server = await self._call(self._get_server, state, uid)
            except (ksa_exc.ClientException, os_exc.SDKException) as err:
                raise BackendError(self._reason(err)) from err
            if server is None:
                raise BackendError(f"the server of instance {uid} no longer exists")
            seen, reason = map_status(server)
            if seen is ResourceState.FAILED:
                raise BackendError(reason)
            if seen is ResourceState.STOPPED:
                return state
            if time.monotonic() > deadline:
                raise BackendError(f"the server of {uid} did not stop within "
                                   f"{self._delete_timeout:.0f}s")
            await asyncio.sleep(0.5)

    async def reboot(self, spec: InstanceSpec, state: BackendState,
                     checkpoint: Checkpoint) -> BackendState:
        await self._act(spec.uid, state, "reboot")
        return state

    async def delete(self, uid: str, state: BackendState) -> None:
        """Delete every server (and floating IP) of ``uid``; return once Nova has no trace."""
        try:
            await self._call(self._delete_servers, state, uid)
        except (ksa_exc.ClientException, os_exc.SDKException) as err:
            raise BackendError(self._reason(err)) from err

    def _addresses(self, server: Any) -> tuple[str | None, str | None]:
        """(fixed IPv4, floating IPv4) of a server, preferring the configured networks."""
        fixed = floating = None
        for _net, entries in (getattr(server, "addresses", None) or {}).items():
            for entry in entries:
                if entry.get("version") != 4:
                    continue
                kind = entry.get("OS-EXT-IPS:type", "fixed")
                if kind == "floating" and floating is None:
                    floating = entry.get("addr")
                elif kind == "fixed" and fixed is None:
                    fixed = entry.get("addr")
        return fixed, floating

    def _observation(self, server: Any, uid: str) -> Observation:
        state, reason = map_status(server)
        fixed, floating = self._addresses(server)
        address = floating if self._endpoint_address == "floating" else fixed
        facts: BackendState = {"server_id": server.id}
        if state is ResourceState.FAILED and reason.startswith("No valid host"):
            facts["capacity_error"] = True  # the reconciler may retry later or elsewhere
        if address:
            facts["address"] = address
        return Observation(state=state, reason=reason, backend_state=facts)

    async def observe(self, uid: str, state: BackendState, secrets: Mapping[str, str],
                      protocols: tuple[str, ...]) -> Observation:
        """Nova's view of the server, its endpoints, and which protocols answer."""
        try:
            server = await self._call(self._get_server, state, uid)
        except (ksa_exc.ClientException, os_exc.SDKException) as err:
            raise BackendError(self._reason(err)) from err
        if server is None:
            return Observation(state=ResourceState.GONE, reason="no server in Nova")
        seen = self._observation(server, uid)
        address = seen.backend_state.get("address")
        if not address:
            return seen
        endpoints: dict[str, str] = {}
        if "jupyter" in protocols:
            endpoints["jupyter"] = f"http://{address}:{self.boot.jupyter_port}"
        if "desktop" in protocols:  # RFB, like the other backends' desktops
            endpoints["desktop"] = f"vnc://{address}:{self.boot.desktop_port}"
        ready: set[str] = set()
        if seen.state is ResourceState.RUNNING:
            if "jupyter" in endpoints and secrets.get("jupyter_token"):
                # same prefix as InstanceSpec.base_url
                if await jupyter_ready(endpoints["jupyter"], f"/instances/{uid}/lab/",
                                       secrets["jupyter_token"], self._probe_timeout):
                    ready.add("jupyter")
            if "desktop" in endpoints and await rfb_ready(address, self.boot.desktop_port,
                                                          self._probe_timeout):
                ready.add("desktop")
        return replace(seen, endpoints=endpoints, ready=frozenset(ready))

    async def list_managed(self) -> dict[str, Observation]:
        """Every server tagged with this deployment, by instance uid (one list call), and
        the security groups left without a server (a crash between creating the group and
        the server) once older than ``leftover_grace``: GONE, so reconcile deletes them."""
        def listing() -> tuple[list[Any], dict[str, str]]:
            conn = self._conn()
            return (list(conn.compute.servers(details=True, tags=self.deployment_tag)),
                    secgroups.leftover_uids(conn, self.deployment_tag,
                                            tag(LABEL_INSTANCE, ""), self._leftover_grace))
        try:
            servers, groups = await self._call(listing)
        except (ksa_exc.ClientException, os_exc.SDKException) as err:
            raise BackendError(self._reason(err)) from err
        found: dict[str, Observation] = {}
        prefix = tag(LABEL_INSTANCE, "")
        for server in servers:
            uid = (server.metadata or {}).get(meta_key(LABEL_INSTANCE)) or next(
                (t[len(prefix):] for t in server.tags or [] if t.startswith(prefix)), None)
            if uid and str(server.status).upper() != "DELETED":
                found[uid] = self._observation(server, uid)
        for uid, group_id in groups.items():
            if uid not in found:
                found[uid] = Observation(
                    state=ResourceState.GONE, reason="only the session's security group is left",
                    backend_state={"security_group_id": group_id})
        return found

    async def close(self) -> None:
        """Close the SDK connection and the thread pool (idempotent)."""
        if self._closed:
            return
        self._closed = True

        def closing() -> None:
            with self._conn_lock:
                if self._connection is not None:
                    self._connection.close()
                    self._connection = None
        await self._pool.run(closing)
        self._pool.shutdown()
