"""images/: the pod images' build files (linted: no Docker engine here) and the desktop start
script, run for real (Xvnc answers RFB, takes the password, ends on SIGTERM)."""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from spawners.k8s_manifests import DESKTOP_PORT, IDENTITY_PROVIDER, JUPYTER_PORT, PodOptions
from spawners.vncauth import vnc_auth_response, vnc_password_file
from tests.conftest import need
from tests.dockerfile_lint import Dockerfile, lint, parse

IMAGES = Path(__file__).resolve().parent.parent / "images"
SCRIPT = IMAGES / "desktop" / "start-desktop.sh"
# image -> the ports its pods serve (what spawners/k8s_manifests.py connects to).
EXPOSED = {"jupyterlab": {JUPYTER_PORT}, "desktop": {JUPYTER_PORT, DESKTOP_PORT}}
SCIENTIFIC = {"jupyterlab", "jupyter_server", "ipykernel", "numpy", "scipy", "matplotlib",
              "h5py", "pandas"}
# Commands start-desktop.sh runs -> the Debian package providing them.
SCRIPT_PACKAGES = {"Xvnc": "tigervnc-standalone-server", "vncpasswd": "tigervnc-tools",
                   "xfce4-session": "xfce4-session", "openbox": "openbox",
                   "dbus-launch": "dbus-x11", "tini": "tini"}


def dockerfile(image: str) -> Dockerfile:
    return parse((IMAGES / image / "Dockerfile").read_text())


# --------------------------------------------------------------------------- Dockerfiles


@pytest.mark.parametrize("image", sorted(EXPOSED))
def test_dockerfile_passes_the_linter(image: str) -> None:
    assert lint((IMAGES / image / "Dockerfile").read_text(), context=IMAGES) == []


@pytest.mark.parametrize("image", sorted(EXPOSED))
def test_exposed_ports_are_the_ones_the_backend_uses(image: str) -> None:
    assert dockerfile(image).exposed_ports() == EXPOSED[image]


@pytest.mark.parametrize("image", sorted(EXPOSED))
def test_identity_provider_is_installed_and_importable(image: str, tmp_path: Path) -> None:
    """The module lands in <dir>/images/, <dir> is on the image's Python path, the build
    imports it; and the copied files alone provide the class JupyterLab is told to load."""
    parsed = dockerfile(image)
    module, _, cls = IDENTITY_PROVIDER.rpartition(".")
    package, _, filename = module.partition(".")
    copy = next(c for c in parsed.all("COPY") if f"{filename}.py" in c.words()[:-1])
    dest = copy.words()[-1].rstrip("/")
    assert set(copy.words()[:-1]) == {"__init__.py", f"{filename}.py"}
    assert dest.endswith(f"/{package}")
    root = dest.rsplit("/", 1)[0]
    runs = " ".join(r.args for r in parsed.all("RUN"))
    on_path = re.search(rf"echo {re.escape(root)} > .*\.pth", runs) or root in parsed.env().get(
        "PYTHONPATH", "").split(":")
    assert on_path, f"{root} is not put on the image's Python path"
    assert f'python -c "import {module}"' in runs, "the build does not check the import"
    # The same layout here, with nothing else of Atrium's on the path first.
    target = tmp_path / root.lstrip("/") / package
    target.mkdir(parents=True)
    for name in copy.words()[:-1]:
        shutil.copy(IMAGES / name, target / name)
    env = {**os.environ, "PYTHONPATH": str(tmp_path / root.lstrip("/")),
           "ATRIUM_SESSION_TOKEN": "x"}
    out = subprocess.run([sys.executable, "-c", f"import {module} as m; print(m.__file__); "
                          f"print(m.{cls}.__mro__[1].__name__)"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == [str(target / f"{filename}.py"), "IdentityProvider"]


@pytest.mark.parametrize("image", sorted(EXPOSED))
def test_scientific_stack_is_pinned_and_installed(image: str) -> None:
    pins = {}
    for line in (IMAGES / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and re.fullmatch(r"\d+(\.\d+)+", version), f"not pinned: {line}"
            pins[name.lower()] = version
    assert SCIENTIFIC <= set(pins)
    parsed = dockerfile(image)
    copied = next(c for c in parsed.all("COPY") if c.words()[0] == "requirements.txt")
    assert any(f"pip install --no-cache-dir -r {copied.words()[-1]}" in r.args
               for r in parsed.all("RUN"))


def test_desktop_image_ships_the_start_script_the_pods_run() -> None:
    parsed = dockerfile("desktop")
    copy = next(c for c in parsed.all("COPY") if "desktop/start-desktop.sh" in c.words())
    installed = copy.words()[-1]
    assert installed == PodOptions().desktop_command[0], "pods run another path"
    assert copy.flags.get("chmod") == "0755"
    cmd = parsed.all("CMD")[-1].exec_form()
    assert cmd == [installed, f"--listen=0.0.0.0:{DESKTOP_PORT}"]


def test_desktop_image_installs_what_the_script_runs() -> None:
    runs = " ".join(r.args for r in dockerfile("desktop").all("RUN"))
    installed = set(re.findall(r"[a-z0-9][a-z0-9.+-]+", runs.split("install -y", 1)[1]
                               .split("&&", 1)[0]))
    script = SCRIPT.read_text()
    for command, package in SCRIPT_PACKAGES.items():
        if command != "tini":
            assert re.search(rf"\b{re.escape(command)}\b", script), command
        # xfce4 (the metapackage) brings xfce4-session.
        assert package in installed or (package == "xfce4-session" and "xfce4" in installed)
    # The mapping is Debian's own (bookworm), where the commands are installed.
    need(bool(shutil.which("dpkg")), "dpkg")
    paths = {os.path.realpath(p): package for command, package in SCRIPT_PACKAGES.items()
             if (p := shutil.which(command))}
    owners = subprocess.run(["dpkg", "-S", *paths], capture_output=True, text=True).stdout
    for line in owners.splitlines():  # "package: /path" (paths dpkg does not know: absent)
        package, _, path = line.partition(": ")
        assert package == paths[path], line


def test_build_context_lets_every_copied_file_through() -> None:
    allowed = {line[1:] for line in (IMAGES / ".dockerignore").read_text().splitlines()
               if line.startswith("!")}
    for image in EXPOSED:
        for copy in dockerfile(image).all("COPY"):
            assert set(copy.words()[:-1]) <= allowed, (image, copy)


@pytest.mark.parametrize("text, problem", [
    ("FROM python\nUSER 1000\n", "not pinned"),
    ("FROM python:latest\nUSER 1000\n", "moves"),
    ("ARG BASE=debian:bookworm\nFROM $BASE\nUSER 1000\n", "moves"),
    ("FROM python:3.11.9-slim\n", "runs as root"),
    ("FROM python:3.11.9-slim\nUSER root\n", "runs as root"),
    ("FROM python:3.11.9-slim\nENV VNC_PASSWORD=hunter22\nUSER 1000\n", "secret baked"),
    ("FROM python:3.11.9-slim\nRUN curl -u x --token=abcdef1234 y\nUSER 1000\n", "credential"),
    ("FROM python:3.11.9-slim\nCMD jupyter lab\nUSER 1000\n", "shell form"),
    ("FROM python:3.11.9-slim\nCOPY missing.txt /x\nUSER 1000\n", "not in the build context"),
    ("FROM python:3.11.9-slim\nCOPY ../etc/passwd /x\nUSER 1000\n", "outside the build"),
    ("FROM python:3.11.9-slim\nADD https://x/y.tgz /x\nUSER 1000\n", "use COPY"),
    ("FROM python:3.11.9-slim\nRUN apt-get update && apt-get install -y tini \\\n"
     "  && rm -rf /var/lib/apt/lists/*\nUSER 1000\n", "--no-install-recommends"),
    ("FROM python:3.11.9-slim\nRUN pip install numpy\nUSER 1000\n", "--no-cache-dir"),
    ("FROM python:3.11.9-slim\nEXPOSE 8888/sctp\nUSER 1000\n", "not a port"),
    ("FROM python:3.11.9-slim\nFETCH x\nUSER 1000\n", "unknown instruction"),
    ("RUN true\nFROM python:3.11.9-slim\nUSER 1000\n", "before FROM"),
    ("FROM python:3.11.9-slim\nRUN true \\\n# a comment inside\n  && false\nUSER 1000\n", ""),
    ("FROM python@sha256:" + "a" * 64 + "\nUSER 1000\n", ""),
])
def test_linter_catches_what_it_should(text: str, problem: str, tmp_path: Path) -> None:
    problems = lint(text, context=tmp_path)
    if problem:
        assert any(problem in p for p in problems), problems
    else:
        assert problems == []


def test_parser_joins_continuations_and_reads_flags() -> None:
    parsed = parse("# syntax=docker/dockerfile:1\n# a comment\nFROM x:1 AS build\n"
                   "COPY --chmod=0755 --from=build a \\\n   b /c/\nENV A=1 B=\"two words\"\n")
    assert parsed.directives == {"syntax": "docker/dockerfile:1"}
    copy = parsed.all("COPY")[0]
    assert (copy.line, copy.flags, copy.words()) == (4, {"chmod": "0755", "from": "build"},
                                                     ["a", "b", "/c/"])
    assert parsed.env() == {"A": "1", "B": "two words"}


# --------------------------------------------------------------------------- start-desktop.sh


def _desktop_tools() -> None:
    need(bool(shutil.which("Xvnc") and shutil.which("vncpasswd")),
         "TigerVNC (tigervnc-standalone-server, tigervnc-tools)")
    need(bool(shutil.which("openbox")), "openbox")


def _loopback() -> tuple[str, int]:
    """A loopback address of its own and a free port on it (as a pod IP would be)."""
    ip = f"127.{random.randrange(100, 200)}.{random.randrange(1, 255)}.{random.randrange(1, 255)}"
    with socket.socket() as sock:
        sock.bind((ip, 0))
        return ip, int(sock.getsockname()[1])


def _recv(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the VNC server closed the connection")
        data += chunk
    return data


def rfb_login(ip: str, port: int, password: str) -> tuple[int, int, int]:
    """VncAuth login as Atrium's bridge does it: (security result, width, height)."""
    with socket.create_connection((ip, port), timeout=10) as sock:
        assert _recv(sock, 12).startswith(b"RFB 003.")
        sock.sendall(b"RFB 003.008\n")
        types = _recv(sock, _recv(sock, 1)[0])
        assert types == bytes([2]), f"only VncAuth must be offered, got {list(types)}"
        sock.sendall(b"\x02")
        sock.sendall(vnc_auth_response(password, _recv(sock, 16)))
        result = struct.unpack(">I", _recv(sock, 4))[0]
        if result:
            return result, 0, 0
        sock.sendall(b"\x01")  # shared
        width, height = struct.unpack(">HH", _recv(sock, 24)[:4])
        return 0, width, height


def marked(mark: str) -> dict[int, bytes]:
    """pid -> environ of every live process carrying ``ATRIUM_TEST_MARK=mark``."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if f"ATRIUM_TEST_MARK={mark}".encode() in environ.split(b"\0") and state != "Z":
            found[int(entry.name)] = environ
    return found


def wait_until(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.fixture
def desktop_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    _desktop_tools()
    (tmp_path / "home").mkdir()
    (tmp_path / "run").mkdir()
    mark = os.urandom(6).hex()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path / "home"),
           "TMPDIR": str(tmp_path / "run"), "ATRIUM_TEST_MARK": mark,
           "VNC_PASSWORD": os.urandom(6).hex()[:8]}
    yield env
    for pid in marked(mark):  # a failed test must not leave a desktop behind
        os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("session, program", [("openbox", b"openbox"),
                                              ("xfce", b"xfce4-session")])
def test_start_desktop_serves_vnc_and_ends_on_sigterm(desktop_env: dict[str, str],
                                                      tmp_path: Path, session: str,
                                                      program: bytes) -> None:
    """xfce too: its ssh/gpg agents would detach and outlive the desktop."""
    if session == "xfce":
        need(bool(shutil.which("xfce4-session") and shutil.which("dbus-launch")),
             "xfce4 and dbus-x11")
    ip, port = _loopback()
    password, mark = desktop_env["VNC_PASSWORD"], desktop_env["ATRIUM_TEST_MARK"]
    proc = subprocess.Popen([str(SCRIPT), f"--listen={ip}:{port}", f"--session={session}"],
                            env=desktop_env, cwd=desktop_env["HOME"], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: _answers(ip, port), 15, "Xvnc did not answer")
        # The script exec'd the X server: the started process is Xvnc itself.
        assert Path(f"/proc/{proc.pid}/comm").read_text().strip() == "Xvnc"
        assert rfb_login(ip, port, password[::-1])[0] != 0, "a wrong password was accepted"
        assert rfb_login(ip, port, password) == (0, 1280, 800)
        # The desktop session runs on it; the secret is on no command line, in no environ.
        wait_until(lambda: any(program in Path(f"/proc/{p}/cmdline").read_bytes()
                               for p in marked(mark)), 20, f"no {session} session")
        for pid, environ in marked(mark).items():
            assert not any(v.startswith(b"VNC_PASSWORD=") for v in environ.split(b"\0")), pid
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                assert password.encode() not in cmdline.read_bytes(), cmdline
            except OSError:
                continue
        # vncpasswd -f and Atrium's own writer agree; the file is private.
        argv = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
        passwd = Path(argv[argv.index(b"-PasswordFile") + 1].decode())
        assert passwd.read_bytes() == vnc_password_file(password)
        assert passwd.stat().st_mode & 0o777 == 0o600
        assert passwd.parent.stat().st_mode & 0o777 == 0o700
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    wait_until(lambda: not marked(mark), 10, f"left behind: {marked(mark)}")
    assert not _answers(ip, port)
    # (xfce's own sockets may stay in TMPDIR, as anywhere; the password file may not.)
    assert list((tmp_path / "run").glob("atrium-desktop.*")) == [], "password file left"


def _answers(ip: str, port: int) -> bool:
    try:
        with socket.create_connection((ip, port), timeout=1) as sock:
            sock.settimeout(2)
            return _recv(sock, 12).startswith(b"RFB ")
    except OSError:
        return False


@pytest.mark.parametrize("args, env, message", [
    (["--listen=127.0.0.1:6080"], {"VNC_PASSWORD": ""}, "VNC_PASSWORD is empty"),
    (["--listen=6080"], {}, "expected IP:PORT"),
    (["--display=0"], {}, "expected :N or auto"),
    (["--session=kde"], {}, "expected auto, xfce or openbox"),
    (["--verbose"], {}, "unknown argument"),
])
def test_start_desktop_refuses_bad_input(desktop_env: dict[str, str], args: list[str],
                                         env: dict[str, str], message: str) -> None:
    result = subprocess.run([str(SCRIPT), *args], env={**desktop_env, **env},
                            capture_output=True, text=True, timeout=10)
    assert result.returncode == 2 and message in result.stderr
    assert not marked(desktop_env["ATRIUM_TEST_MARK"])


def test_start_desktop_is_posix_sh() -> None:
    need(bool(shutil.which("dash")), "dash")
    assert SCRIPT.read_text().startswith("#!/bin/sh\n")
    assert os.access(SCRIPT, os.X_OK)
    subprocess.run(["dash", "-n", str(SCRIPT)], check=True)


# --------------------------------------------------------------------------- the portal image

ROOT = IMAGES.parent
PORTAL = ROOT / "images" / "portal" / "Dockerfile"


def test_portal_dockerfile_passes_the_linter() -> None:
    """Context: the repository root (the wheel is built from the sources)."""
    assert lint(PORTAL.read_text(), context=ROOT) == []


def test_portal_image_installs_every_package_and_runs_serve_unprivileged() -> None:
    import tomllib

    parsed = parse(PORTAL.read_text())
    copied = {ins.words()[0] for ins in parsed.all("COPY") if not ins.flags}
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"]["find"]["include"]
    packages = {p.rstrip("*") for p in include}
    assert packages <= copied, f"packages not in the image: {packages - copied}"
    assert any("pip install --no-cache-dir /wheels/" in ins.args for ins in parsed.all("RUN"))
    assert parsed.all("CMD")[-1].exec_form() == ["atrium", "serve"]
    user = parsed.all("USER")[-1].args.split(":")[0]
    assert user.isdigit() and int(user) != 0  # numeric: runAsNonRoot can verify it
    # The ports the chart's probes and Service use (values.yaml: portal.port, metrics.port).
    assert parsed.exposed_ports() == {8000, 9090}
