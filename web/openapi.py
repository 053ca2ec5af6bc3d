"""The OpenAPI 3.1 description of /api/v1, kept beside the handlers it describes."""

from __future__ import annotations

from typing import Any

from orchestrator.lifecycle import NAME_MAX
from web.openapi_admin import ADMIN_PATHS, ADMIN_SCHEMAS
from web.openapi_lifetime import LIFETIME_PATHS, LIFETIME_SCHEMAS
from web.openapi_sharing import SHARING_PATHS, SHARING_SCHEMAS
from web.paging import document_paging

_ERROR = {"description": "error", "content": {"application/json": {
    "schema": {"$ref": "#/components/schemas/Error"}}}}


def _ok(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_UID = {"name": "uid", "in": "path", "required": True, "schema": {"type": "string"}}
_ERRORS = {"400": _ERROR, "401": _ERROR, "403": _ERROR, "404": _ERROR, "409": _ERROR}


def openapi_document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "Atrium API", "version": "1",
                 "description": "Launch and manage analysis sessions. Authenticate with "
                                "`Authorization: Bearer <token>`: create tokens on the "
                                "/tokens page or with `atrium token create USER`. Calls "
                                "authenticated by the browser's session cookie must carry "
                                "the `X-XSRFToken` header (the `_xsrf` cookie's value)."},
        "servers": [{"url": "/api/v1"}],
        "security": [{"bearer": []}],
        "paths": document_paging({
            "/me": {"get": {"summary": "The calling user",
                            "responses": {"200": _ok(_ref("User")), **_ERRORS}}},
            "/experiments": {"get": {
                "summary": "Experiments (proposals) the caller is a member of",
                "responses": {"200": _ok({"type": "array", "items": _ref("Experiment")})}}},
            "/plans": {"get": {
                "summary": "Plans (image x flavour) the caller may launch",
                "responses": {"200": _ok({"type": "array", "items": _ref("Plan")})}}},
            "/instances": {
                "get": {"summary": "Instances the caller owns or is a member of",
                        "responses": {"200": _ok({"type": "array",
                                                  "items": _ref("Instance")})}},
                "post": {"summary": "Launch an instance",
                         "requestBody": {"required": True, "content": {"application/json": {
                             "schema": _ref("LaunchRequest")}}},
                         "responses": {"201": _ok(_ref("Instance"), "accepted; watch status"),
                                       **_ERRORS}}},
            "/instances/{uid}": {
                "parameters": [_UID],
                "get": {"summary": "One instance",
                        "responses": {"200": _ok(_ref("Instance")), **_ERRORS}},
                "delete": {"summary": "Delete the instance (owner or admin)",
                           "responses": {"202": _ok(_ref("Instance")), **_ERRORS}}},
            "/instances/{uid}/{action}": {
                "parameters": [_UID, {"name": "action", "in": "path", "required": True,
                                      "schema": {"enum": ["start", "stop", "reboot"]}}],
                "post": {"summary": "Start, stop or reboot the instance",
                         "responses": {"202": _ok(_ref("Instance")), **_ERRORS}}},
            "/tokens": {
                "get": {"summary": "The caller's API tokens (never the tokens themselves)",
                        "responses": {"200": _ok({"type": "array", "items": _ref("Token")}),
                                      **_ERRORS}},
                "post": {"summary": "Create a token; the answer is the only time it is shown. "
                                    "Needs a browser login: a token cannot create tokens.",
                         "requestBody": {"required": True, "content": {"application/json": {
                             "schema": _ref("TokenRequest")}}},
                         "responses": {"201": _ok(_ref("NewToken"), "created"), **_ERRORS}}},
            "/tokens/{id}": {
                "parameters": [{"name": "id", "in": "path", "required": True,
                                "schema": {"type": "integer"}}],
                "delete": {"summary": "Revoke a token (refused from the next request on)",
                           "responses": {"200": _ok(_ref("Token")), **_ERRORS}}},
            "/instances/{uid}/events": {
                "parameters": [_UID],
                "get": {"summary": "The instance's audit trail",
                        "responses": {"200": _ok({"type": "array", "items": _ref("Event")}),
                                      **_ERRORS}}},
            **ADMIN_PATHS,
            **SHARING_PATHS,
            **LIFETIME_PATHS,
        }),
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {
                    "error": {"type": "object", "properties": {
                        "status": {"type": "integer"}, "message": {"type": "string"}}}}},
                "User": {"type": "object", "properties": {
                    "id": {"type": "integer"}, "username": {"type": "string"},
                    "email": {"type": "string"}, "name": {"type": "string"},
                    "roles": {"type": "array", "items": {"type": "string"}}}},
                "Experiment": {"type": "object", "properties": {
                    "id": {"type": "integer"}, "proposal": {"type": "string"},
                    "title": {"type": "string"}, "instrument": {"type": ["string", "null"]},
                    "start_date": {"type": ["string", "null"], "format": "date"},
                    "end_date": {"type": ["string", "null"], "format": "date"}}},
                "Plan": {"type": "object", "properties": {
                    "id": {"type": "integer"}, "backend": {"type": "string"},
                    "preset": {"type": "boolean"},
                    "image": {"type": "object"}, "flavour": {"type": "object"}}},
                "LaunchRequest": {"type": "object", "required": ["name", "plan_id"],
                                  "properties": {
                    "name": {"type": "string", "maxLength": NAME_MAX},
                    "plan_id": {"type": "integer"},
                    "experiment_ids": {"type": "array", "items": {"type": "integer"}}}},
                "Instance": {"type": "object", "properties": {
                    "uid": {"type": "string"}, "name": {"type": "string"},
                    "backend": {"type": "string"},
                    "status": {"enum": ["BUILDING", "STARTING", "ACTIVE", "PARTIALLY_ACTIVE",
                                        "STOPPING", "STOPPED", "REBOOTING", "DELETING",
                                        "DELETED", "ERROR", "UNKNOWN", "UNAVAILABLE"]},
                    "target": {"enum": ["RUNNING", "STOPPED", "DELETED"]},
                    "reason": {"type": "string"}, "progress": {"type": "string"},
                    "role": {"type": ["string", "null"]},
                    "owner": {"type": "object"}, "plan": _ref("Plan"),
                    "experiments": {"type": "array", "items": _ref("Experiment")},
                    "protocols": {"type": "array", "items": {"type": "string"}},
                    "ready_protocols": {"type": "array", "items": {"type": "string"}},
                    "urls": {"type": "object"}, "members": {"type": "array"}}},
                "Token": {"type": "object", "properties": {
                    "id": {"type": "integer"}, "name": {"type": "string"},
                    "prefix": {"type": "string", "description": "the token's first characters"},
                    "state": {"enum": ["active", "expired", "revoked"]},
                    "created_at": {"type": "string", "format": "date-time"},
                    "expires_at": {"type": ["string", "null"], "format": "date-time"},
                    "revoked_at": {"type": ["string", "null"], "format": "date-time"}}},
                "TokenRequest": {"type": "object", "required": ["name"], "properties": {
                    "name": {"type": "string", "maxLength": 100},
                    "expires_in_days": {"type": ["integer", "null"], "minimum": 1,
                                        "description": "omitted or null: "
                                        "ATRIUM_TOKEN_DEFAULT_DAYS; at most "
                                        "ATRIUM_TOKEN_MAX_DAYS (every token expires)"}}},
                "NewToken": {"allOf": [_ref("Token"), {"type": "object", "properties": {
                    "token": {"type": "string", "description": "shown this once only"}}}]},
                "Event": {"type": "object", "properties": {
                    "at": {"type": "string"}, "kind": {"type": "string"},
                    "detail": {"type": "string"}, "user": {"type": ["string", "null"]}}},
                **ADMIN_SCHEMAS,
                **SHARING_SCHEMAS,
                **LIFETIME_SCHEMAS,
            },
        },
    }
