"""The VM boot path itself: Atrium's user-data, checked by cloud-init and run in a guest.

No cloud needed: the user-data comes from spawners.cloudinit as for a real server, with a
test mount template (a read-only bind of a host folder where a site would mount NFS or
CephFS); tests/harness/openstack/guest boots it in a sandbox standing in for the VM.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import signal
import stat
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from spawners.base import DataMount, InstanceSpec, Owner
from spawners.cloudinit import BootSettings, MountTemplate, render_user_data
from tests.conftest import ROOT, need
from tests.harness.openstack.guest import sandbox

# the harness' "file server": the host's filesystem, read-only in every guest
TEST_MOUNTS = {"default": MountTemplate(device=sandbox.FILE_SERVER + "{source}", fstype="none",
                                        options="bind")}
OWNER = Owner("alice", uid=2001, gid=3001, email="alice@example.org")


@dataclass
class Guest:
    uid: str
    token: str
    address: str
    disk: Path
    data: Path
    log: Path

    def lab(self, path: str, method: str = "GET", body: dict | None = None) -> tuple[int, str]:
        url = f"http://{self.address}:8888/instances/{self.uid}/lab/api/{path}"
        request = urllib.request.Request(
            url, method=method, data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"token {self.token}",
                     "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()
        except (urllib.error.URLError, OSError) as err:  # not listening yet
            return 0, str(err)


def _spec(uid: str, token: str, data: Path) -> InstanceSpec:
    return InstanceSpec(
        uid=uid, name="boot test", image_ref="atrium-tiny", flavour_ref="atrium.small",
        protocols=("jupyter",), owner=OWNER,
        mounts=(DataMount("20261234", str(data), "data/20261234"),),
        secrets={"jupyter_token": token, "portal_api_key": "never-in-user-data"})


def _need_tools() -> None:
    missing = sandbox.missing_tools()
    need(not missing, f"guest boot needs: {', '.join(missing)}")


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guest]:
    _need_tools()
    base = tmp_path_factory.mktemp("guest")
    data = base / "exports" / "20261234"
    data.mkdir(parents=True)
    (data / "readme.txt").write_text("beamtime data\n")
    uid, token = f"i-{secrets.token_hex(4)}", secrets.token_urlsafe(16)
    text = render_user_data(_spec(uid, token, data),
                            BootSettings(deployment_id="boot-test", mount_templates=TEST_MOUNTS))
    user_data = base / "user-data"
    user_data.write_text(text)
    address = f"127.44.{random.randint(1, 254)}.{random.randint(1, 254)}"
    # the "image" software: the venv holding JupyterLab and the interpreter it links to
    visible = sorted({str(Path(sys.executable).parent.parent), sys.base_prefix})
    sandbox.validate(user_data)
    g = Guest(uid, token, address, base / "disk", data, base / "console.log")
    proc = sandbox.boot(g.disk, user_data, hostname=uid, address=address, log=g.log,
                        lab_path=str(Path(sys.executable).parent), lab_pythonpath=str(ROOT),
                        visible=visible)
    try:
        deadline = time.monotonic() + 120
        while g.lab("status")[0] != 200:
            if proc.poll() is not None or time.monotonic() > deadline:
                logs = "".join(p.read_text(errors="replace")[-2000:]
                               for p in [g.log, *(g.disk / "var/log").glob("*.log")])
                raise AssertionError(f"the guest's JupyterLab never answered:\n{logs}")
            time.sleep(0.5)
        yield g
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def test_cloud_init_accepts_atriums_user_data_and_refuses_a_broken_one(
        tmp_path: Path) -> None:
    _need_tools()
    good = tmp_path / "good"
    good.write_text(render_user_data(_spec("i-1", "tok", tmp_path),
                                     BootSettings(mount_templates=TEST_MOUNTS)))
    sandbox.validate(good)
    bad = tmp_path / "bad"
    bad.write_text("#cloud-config\nruncmd: 5\nwrite_files: {path: 1}\n")
    with pytest.raises(sandbox.GuestError, match="invalid user-data"):
        sandbox.validate(bad)


def test_boot_creates_the_owner_account_in_the_guest_only(guest: Guest) -> None:
    passwd = (guest.disk / "etc" / "passwd").read_text().splitlines()
    assert [line for line in passwd if line.startswith("alice:")] == [
        "alice:x:2001:3001::/home/alice:/bin/bash"]
    assert not any(line.startswith("alice:") for line in Path("/etc/passwd").read_text()
                   .splitlines())  # the host is untouched
    home = guest.disk / "home" / "alice"
    assert (home.stat().st_uid, home.stat().st_gid) == (2001, 3001)


def test_session_env_holds_only_this_instances_secret_readable_by_root(
        guest: Guest) -> None:
    env = guest.disk / "etc" / "atrium" / "session.env"
    assert stat.S_IMODE(env.stat().st_mode) == 0o600 and env.stat().st_uid == 0
    text = env.read_text()
    assert guest.token in text and "never-in-user-data" not in text


def test_jupyterlab_from_the_unit_runs_as_the_owner_in_their_home(guest: Guest) -> None:
    status, _ = guest.lab("contents/made-by-test.txt", "PUT",
                          {"type": "file", "format": "text", "content": "hello"})
    assert status == 201
    made = guest.disk / "home" / "alice" / "made-by-test.txt"
    assert made.read_text() == "hello"
    assert (made.stat().st_uid, made.stat().st_gid) == (2001, 3001)
    # without the token: refused
    request = urllib.request.Request(
        f"http://{guest.address}:8888/instances/{guest.uid}/lab/api/contents")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=10)
    assert err.value.code in (401, 403)


def test_experiment_data_is_mounted_read_only(guest: Guest) -> None:
    status, body = guest.lab("contents/data/20261234")
    assert status == 200, body
    assert [item["name"] for item in json.loads(body)["content"]] == ["readme.txt"]
    status, body = guest.lab("contents/data/20261234/new.txt", "PUT",
                             {"type": "file", "format": "text", "content": "x"})
    assert status >= 400, body
    assert sorted(p.name for p in guest.data.iterdir()) == ["readme.txt"]
    fstab = (guest.disk / "etc" / "fstab").read_text()
    assert (f"{sandbox.FILE_SERVER}{guest.data} /home/alice/data/20261234 none ro,bind 0 0"
            in fstab)
