"""Nova compute driver of Atrium's test harness: fake VMs that really run their session.

Loaded by nova-compute as ``nova.virt.atrium_lab`` (see ../../nova_compute.py). It is nova's
``FakeDriverWithoutFakeNodes`` (stable node id, fixed capacity, instances in memory only)
plus one thing: when a server's user-data is Atrium cloud-config, "booting" the server runs
the services it describes as local processes bound to the server's fixed IP, so a server
on the harness network (a 127.0.0.0/8 subnet) really serves JupyterLab at
``http://<fixed ip>:<port>``.

What it reads from the user-data (rendered from images/boot/cloud-init.yaml.j2):

* ``atrium.services.<name>.argv``: the command; ``${VAR}`` is expanded from the service's
  ``environment_file`` (itself taken from ``write_files``) like systemd does; ``0.0.0.0``
  in an argument becomes the fixed IP.
* Nothing else: accounts and mounts are not emulated (the host has no such users or
  shares); the process runs as nova-compute's user in a per-server scratch home.

Power off / destroy kill the server's process groups; power on / reboot start them again.
Every process group is also recorded in ``<state_path>/atrium-lab/*.pgid`` so the harness
can kill leftovers even if nova-compute itself died.

Env: ``ATRIUM_LAB_PATH`` is prepended to PATH to find the commands (e.g. the venv holding
JupyterLab); ``ATRIUM_LAB_PYTHONPATH`` becomes the services' PYTHONPATH (where the image's
Python modules, e.g. ``images.jupyter_identity``, live); ``ATRIUM_LAB_RUN_SESSIONS=0``
disables running anything.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import shlex
import shutil
import signal
import string
import subprocess
import threading
import time
from typing import Any

import yaml
from nova.virt import fake
from oslo_config import cfg
from oslo_log import log as logging

LOG = logging.getLogger(__name__)
CONF = cfg.CONF


def _user_data_doc(instance: Any) -> dict[str, Any] | None:
    """The decoded cloud-config of ``instance``, or None when it isn't one."""
    raw = getattr(instance, "user_data", None)
    if not raw:
        return None
    try:
        text = base64.b64decode(raw).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    if not text.startswith("#cloud-config"):
        return None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    return doc if isinstance(doc, dict) else None


def _environment(doc: dict[str, Any], path: str | None) -> dict[str, str]:
    """Parse the ``KEY=value`` lines of the write_files entry at ``path`` (shell quoting)."""
    if not path:
        return {}
    for entry in doc.get("write_files") or []:
        if isinstance(entry, dict) and entry.get("path") == path:
            env: dict[str, str] = {}
            for line in str(entry.get("content", "")).splitlines():
                line = line.strip()
                if not line or line.startswith("#") or "=" not in line:
                    continue
                key, _, value = line.partition("=")
                parts = shlex.split(value) if value else [""]
                env[key.strip()] = parts[0] if parts else ""
            return env
    return {}


def _fixed_ipv4(network_info: Any) -> str | None:
    for vif in network_info or []:
        for ip in vif.fixed_ips():
            if ip.get("version") == 4:
                return str(ip["address"])
    return None


class AtriumLabDriver(fake.FakeDriverWithoutFakeNodes):  # type: ignore[misc]
    """A single-node fake hypervisor (8 vCPU, 16 GiB) whose servers run their session."""

    vcpus = 8
    memory_mb = 16384
    local_gb = 100

    def __init__(self, virtapi: Any, read_only: bool = False) -> None:
        super().__init__(virtapi, read_only)
        self._lock = threading.Lock()
        self._procs: dict[str, list[subprocess.Popen[bytes]]] = {}
        self._network_info: dict[str, Any] = {}
        self._pgid_dir = os.path.join(CONF.state_path, "atrium-lab")
        os.makedirs(self._pgid_dir, exist_ok=True)

    # -- nova's driver interface ------------------------------------------------------

    def spawn(self, context: Any, instance: Any, image_meta: Any, injected_files: Any,
              admin_password: Any, allocations: Any, network_info: Any = None,
              block_device_info: Any = None, power_on: bool = True,
              accel_info: Any = None) -> None:
        super().spawn(context, instance, image_meta, injected_files, admin_password,
                      allocations, network_info, block_device_info, power_on, accel_info)
        if network_info:
            self._network_info[instance.uuid] = network_info
        if power_on:
            self._boot(instance, network_info)

    def power_off(self, instance: Any, timeout: int = 0, retry_interval: int = 0) -> None:
        super().power_off(instance, timeout, retry_interval)
        self._halt(instance.uuid)

    def power_on(self, context: Any, instance: Any, network_info: Any,
                 block_device_info: Any = None, accel_info: Any = None,
                 share_info: Any = None) -> None:
        super().power_on(context, instance, network_info, block_device_info, accel_info,
                         share_info)
        self._boot(instance, network_info)

    def reboot(self, context: Any, instance: Any, network_info: Any, reboot_type: str,
               block_device_info: Any = None, bad_volumes_callback: Any = None,
               accel_info: Any = None, share_info: Any = None) -> None:
        self._halt(instance.uuid)
        # the fake driver powers on (or re-spawns on a hard reboot): both boot again
        super().reboot(context, instance, network_info, reboot_type, block_device_info,
                       bad_volumes_callback, accel_info, share_info)

    def destroy(self, context: Any, instance: Any, network_info: Any,
                block_device_info: Any = None, destroy_disks: bool = True,
                destroy_secrets: bool = True) -> None:
        self._halt(instance.uuid)
        self._network_info.pop(instance.uuid, None)
        super().destroy(context, instance, network_info, block_device_info, destroy_disks,
                        destroy_secrets)
        if destroy_disks:
            shutil.rmtree(self._instance_dir(instance.uuid), ignore_errors=True)

    # -- the "guest" --------------------------------------------------------------------

    def _instance_dir(self, uuid: str) -> str:
        return os.path.join(CONF.instances_path, uuid)

    def _boot(self, instance: Any, network_info: Any) -> None:
        """Start the services of ``instance``'s Atrium user-data, if it has any."""
        if os.environ.get("ATRIUM_LAB_RUN_SESSIONS", "1") == "0":
            return
        doc = _user_data_doc(instance)
        section = doc.get("atrium") if doc else None
        if not doc or not isinstance(section, dict):
            return
        address = _fixed_ipv4(network_info or self._network_info.get(instance.uuid))
        if address is None or not ipaddress.ip_address(address).is_loopback:
            # never bind anything outside 127.0.0.0/8 on the test machine
            LOG.info("atrium-lab: %s has no loopback fixed IP (%s): not running services",
                     instance.uuid, address)
            return
        home = os.path.join(self._instance_dir(instance.uuid), "home")
        os.makedirs(home, exist_ok=True)
        services = section.get("services") or {}
        for name, svc in services.items():
            if isinstance(svc, dict) and svc.get("argv"):
                self._start_service(instance.uuid, str(name), svc, doc, address, home)

    def _start_service(self, uuid: str, name: str, svc: dict[str, Any],
                       doc: dict[str, Any], address: str, home: str) -> None:
        svc_env = _environment(doc, svc.get("environment_file"))
        argv = [string.Template(str(a)).safe_substitute(svc_env).replace("0.0.0.0", address)
                for a in svc["argv"]]
        path = os.environ.get("ATRIUM_LAB_PATH", "")
        search = os.pathsep.join(p for p in (path, os.environ.get("PATH", "")) if p)
        exe = shutil.which(argv[0], path=search)
        if exe is None:
            LOG.warning("atrium-lab: %s: %r not found, service %s not started",
                        uuid, argv[0], name)
            return
        argv[0] = exe
        if os.path.basename(exe).startswith("jupyter") and os.geteuid() == 0:
            # the guest runs it as the owner; here we are root and have no such user
            argv.append("--allow-root")
        env = {"PATH": search, "HOME": home, "LANG": "C.UTF-8", **svc_env}
        if os.environ.get("ATRIUM_LAB_PYTHONPATH"):  # e.g. where images.jupyter_identity is
            env["PYTHONPATH"] = os.environ["ATRIUM_LAB_PYTHONPATH"]
        if "ATRIUM_OS_RUN" in os.environ:  # lets the harness find and kill leftovers
            env["ATRIUM_OS_RUN"] = os.environ["ATRIUM_OS_RUN"]
        log_path = os.path.join(self._instance_dir(uuid), f"{name}.log")
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(argv, cwd=home, env=env, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        with open(os.path.join(self._pgid_dir, f"{uuid}.{name}.pgid"), "w") as f:
            f.write(str(proc.pid))
        with self._lock:
            self._procs.setdefault(uuid, []).append(proc)
        LOG.info("atrium-lab: %s: started %s (pid %d) on %s", uuid, name, proc.pid, address)

    def _halt(self, uuid: str) -> None:
        """Kill every process group of the server; waits at most ~5 s, then SIGKILL."""
        with self._lock:
            procs = self._procs.pop(uuid, [])
        for proc in procs:
            _signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
            # kernels and other children may outlive the leader: finish the group
            _signal_group(proc.pid, signal.SIGKILL)
        for entry in os.listdir(self._pgid_dir):
            if entry.startswith(f"{uuid}."):
                os.unlink(os.path.join(self._pgid_dir, entry))


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass
