"""How paged lists appear in the OpenAPI document (the paging itself: orchestrator.paging)."""

from __future__ import annotations

from typing import Any

from orchestrator.paging import DEFAULT_LIMIT, MAX_LIMIT

PAGE_PARAMETERS: list[dict[str, Any]] = [
    {"name": "limit", "in": "query", "required": False,
     "description": f"items per page (1-{MAX_LIMIT}, default {DEFAULT_LIMIT})",
     "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT,
                "default": DEFAULT_LIMIT}},
    {"name": "offset", "in": "query", "required": False,
     "description": "items to skip (default 0)",
     "schema": {"type": "integer", "minimum": 0, "default": 0}},
]

PAGE_HEADERS: dict[str, Any] = {
    "X-Total-Count": {"description": "how many items match in all",
                      "schema": {"type": "integer"}},
    "Link": {"description": 'the next and previous pages (rel="next", rel="prev"), '
                            "absent when this page holds everything",
             "schema": {"type": "string"}},
}


def document_paging(paths: dict[str, Any]) -> dict[str, Any]:
    """Mark every GET answering a JSON array as paged: its ``limit``/``offset``
    parameters, its ``X-Total-Count``/``Link`` headers and its 400 for a bad value."""
    for item in paths.values():
        get = item.get("get")
        if get is None:
            continue
        ok = get.get("responses", {}).get("200", {})
        schema = ok.get("content", {}).get("application/json", {}).get("schema", {})
        if schema.get("type") != "array":
            continue
        get["parameters"] = [*get.get("parameters", []), *PAGE_PARAMETERS]
        ok["headers"] = {**ok.get("headers", {}), **PAGE_HEADERS}
        get.setdefault("responses", {}).setdefault("400", {
            "description": "a bad limit or offset", "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/Error"}}}})
    return paths
