"""The OpenAPI description of the admin endpoints and the caller's quota (web/admin_api.py),
merged into the document of web/openapi.py."""

from __future__ import annotations

from typing import Any

_ERROR = {"description": "error", "content": {"application/json": {
    "schema": {"$ref": "#/components/schemas/Error"}}}}
_ERRORS = {"400": _ERROR, "401": _ERROR, "403": _ERROR, "404": _ERROR, "409": _ERROR}
_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}
_ADMIN = " (ADMIN role; others get 403)"


def _ok(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _body(name: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": _ref(name)}}}


def _collection(what: str, schema: str) -> dict[str, Any]:
    return {
        "get": {"summary": f"All {what}s{_ADMIN}",
                "responses": {"200": _ok({"type": "array", "items": _ref(schema)}), **_ERRORS}},
        "post": {"summary": f"Create a {what}{_ADMIN}", "requestBody": _body(schema),
                 "responses": {"201": _ok(_ref(schema), "created"), **_ERRORS}},
    }


def _item(what: str, schema: str, delete_rule: str) -> dict[str, Any]:
    return {
        "parameters": [_ID],
        "get": {"summary": f"One {what}{_ADMIN}",
                "responses": {"200": _ok(_ref(schema)), **_ERRORS}},
        "put": {"summary": f"Replace the {what} (keys left out take their defaults)",
                "requestBody": _body(schema),
                "responses": {"200": _ok(_ref(schema)), **_ERRORS}},
        "patch": {"summary": f"Change the keys given of the {what}",
                  "requestBody": _body(schema),
                  "responses": {"200": _ok(_ref(schema)), **_ERRORS}},
        "delete": {"summary": f"Delete the {what}; {delete_rule}",
                   "responses": {"204": {"description": "deleted"}, **_ERRORS}},
    }


_REFS = {"type": "object", "description": "backend -> reference (local profile, pod image, "
                                          "OpenStack image/flavour)",
         "additionalProperties": {"type": "string"},
         "propertyNames": {"enum": ["local", "kubernetes", "openstack"]}}
_LIMIT = {"type": ["number", "null"], "minimum": 0,
          "description": "null: not set here (a less specific policy decides)"}
_USED = {"type": "object", "properties": {
    "used": {"type": "number"}, "limit": {"type": ["number", "null"]},
    "remaining": {"type": ["number", "null"]}, "source": {"type": ["string", "null"]}}}

ADMIN_PATHS: dict[str, Any] = {
    "/quota": {"get": {
        "summary": "The caller's limits, current use and remaining quota, and the use of "
                   "their instances per experiment",
        "responses": {"200": _ok(_ref("QuotaStatus")), **_ERRORS}}},
    "/admin/images": _collection("image", "AdminImage"),
    "/admin/images/{id}": _item("image", "AdminImage", "409 while plans use it"),
    "/admin/flavours": _collection("flavour", "AdminFlavour"),
    "/admin/flavours/{id}": _item("flavour", "AdminFlavour", "409 while plans use it"),
    "/admin/plans": _collection("plan", "AdminPlan"),
    "/admin/plans/{id}": _item("plan", "AdminPlan",
                               "409 once instances were launched from it (disable it)"),
    "/admin/quotas": _collection("quota policy", "QuotaPolicy"),
    "/admin/quotas/{id}": _item("quota policy", "QuotaPolicy", "always allowed"),
    "/admin/users": {"get": {
        "summary": f"Users with roles, groups, limits and current use{_ADMIN}",
        "parameters": [{"name": "q", "in": "query", "schema": {"type": "string"},
                        "description": "part of the username, name or email"}],
        "responses": {"200": _ok({"type": "array", "items": _ref("AdminUser")}), **_ERRORS}}},
    "/admin/users/{id}": {
        "parameters": [_ID],
        "get": {"summary": f"One user{_ADMIN}",
                "responses": {"200": _ok(_ref("AdminUser")), **_ERRORS}},
        "patch": {"summary": "Set the user's roles and/or groups (you cannot drop your own "
                             "ADMIN role)",
                  "requestBody": {"required": True, "content": {"application/json": {
                      "schema": {"type": "object", "properties": {
                          "roles": {"type": "array", "items": {"type": "string"}},
                          "groups": {"type": "array", "items": {"type": "string"}}}}}}},
                  "responses": {"200": _ok(_ref("AdminUser")), **_ERRORS}}},
    "/admin/instances": {"get": {
        "summary": f"Every user's instances, filtered{_ADMIN}; act on them with "
                   "/instances/{uid}/{action} and DELETE /instances/{uid}",
        "parameters": [
            {"name": n, "in": "query", "schema": {"type": "string"}, "description": d}
            for n, d in (("status", "one status (DELETED included on request)"),
                         ("owner", "username"), ("backend", "local, kubernetes, openstack"),
                         ("plan_id", "a plan's id"), ("q", "part of the name or uid"),
                         ("include_deleted", "1 to list deleted instances too"))],
        "responses": {"200": _ok({"type": "array", "items": _ref("Instance")}), **_ERRORS}}},
    "/admin/usage": {"get": {
        "summary": f"Instance-, vCPU-, GPU- and memory-hours per user, experiment and "
                   f"instrument, from the audit trail{_ADMIN}",
        "parameters": [
            {"name": "since", "in": "query", "schema": {"type": "string", "format": "date"}},
            {"name": "until", "in": "query", "schema": {"type": "string", "format": "date"}},
            {"name": "format", "in": "query", "schema": {"enum": ["json", "csv"]}}],
        "responses": {"200": {"description": "JSON report, or CSV with format=csv",
                              "content": {"application/json": {"schema": {"type": "object"}},
                                          "text/csv": {"schema": {"type": "string"}}}},
                      **_ERRORS}}},
    "/admin/catalog": {
        "get": {"summary": f"The catalogue in the file format (YAML with format=yaml){_ADMIN}",
                "parameters": [{"name": "format", "in": "query",
                                "schema": {"enum": ["json", "yaml"]}}],
                "responses": {"200": _ok({"type": "object"}), **_ERRORS}},
        "post": {"summary": "Apply a catalogue file (YAML body): every problem is reported "
                            "with its line and nothing changes; the answer lists the changes",
                 "parameters": [
                     {"name": "dry_run", "in": "query", "schema": {"enum": ["0", "1"]}},
                     {"name": "prune", "in": "query", "schema": {"enum": ["0", "1"]}}],
                 "requestBody": {"required": True, "content": {
                     "application/yaml": {"schema": {"type": "string"}}}},
                 "responses": {"200": _ok({"type": "object", "properties": {
                     "applied": {"type": "boolean"},
                     "changes": {"type": "array", "items": {"type": "string"}}}}),
                     **_ERRORS}}},
}

ADMIN_SCHEMAS: dict[str, Any] = {
    "AdminImage": {"type": "object", "required": ["name"], "properties": {
        "id": {"type": "integer", "readOnly": True}, "name": {"type": "string"},
        "version": {"type": "string"}, "description": {"type": "string"},
        "icon": {"type": "string"},
        "protocols": {"type": "array", "items": {"enum": ["jupyter", "desktop"]}},
        "backend_refs": _REFS, "boot_template": {"type": "string"},
        "visible": {"type": "boolean", "description": "hidden images: admins only"},
        "deprecated": {"type": "boolean"}}},
    "AdminFlavour": {"type": "object", "required": ["name"], "properties": {
        "id": {"type": "integer", "readOnly": True}, "name": {"type": "string"},
        "cpus": {"type": "number", "exclusiveMinimum": 0},
        "memory_mb": {"type": "integer", "exclusiveMinimum": 0},
        "gpus": {"type": "integer", "minimum": 0}, "backend_refs": _REFS,
        "limits": {"type": "object", "description": "empty: everyone; else only these roles, "
                                                    "or launches with these instruments' "
                                                    "experiments",
                   "properties": {"roles": {"type": "array", "items": {"type": "string"}},
                                  "instruments": {"type": "array",
                                                  "items": {"type": "string"}}}}}},
    "AdminPlan": {"type": "object", "required": ["image_id", "flavour_id"], "properties": {
        "id": {"type": "integer", "readOnly": True}, "image_id": {"type": "integer"},
        "flavour_id": {"type": "integer"},
        "backend": {"enum": ["local", "kubernetes", "openstack"]},
        "preset": {"type": "boolean", "description": "at most one plan is the preset"},
        "enabled": {"type": "boolean"}}},
    "QuotaPolicy": {"type": "object", "description": "exactly one of user, group, role or "
                                                     "default: true", "properties": {
        "id": {"type": "integer", "readOnly": True}, "user": {"type": "string"},
        "group": {"type": "string"}, "role": {"type": "string"},
        "default": {"const": True}, "max_instances": _LIMIT, "max_cpus": _LIMIT,
        "max_memory_mb": _LIMIT, "max_gpus": _LIMIT, "max_lifetime_hours": _LIMIT}},
    "QuotaStatus": {"type": "object", "properties": {
        "instances": _USED, "cpus": _USED, "memory_mb": _USED, "gpus": _USED,
        "lifetime_hours": {"type": "object"},
        "experiments": {"type": "array", "items": {"type": "object"}}}},
    "AdminUser": {"type": "object", "properties": {
        "id": {"type": "integer"}, "username": {"type": "string"},
        "roles": {"type": "array", "items": {"type": "string"}},
        "groups": {"type": "array", "items": {"type": "string"}},
        "quota": _ref("QuotaStatus")}},
}
