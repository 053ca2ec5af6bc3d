"""Sandbox escape attempts, as data: code run inside alice's session, and what must come out.

Each attempt is Python run in a kernel of alice's JupyterLab (through the portal's proxy)
while bob also runs a session. The code is formatted with the paths of the test context
(``{cookie}``, ``{bob_home}``...) and must ``print`` one line; the test asserts that the
line equals (or, for ``contains``, holds) ``expect``: the specific failure, not merely
"some error". To add an attempt, append an :class:`Attempt`.

Context keys: cookie, database, state_dir, sessions_dir, bob_home, bob_run, data_root,
not_chosen (a proposal alice is a member of but did not choose), bobs_data (bob's proposal),
chosen (the proposal alice chose), home (alice's home as her session sees it),
portal_pid, portal_port, uid, gid (the POSIX identity alice's session must have).
"""

from __future__ import annotations

from dataclasses import dataclass

# A helper defined in every attempt: the exception class name of a call, or "ok: <value>".
PRELUDE = '''
import os, socket, subprocess
def outcome(fn):
    try:
        return "ok: %r" % (fn(),)
    except BaseException as err:
        return type(err).__name__
'''


@dataclass(frozen=True)
class Attempt:
    name: str
    code: str
    expect: str
    contains: bool = False


ATTEMPTS: tuple[Attempt, ...] = (
    # --- the portal's files are not in the sandbox at all ------------------------------
    Attempt("read the cookie secret",
            'print(outcome(lambda: open("{cookie}").read()))', "FileNotFoundError"),
    Attempt("read the database file",
            'print(outcome(lambda: open("{database}", "rb").read(16)))', "FileNotFoundError"),
    Attempt("list the state directory",
            'print(outcome(lambda: os.listdir("{state_dir}")))', "FileNotFoundError"),
    # --- other sessions ----------------------------------------------------------------
    Attempt("read another session's home",
            'print(outcome(lambda: os.listdir("{bob_home}")))', "FileNotFoundError"),
    Attempt("list the sessions' folders",
            'print(outcome(lambda: sorted(os.listdir("{sessions_dir}"))))', "FileNotFoundError"),
    Attempt("the home is at /home/<user>, alone",
            'print(outcome(lambda: (os.getcwd(), os.listdir("/home"))))',
            "ok: ('{home}', ['alice'])"),
    Attempt("read another session's VNC password",
            'print(outcome(lambda: open("{bob_run}/vncpasswd", "rb").read()))',
            "FileNotFoundError"),
    Attempt("connect to bob's JupyterLab socket",
            'print(outcome(lambda: socket.socket(socket.AF_UNIX).connect('
            '"{bob_run}/jupyter.sock")))', "FileNotFoundError"),
    Attempt("connect to bob's VNC socket",
            'print(outcome(lambda: socket.socket(socket.AF_UNIX).connect("{bob_run}/vnc.sock")))',
            "FileNotFoundError"),
    Attempt("reach the portal over loopback TCP",
            'print(outcome(lambda: socket.create_connection(("127.0.0.1", {portal_port}), 3)))',
            "ConnectionRefusedError"),
    # --- processes outside --------------------------------------------------------------
    Attempt("read the environ of a process outside (the portal)",
            'print(outcome(lambda: open("/proc/{portal_pid}/environ", "rb").read()))',
            "FileNotFoundError"),
    Attempt("read the environ of the sandbox's root-owned init",
            'print(outcome(lambda: open("/proc/1/environ", "rb").read()))', "PermissionError"),
    Attempt("list processes outside: only the session's own are visible",
            'print(sorted({{open(f"/proc/{{p}}/status").read().split("Uid:")[1].split()[0] '
            'for p in os.listdir("/proc") if p.isdigit() and p != "1"}}))',
            "['{uid}']"),
    Attempt("signal the portal",
            'print(outcome(lambda: os.kill({portal_pid}, 9)))', "ProcessLookupError"),
    Attempt("signal the sandbox's init",
            'print(outcome(lambda: os.kill(1, 9)))', "PermissionError"),
    # --- experiment data ----------------------------------------------------------------
    Attempt("only the chosen experiment is under data/",
            'print(outcome(lambda: sorted(os.listdir("{home}/data"))))', "ok: ['{chosen}']"),
    Attempt("read a not chosen experiment by its source path",
            'print(outcome(lambda: os.listdir("{data_root}/{not_chosen}")))',
            "FileNotFoundError"),
    Attempt("read bob's experiment by its source path",
            'print(outcome(lambda: os.listdir("{data_root}/{bobs_data}")))', "FileNotFoundError"),
    Attempt("guess the data root",
            'print(outcome(lambda: os.listdir("{data_root}")))', "FileNotFoundError"),
    Attempt("the chosen data is readable",
            'print(outcome(lambda: open("{home}/data/{chosen}/README.txt").read()[:10]))',
            "ok: 'Experiment'"),
    Attempt("write into data/<proposal>",
            'print(outcome(lambda: open("{home}/data/{chosen}/new.txt", "w")))', "OSError"),
    Attempt("remount the data read-write",
            'r = subprocess.run(["mount", "-o", "remount,rw", "{home}/data/{chosen}"], '
            'capture_output=True, text=True); print(r.returncode != 0, "superuser" in r.stderr)',
            "True True"),
    Attempt("mount a tmpfs",
            'r = subprocess.run(["mount", "-t", "tmpfs", "x", "/tmp"], capture_output=True, '
            'text=True); print(r.returncode != 0)', "True"),
    Attempt("unshare a mount namespace",
            'r = subprocess.run(["unshare", "--mount", "true"], capture_output=True, '
            'text=True); print(r.returncode, "Operation not permitted" in r.stderr)', "1 True"),
    Attempt("unshare a user namespace (to be root in it)",
            'r = subprocess.run(["unshare", "--user", "--map-root-user", "true"], '
            'capture_output=True, text=True); print(r.returncode, r.stderr.strip())',
            "1 unshare: unshare failed: No space left on device"),
    # --- identity -----------------------------------------------------------------------
    Attempt("id shows the configured uid, not 0",
            'print(os.getuid(), os.geteuid(), os.getgid())', "{uid} {uid} {gid}"),
    Attempt("no capabilities, no_new_privs",
            'st = dict(l.split(":\\t") for l in open("/proc/self/status").read().splitlines() '
            'if ":\\t" in l); print(st["CapEff"], st["CapPrm"], st["CapBnd"], st["NoNewPrivs"])',
            "0000000000000000 0000000000000000 0000000000000000 1"),
    Attempt("become root with su/sudo-like setuid",
            'r = subprocess.run(["su", "-c", "id"], capture_output=True, text=True, '
            'stdin=subprocess.DEVNULL); print(r.returncode != 0)', "True"),
)
