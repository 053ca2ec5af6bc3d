"""A small Dockerfile parser and linter for Atrium's pod images.

The test machines have no Docker engine, so the images cannot be built there; this checks
what can be checked without building: the syntax, and rules every Atrium image follows.

:func:`parse` turns a Dockerfile into :class:`Instruction` s (parser directives, comments,
line continuations and ``--flags`` handled as Docker does). :func:`lint` returns problems as
``"line N: ..."`` strings (empty: clean). Rules:

* every instruction is a known one (``MAINTAINER`` is deprecated); ``FROM`` comes first (only
  ``ARG`` may precede it);
* ``FROM`` is pinned: a version tag (not ``latest``, with a digit) or a ``@sha256:`` digest,
  after substituting ``ARG`` defaults;
* ``COPY`` sources exist in the build context and stay inside it; ``ADD`` is refused (no
  checksum for URLs, surprising archive extraction: use ``COPY``);
* no secrets baked in: ``ENV``/``ARG`` whose name says password/secret/token/key with a
  value, private keys, ``name=value`` credentials in ``RUN``;
* ``apt-get install`` runs with ``-y --no-install-recommends`` in the same ``RUN`` as
  ``apt-get update`` and the removal of ``/var/lib/apt/lists``; ``pip install`` with
  ``--no-cache-dir``;
* ``CMD`` / ``ENTRYPOINT`` in exec (JSON) form, so signals reach the process, not a shell;
* the final ``USER`` is set and not root.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

KNOWN = frozenset({
    "FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME",
    "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL", "MAINTAINER",
})
_DIRECTIVE = re.compile(r"^#\s*([a-zA-Z]+)\s*=\s*(\S+)\s*$")
_VAR = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
_SECRET_NAME = re.compile(r"(PASSW(OR)?D|SECRET|TOKEN|API_?KEY|PRIVATE_?KEY|CREDENTIAL)",
                          re.IGNORECASE)
_SECRET_ASSIGN = re.compile(
    r"\b[\w-]*(passw(or)?d|secret|token|api_?key)[\w-]*\s*[=:]\s*['\"]?[^\s'\"$]{4,}",
    re.IGNORECASE)
_DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")


@dataclass(frozen=True)
class Instruction:
    """One instruction: its first line, keyword (upper case), ``--flags`` and the rest."""

    line: int
    keyword: str
    args: str
    flags: dict[str, str] = field(default_factory=dict)

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form instruction (CMD, ENTRYPOINT, ...), else None."""
        if not self.args.startswith("["):
            return None
        try:
            value = json.loads(self.args)
        except ValueError:
            return None
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
        return None

    def words(self) -> list[str]:
        """The arguments split like a shell would (for COPY, EXPOSE, USER...)."""
        form = self.exec_form()
        return form if form is not None else shlex.split(self.args)


@dataclass
class Dockerfile:
    directives: dict[str, str]
    instructions: list[Instruction]

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def env(self) -> dict[str, str]:
        """ARG defaults and ENV values, later ones winning (what RUN and CMD see)."""
        values: dict[str, str] = {}
        for ins in self.instructions:
            if ins.keyword in ("ARG", "ENV"):
                values.update(key_values(ins, values))
        return values

    def exposed_ports(self) -> set[int]:
        return {int(w.split("/")[0]) for ins in self.all("EXPOSE") for w in ins.words()}


def substitute(text: str, values: dict[str, str]) -> str:
    """``$VAR`` / ``${VAR}`` replaced from ``values`` (unknown ones left as they are)."""
    return _VAR.sub(lambda m: values.get(m.group(1) or m.group(2), m.group(0)), text)


def key_values(ins: Instruction, values: dict[str, str] | None = None) -> dict[str, str]:
    """The ``KEY=value`` pairs of an ENV/ARG/LABEL (``ENV KEY value`` too); ARG without
    default gives ""."""
    words = shlex.split(ins.args)
    if ins.keyword == "ENV" and len(words) >= 2 and "=" not in words[0]:
        return {words[0]: substitute(" ".join(words[1:]), values or {})}
    out: dict[str, str] = {}
    for word in words:
        key, _, value = word.partition("=")
        out[key] = substitute(value, values or {})
    return out


def parse(text: str) -> Dockerfile:
    """Parse ``text`` (raises ValueError on a line that is not an instruction)."""
    lines = text.splitlines()
    directives: dict[str, str] = {}
    index = 0
    # Parser directives: only at the very top, before any other line (comments included).
    while index < len(lines):
        match = _DIRECTIVE.match(lines[index])
        if not match or match.group(1).lower() in directives:
            break
        directives[match.group(1).lower()] = match.group(2)
        index += 1
    escape = directives.get("escape", "\\")
    instructions: list[Instruction] = []
    while index < len(lines):
        start, raw = index + 1, lines[index]
        index += 1
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        parts: list[str] = []
        line = raw
        while True:
            stripped = line.strip()
            if not stripped.endswith(escape):
                parts.append(stripped)
                break
            parts.append(stripped[:-1].strip())
            # Comment lines inside a continued instruction are dropped, as Docker does.
            while index < len(lines) and lines[index].lstrip().startswith("#"):
                index += 1
            if index >= len(lines):
                break
            line = lines[index]
            index += 1
        joined = " ".join(p for p in parts if p)
        keyword, _, rest = joined.partition(" ")
        if not re.fullmatch(r"[A-Za-z]+", keyword):
            raise ValueError(f"line {start}: not an instruction: {raw.strip()!r}")
        flags: dict[str, str] = {}
        rest = rest.strip()
        while rest.startswith("--"):
            flag, _, rest = rest.partition(" ")
            name, _, value = flag[2:].partition("=")
            flags[name] = value
            rest = rest.strip()
        instructions.append(Instruction(start, keyword.upper(), rest, flags))
    return Dockerfile(directives, instructions)


def _check_from(ins: Instruction, args: dict[str, str], stages: set[str]) -> list[str]:
    words = ins.args.split()
    image = substitute(words[0], args) if words else ""
    if len(words) >= 3 and words[1].lower() == "as":
        stages.add(words[2].lower())
    if image.lower() in stages or image == "scratch":
        return []
    if "$" in image:
        return [f"line {ins.line}: FROM {words[0]}: a variable without default"]
    if _DIGEST.search(image):
        return []
    name = image.rsplit("/", 1)[-1]
    tag = name.partition(":")[2]
    if not tag:
        return [f"line {ins.line}: FROM {image} is not pinned: give a version tag or digest"]
    if tag == "latest" or not any(c.isdigit() for c in tag):
        return [f"line {ins.line}: FROM {image}: tag {tag!r} moves; pin a version"]
    return []


def _check_copy(ins: Instruction, context: Path | None) -> list[str]:
    if ins.keyword == "ADD":
        return [f"line {ins.line}: ADD: use COPY (ADD fetches URLs without checksum and "
                "unpacks archives implicitly)"]
    words = ins.words()
    if len(words) < 2:
        return [f"line {ins.line}: COPY needs a source and a destination"]
    if "from" in ins.flags or context is None:
        return []
    problems = []
    root = context.resolve()
    for source in words[:-1]:
        path = (root / source).resolve()
        if path != root and root not in path.parents:
            problems.append(f"line {ins.line}: COPY {source}: outside the build context")
            continue
        pattern = any(c in source for c in "*?[")
        if not (any(root.glob(source)) if pattern else path.exists()):
            problems.append(f"line {ins.line}: COPY {source}: not in the build context "
                            f"({root})")
    return problems


def _check_run(ins: Instruction) -> list[str]:
    problems = []
    text = ins.args
    if re.search(r"\bapt-get\s+install\b", text):
        for needed in ("-y", "--no-install-recommends"):
            if not re.search(rf"apt-get\s+install\b[^&;|]*\s{re.escape(needed)}(\s|$)", text):
                problems.append(f"line {ins.line}: apt-get install without {needed}")
        if "apt-get update" not in text:
            problems.append(f"line {ins.line}: apt-get install without apt-get update in the "
                            "same RUN (a cached, stale package list)")
        if "rm -rf /var/lib/apt/lists" not in text:
            problems.append(f"line {ins.line}: apt-get install leaves /var/lib/apt/lists in "
                            "the layer")
    if re.search(r"\bpip3?\s+install\b", text) and "--no-cache-dir" not in text:
        problems.append(f"line {ins.line}: pip install without --no-cache-dir")
    return problems


def _check_secrets(ins: Instruction) -> list[str]:
    problems = []
    if ins.keyword in ("ENV", "ARG"):
        for key, value in key_values(ins).items():
            if _SECRET_NAME.search(key) and value:
                problems.append(f"line {ins.line}: {ins.keyword} {key}: a secret baked into "
                                "the image (pass it at run time)")
    if "-----BEGIN" in ins.args and "PRIVATE KEY" in ins.args:
        problems.append(f"line {ins.line}: a private key in the Dockerfile")
    if ins.keyword == "RUN" and _SECRET_ASSIGN.search(ins.args):
        problems.append(f"line {ins.line}: RUN sets a credential literally")
    return problems


def lint(text: str, context: Path | None = None) -> list[str]:
    """Problems of Dockerfile ``text`` (see the module docstring); ``context``: the build
    context folder, to check COPY sources (None: not checked)."""
    try:
        parsed = parse(text)
    except ValueError as err:
        return [str(err)]
    problems: list[str] = []
    args: dict[str, str] = {}
    stages: set[str] = set()
    seen_from = False
    user = ""
    for ins in parsed.instructions:
        if ins.keyword not in KNOWN:
            problems.append(f"line {ins.line}: unknown instruction {ins.keyword}")
            continue
        if ins.keyword == "MAINTAINER":
            problems.append(f"line {ins.line}: MAINTAINER is deprecated: use a LABEL")
        if not seen_from and ins.keyword not in ("FROM", "ARG"):
            problems.append(f"line {ins.line}: {ins.keyword} before FROM")
        if ins.keyword == "ARG" and not seen_from:
            args.update(key_values(ins, args))
        if ins.keyword == "FROM":
            seen_from = True
            user = ""  # each stage starts as root again
            problems += _check_from(ins, args, stages)
        elif ins.keyword in ("COPY", "ADD"):
            problems += _check_copy(ins, context)
        elif ins.keyword == "RUN":
            problems += _check_run(ins)
        elif ins.keyword in ("CMD", "ENTRYPOINT") and ins.exec_form() is None:
            problems.append(f"line {ins.line}: {ins.keyword} in shell form: signals would "
                            "reach /bin/sh, not the program (use the JSON form)")
        elif ins.keyword == "USER":
            user = ins.words()[0] if ins.words() else ""
        elif ins.keyword == "EXPOSE":
            for word in ins.words():
                port, _, proto = word.partition("/")
                if not port.isdigit() or not 0 < int(port) < 65536 or proto not in (
                        "", "tcp", "udp"):
                    problems.append(f"line {ins.line}: EXPOSE {word}: not a port")
        problems += _check_secrets(ins)
    if not seen_from:
        problems.append("no FROM instruction")
    if user.split(":")[0] in ("", "root", "0"):
        problems.append("the image runs as root: end with a USER that is not root")
    return problems
