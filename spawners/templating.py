"""Rendering of admin-provided text: Jinja2 in its immutable sandbox, and plain placeholders.

Admins write boot templates (catalogue ``boot_template``, files in the boot template dirs)
and placeholder patterns (mount devices, home paths). They are trusted to configure, not to
run code in the portal: a template or pattern must not reach Python internals
(``{{ ''.__class__.__mro__ }}``, ``"{path.__class__}"``), call methods that change data,
or read attributes it was not given.

* :func:`sandboxed_environment` is :class:`jinja2.sandbox.ImmutableSandboxedEnvironment`:
  unsafe attribute access raises :class:`jinja2.exceptions.SecurityError` (a
  ``TemplateError``) at render time, and mutating methods of lists/dicts are refused.
* :func:`format_placeholders` fills ``{name}`` placeholders and refuses anything else
  (attribute or index access, conversions, format specs), unlike :meth:`str.format`.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

SecurityError = jinja2.exceptions.SecurityError


def sandboxed_environment(search_path: Sequence[str] = ()) -> jinja2.Environment:
    """A strict (undefined names fail), non-escaping sandbox loading files from
    ``search_path`` (none: inline templates only)."""
    loader = jinja2.FileSystemLoader(list(search_path)) if search_path else None
    return ImmutableSandboxedEnvironment(
        loader=loader, undefined=jinja2.StrictUndefined, autoescape=False,
        keep_trailing_newline=True)


def format_placeholders(pattern: str, values: Mapping[str, str], what: str) -> str:
    """``pattern`` with each ``{name}`` replaced by ``values[name]`` (``{{``/``}}`` escape
    braces). ValueError naming ``what`` for any other field form or an unknown name."""
    out: list[str] = []
    try:
        parsed = list(string.Formatter().parse(pattern))
    except ValueError as err:
        raise ValueError(f"{what} {pattern!r}: {err}") from err
    for literal, field, spec, conversion in parsed:
        out.append(literal)
        if field is None:
            continue
        if spec or conversion or not field.isidentifier() or field not in values:
            raise ValueError(f"{what} {pattern!r}: placeholder {{{field}}} is not one of "
                             + ", ".join(f"{{{k}}}" for k in values))
        out.append(str(values[field]))
    return "".join(out)
