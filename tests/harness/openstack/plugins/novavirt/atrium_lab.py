"""Nova compute driver of Atrium's test harness: fake VMs that really boot their user-data.

Loaded by nova-compute as ``nova.virt.atrium_lab`` (see ../../nova_compute.py). It is nova's
``FakeDriverWithoutFakeNodes`` (stable node id, fixed capacity, instances in memory only)
plus a guest: a server whose user-data is a cloud-config boots it the way a VM would,
in a sandbox standing in for the VM (tests/harness/openstack/guest):

* at spawn, the user-data must pass cloud-init's own schema check (``cloud-init schema``),
  else the server goes to ERROR with the checker's message as its fault;
* the guest's init executes what cloud-init would (bootcmd, write_files, users, mounts,
  runcmd: Atrium's boot script creates the owner, mounts the data read-only and starts the
  systemd units, which run as the owner) on a per-server disk kept across reboots; later
  boots start the enabled units again, as systemd would;
* the guest shares the host's network: its services listen on the server's fixed IP (a
  127.0.0.0/8 address on the harness network; servers without one boot nothing), and the
  host's filesystem is the "file server", visible read-only at /run/atrium-lab/host in
  every guest (a test mount template points there).

Power off / destroy kill the guest (its PID namespace dies with it); power on / reboot boot
it again. Every guest's process group is also recorded in ``<state_path>/atrium-lab/
*.pgid`` so the harness can kill leftovers even if nova-compute itself died.

Env: ``ATRIUM_LAB_PATH`` is prepended to the services' PATH (e.g. the venv holding
JupyterLab: the "image" software; venvs are made visible in the guest, with their base
interpreter); ``ATRIUM_LAB_PYTHONPATH`` becomes their PYTHONPATH (where the image's Python
modules, e.g. ``images.jupyter_identity``, live); ``ATRIUM_LAB_RUN_SESSIONS=0`` disables
booting anything.
"""

from __future__ import annotations

import base64
import importlib.util
import ipaddress
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from nova import exception
from nova.virt import fake
from oslo_config import cfg
from oslo_log import log as logging

LOG = logging.getLogger(__name__)
CONF = cfg.CONF


def _load_sandbox() -> Any:
    path = Path(__file__).resolve().parents[2] / "guest" / "sandbox.py"
    spec = importlib.util.spec_from_file_location("atrium_guest_sandbox", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sandbox = _load_sandbox()


def _user_data(instance: Any) -> str | None:
    """The decoded cloud-config of ``instance``, or None when it isn't one."""
    raw = getattr(instance, "user_data", None)
    if not raw:
        return None
    try:
        text = base64.b64decode(raw).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    return text if text.startswith("#cloud-config") else None


def _visible(lab_path: str, pythonpath: str) -> list[str]:
    """Host dirs the guest must see: the lab venvs (with their base interpreter) and the
    PYTHONPATH entries (the host's /root and /tmp are hidden in guests)."""
    found: set[str] = set()
    for entry in filter(None, [*lab_path.split(os.pathsep), *pythonpath.split(os.pathsep)]):
        path = Path(entry)
        cfg_file = path.parent / "pyvenv.cfg"
        if cfg_file.exists():
            found.add(str(path.parent))
            for line in cfg_file.read_text().splitlines():
                key, _, value = line.partition("=")
                if key.strip() == "home":
                    found.add(str(Path(value.strip()).parent))
        elif path.exists():
            found.add(str(path))
    return sorted(found)


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
        text = _user_data(instance)
        if text is not None and os.environ.get("ATRIUM_LAB_RUN_SESSIONS", "1") != "0":
            path = self._write_user_data(instance.uuid, text)
            try:
                sandbox.validate(path)
            except sandbox.GuestError as err:
                # (InvalidInput: a build abort with this message as the fault, no reschedule)
                raise exception.InvalidInput(reason=str(err)) from err
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

    def _write_user_data(self, uuid: str, text: str) -> Path:
        path = Path(self._instance_dir(uuid)) / "user-data"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def _boot(self, instance: Any, network_info: Any) -> None:
        """Boot ``instance``'s guest from its cloud-config user-data, if it has one."""
        if os.environ.get("ATRIUM_LAB_RUN_SESSIONS", "1") == "0":
            return
        text = _user_data(instance)
        if text is None:
            return
        address = _fixed_ipv4(network_info or self._network_info.get(instance.uuid))
        if address is None or not ipaddress.ip_address(address).is_loopback:
            # never bind anything outside 127.0.0.0/8 on the test machine
            LOG.info("atrium-lab: %s has no loopback fixed IP (%s): not booting it",
                     instance.uuid, address)
            return
        uuid = instance.uuid
        user_data = self._write_user_data(uuid, text)
        lab_path = os.environ.get("ATRIUM_LAB_PATH", "")
        pythonpath = os.environ.get("ATRIUM_LAB_PYTHONPATH", "")
        # (ATRIUM_OS_RUN tags the guest's processes for the harness' clean-up; a test
        # finds one server's processes by ATRIUM_LAB_INSTANCE)
        extra = {"ATRIUM_LAB_INSTANCE": uuid,
                 **{k: os.environ[k] for k in ("ATRIUM_OS_RUN",) if k in os.environ}}
        proc = sandbox.boot(
            Path(self._instance_dir(uuid)) / "disk", user_data, hostname=f"vm-{uuid[:8]}",
            address=address, log=Path(self._instance_dir(uuid)) / "console.log",
            lab_path=lab_path, lab_pythonpath=pythonpath,
            visible=_visible(lab_path, pythonpath), extra_env=extra)
        with open(os.path.join(self._pgid_dir, f"{uuid}.guest.pgid"), "w") as f:
            f.write(str(proc.pid))
        with self._lock:
            self._procs.setdefault(uuid, []).append(proc)
        LOG.info("atrium-lab: %s: guest booting (pid %d) on %s", uuid, proc.pid, address)

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
