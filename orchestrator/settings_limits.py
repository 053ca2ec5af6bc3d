"""The portal's resource bounds: request bodies, timeouts, WebSocket messages, the desktop
clipboard, upstream connections per instance and open connections per user.

Part of the settings (``Settings.limits``), read from the same ``ATRIUM_*`` variables and
validated the same way (:class:`orchestrator.settings.SettingsError` naming the variable).
Sizes are in bytes (the table shows MiB/GiB for short), times in seconds.

| variable | default | meaning |
|---|---|---|
| ATRIUM_MAX_BODY | 1 MiB | largest request body but to a lab; larger: 413 |
| ATRIUM_LAB_MAX_BODY | 10 GiB | largest body streamed to a lab, once authorised (1) |
| ATRIUM_BODY_TIMEOUT | 60 | seconds a client may take to send a body (outside the lab proxy) |
| ATRIUM_LAB_BODY_TIMEOUT | 3600 | seconds an authorised upload to a lab may take |
| ATRIUM_IDLE_TIMEOUT | 120 | seconds an idle connection (or its headers) may take |
| ATRIUM_WS_MAX_MESSAGE | 65536 | largest message to the portal's own WebSockets |
| ATRIUM_LAB_WS_MAX_MESSAGE | 64 MiB | largest WebSocket message to or from a lab (2) |
| ATRIUM_CLIPBOARD_MAX | 1 MiB | largest clipboard text sent to a desktop (3) |
| ATRIUM_INSTANCE_CONNECTIONS | 32 | HTTP requests in flight to one instance; more wait (4) |
| ATRIUM_INSTANCE_QUEUE | 128 | requests waiting for one instance; more are answered 503 |
| ATRIUM_UPSTREAM_CONNECTIONS | 1000 | HTTP requests in flight to all instances together |
| ATRIUM_USER_CONNECTIONS | 100 | a user's open lab/desktop HTTP streams + WebSockets (5) |

(1) The lab proxy streams bodies (nothing is buffered whole); until the caller is
authorised the small ATRIUM_MAX_BODY applies there too.
(2) JupyterLab's own server refuses messages above 10 MiB from the browser; kernel output
(plots, tables) going the other way can be larger. A larger message closes the WebSocket.
(3) Longer text is dropped: counted as it arrives, never held. Watch-only guests'
clipboard messages are read past without being kept at all.
(4) So that one instance's slow requests cannot take every upstream connection.
(5) Counted per portal process; more are answered 429.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

MiB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    max_body: int = MiB
    lab_max_body: int = 10 * 1024 * MiB
    body_timeout: float = 60.0
    lab_body_timeout: float = 3600.0
    idle_timeout: float = 120.0
    ws_max_message: int = 64 * 1024
    lab_ws_max_message: int = 64 * MiB
    clipboard_max: int = MiB
    instance_connections: int = 32
    instance_queue: int = 128
    upstream_connections: int = 1000
    user_connections: int = 100


_INTEGERS = {f.name for f in fields(Limits) if f.type in (int, "int")}


def load_limits(env: dict[str, str]) -> Limits:
    """The limits from ``env`` (``ATRIUM_<FIELD>``); raises SettingsError naming a bad one."""
    from orchestrator.settings import SettingsError, _number

    values: dict[str, float | int] = {}
    for f in fields(Limits):
        name = f"ATRIUM_{f.name.upper()}"
        value = _number(env, name, f.default, minimum=1)  # type: ignore[arg-type]
        if f.name in _INTEGERS:
            if value != int(value):
                raise SettingsError(f"{name}={env[name]!r}: expected a whole number")
            value = int(value)
        values[f.name] = value
    limits = Limits(**values)  # type: ignore[arg-type]
    if limits.lab_max_body < limits.max_body:
        raise SettingsError("ATRIUM_LAB_MAX_BODY must be at least ATRIUM_MAX_BODY")
    return limits
