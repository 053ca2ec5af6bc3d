"""The OpenAPI description of sharing (web/sharing_api.py) and the desktop keyboard
endpoint, merged into the document of web/openapi.py."""

from __future__ import annotations

from typing import Any

_ERROR = {"description": "error", "content": {"application/json": {
    "schema": {"$ref": "#/components/schemas/Error"}}}}
_ERRORS = {"400": _ERROR, "401": _ERROR, "403": _ERROR, "404": _ERROR, "409": _ERROR,
           "410": _ERROR}
_UID = {"name": "uid", "in": "path", "required": True, "schema": {"type": "string"}}
_ROLE = {"enum": ["USER", "GUEST"], "description": "USER: full control; GUEST: watch only"}


def _ok(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _body(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "properties": properties, "required": required}}}}


def _op(summary: str, ok: str, schema: dict[str, Any], body: dict[str, Any] | None = None
        ) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {ok: _ok(schema), **_ERRORS}}
    if body is not None:
        op["requestBody"] = body
    return op


_MEMBERS = {"type": "array", "items": _ref("Member")}
_REQUESTS = {"type": "array", "items": _ref("AccessRequest")}

SHARING_PATHS: dict[str, Any] = {
    "/instances/{uid}/members": {
        "parameters": [_UID],
        "get": _op("The instance's members and their roles", "200", _MEMBERS),
        "post": _op("Add a known user (username or email) as a member (owner, admin)", "201",
                    _ref("Member"), _body({"user": {"type": "string"}, "role": _ROLE},
                                          ["user", "role"])),
    },
    "/instances/{uid}/members/{username}": {
        "parameters": [_UID, {"name": "username", "in": "path", "required": True,
                              "schema": {"type": "string"}}],
        "patch": _op("Change a member's role (owner, admin)", "200", _MEMBERS,
                     _body({"role": _ROLE}, ["role"])),
        "delete": {"summary": "Remove a member (owner, admin; members may remove "
                              "themselves). Their open connections are closed.",
                   "responses": {"204": {"description": "removed"}, **_ERRORS}},
    },
    "/instances/{uid}/sharing": {
        "parameters": [_UID],
        "patch": _op("Allow members to connect while the owner is away (owner, admin)",
                     "200", _ref("Instance"),
                     _body({"unrestricted_member_access": {"type": "boolean"}},
                           ["unrestricted_member_access"])),
    },
    "/instances/{uid}/invitations": {
        "parameters": [_UID],
        "post": _op("Create a single-use invitation link (owner, admin)", "201",
                    {"type": "object", "properties": {
                        "url": {"type": "string"}, "token": {"type": "string"},
                        "role": _ROLE, "expires_at": {"type": "string"}}},
                    _body({"role": _ROLE, "expires_in_hours": {"type": "number"}}, ["role"])),
    },
    "/invitations/{token}": {
        "parameters": [{"name": "token", "in": "path", "required": True,
                        "schema": {"type": "string"}}],
        "post": _op("Join through an invitation link (410 when used or expired)", "200",
                    _ref("Instance")),
    },
    "/instances/{uid}/access-requests": {
        "parameters": [_UID],
        "get": _op("Pending access requests (owner, admin)", "200", _REQUESTS),
        "post": _op("Ask the owner to join (any logged-in user with the address)", "201",
                    _ref("AccessRequest"), _body({"message": {"type": "string"}}, [])),
    },
    "/instances/{uid}/access-requests/{id}": {
        "parameters": [_UID, {"name": "id", "in": "path", "required": True,
                              "schema": {"type": "integer"}}],
        "post": _op("Accept (as USER or GUEST) or refuse a request (owner, admin)", "200",
                    _ref("AccessRequest"),
                    _body({"decision": {"enum": ["accept", "refuse"]}, "role": _ROLE},
                          ["decision"])),
    },
    "/access-requests": {
        "get": _op("The caller's own access requests and their answers", "200", _REQUESTS),
    },
    "/instances/{uid}/support": {
        "parameters": [_UID],
        "post": _op("Join as SUPPORT (ADMIN, SUPPORT, instrument scientists of the "
                    "instance's instruments); recorded in the audit trail", "201",
                    _ref("Instance"), _body({"reason": {"type": "string"}}, [])),
    },
    "/support/instances": {
        "get": {"summary": "Instances the caller may support",
                "parameters": [{"name": "q", "in": "query", "schema": {"type": "string"}}],
                "responses": {"200": _ok({"type": "array", "items": _ref("Instance")}),
                              **_ERRORS}},
    },
    "/instances/{uid}/keyboard": {
        "parameters": [_UID],
        "post": _op("Switch the desktop's keyboard layout (members with full control)",
                    "200", {"type": "object", "properties": {"layout": {"type": "string"}}},
                    _body({"layout": {"type": "string", "example": "de"}}, ["layout"])),
    },
}

SHARING_SCHEMAS: dict[str, Any] = {
    "Member": {"type": "object", "properties": {
        "username": {"type": "string"}, "name": {"type": "string"},
        "role": {"enum": ["OWNER", "USER", "GUEST", "SUPPORT"]}}},
    "AccessRequest": {"type": "object", "properties": {
        "id": {"type": "integer"}, "instance": {"type": ["string", "null"]},
        "username": {"type": "string"}, "name": {"type": "string"},
        "message": {"type": "string"}, "status": {"enum": ["PENDING", "ACCEPTED", "REFUSED"]},
        "role": {"type": ["string", "null"]}, "created_at": {"type": "string"},
        "decided_at": {"type": ["string", "null"]}}},
}
