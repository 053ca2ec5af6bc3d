"""The lifetime endpoints' part of the OpenAPI document (see web/lifetime_api.py)."""

from __future__ import annotations

from typing import Any

_ERRORS = {str(code): {"description": "error", "content": {"application/json": {
    "schema": {"$ref": "#/components/schemas/Error"}}}} for code in (400, 401, 403, 404, 409)}
_UID = {"name": "uid", "in": "path", "required": True, "schema": {"type": "string"}}
_TIME = {"type": ["string", "null"], "format": "date-time"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _ok(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


LIFETIME_PATHS: dict[str, Any] = {
    "/instances/{uid}/lifetime": {
        "parameters": [_UID],
        "get": {"summary": "The instance's deadlines, current warning and extension requests",
                "responses": {"200": _ok(_ref("Lifetime")), **_ERRORS}},
        "patch": {"summary": "Bring the termination date forward (owner or admin)",
                  "requestBody": _body({"type": "object", "required": ["termination_date"],
                                        "properties": {"termination_date": {
                                            "type": "string", "format": "date-time",
                                            "description": "UTC when no zone is given"}}}),
                  "responses": {"200": _ok(_ref("Lifetime")), **_ERRORS}}},
    "/instances/{uid}/extensions": {
        "parameters": [_UID],
        "get": {"summary": "The instance's extension requests, newest first",
                "responses": {"200": _ok({"type": "array", "items": _ref("ExtensionRequest")}),
                              **_ERRORS}},
        "post": {"summary": "Ask for more time (owner); accepted at once if the owner's role "
                            "allows, else admins decide",
                 "requestBody": _body({"type": "object", "required": ["days", "reason"],
                                       "properties": {"days": {"type": "number"},
                                                      "reason": {"type": "string"}}}),
                 "responses": {"201": _ok(_ref("ExtensionRequest"), "recorded"), **_ERRORS}}},
    "/lifetime/warnings": {
        "get": {"summary": "The caller's instances whose deletion warning has begun",
                "responses": {"200": _ok({"type": "array", "items": {"type": "object"}}),
                              **_ERRORS}}},
    "/lifetime/extensions": {
        "get": {"summary": "Extension requests (admins); ?status=PENDING...",
                "responses": {"200": _ok({"type": "array", "items": _ref("ExtensionRequest")}),
                              **_ERRORS}}},
    "/lifetime/extensions/{id}": {
        "parameters": [{"name": "id", "in": "path", "required": True,
                        "schema": {"type": "integer"}}],
        "post": {"summary": "Accept or refuse a pending request (admins); the owner is emailed",
                 "requestBody": _body({"type": "object", "required": ["decision"],
                                       "properties": {
                                           "decision": {"enum": ["accept", "refuse"]},
                                           "days": {"type": "number",
                                                    "description": "default: as asked"},
                                           "comment": {"type": "string"}}}),
                 "responses": {"200": _ok(_ref("ExtensionRequest")), **_ERRORS}}},
    "/lifetime/upcoming": {
        "get": {"summary": "Live instances with a deadline within ?days=7 (admins)",
                "responses": {"200": _ok({"type": "array", "items": {"type": "object"}}),
                              **_ERRORS}}},
}

_DEADLINE = {"type": ["object", "null"], "properties": {
    "kind": {"enum": ["lifetime", "inactivity"]}, "at": _TIME, "warn_from": _TIME}}

LIFETIME_SCHEMAS: dict[str, Any] = {
    "Lifetime": {"type": "object", "properties": {
        "uid": {"type": "string"}, "termination_date": _TIME, "last_seen_at": _TIME,
        "deadlines": {"type": "array", "items": _DEADLINE}, "warning": _DEADLINE,
        "extension_requests": {"type": "array", "items": _ref("ExtensionRequest")}}},
    "ExtensionRequest": {"type": "object", "properties": {
        "id": {"type": "integer"}, "instance": {"type": "object"},
        "requester": {"type": ["string", "null"]}, "days": {"type": "number"},
        "reason": {"type": "string"},
        "status": {"enum": ["PENDING", "ACCEPTED", "REFUSED", "CANCELLED"]},
        "auto": {"type": "boolean"}, "created_at": _TIME, "decided_at": _TIME,
        "decided_by": {"type": ["string", "null"]}, "comment": {"type": "string"},
        "granted_days": {"type": ["number", "null"]}, "old_termination": _TIME,
        "new_termination": _TIME}},
}
