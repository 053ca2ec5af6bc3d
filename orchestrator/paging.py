"""Paging of every list the API and the pages return (the slice asked for, and counting).

A list request takes ``limit`` (1..:data:`MAX_LIMIT`, default :data:`DEFAULT_LIMIT`) and
``offset`` (>= 0) query arguments; anything else is a 400 naming the argument. The body
stays a JSON array (so clients written for unpaged lists keep working on the first page);
the page is described in headers, as GitHub's API does:

* ``X-Total-Count`` - how many items match in all;
* ``Link: <...?offset=N&limit=L>; rel="next"`` (and ``rel="prev"``) while there are more.

Every paged query orders by a unique key last, so pages neither repeat nor skip rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlencode

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.selectable import GenerativeSelect

from orchestrator.errors import RequestError

DEFAULT_LIMIT = 100
MAX_LIMIT = 500

T = TypeVar("T")
Q = TypeVar("Q", bound=GenerativeSelect)


def _integer(name: str, raw: str, minimum: int, maximum: int | None = None) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise RequestError(f"{name} must be an integer, not {raw[:40]!r}") from None
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise RequestError(f"{name} must be {bound} (got {value})")
    return value


@dataclass(frozen=True)
class Page:
    """Which slice of a list was asked for."""

    limit: int = DEFAULT_LIMIT
    offset: int = 0

    @classmethod
    def of(cls, arguments: dict[str, str], default_limit: int = DEFAULT_LIMIT) -> Page:
        """From query arguments (``limit``, ``offset``); a bad value is a 400."""
        limit = arguments.get("limit", "")
        offset = arguments.get("offset", "")
        return cls(limit=_integer("limit", limit, 1, MAX_LIMIT) if limit else default_limit,
                   offset=_integer("offset", offset, 0) if offset else 0)

    def slice(self, items: Sequence[T]) -> list[T]:
        """This page of an in-memory list (short lists: a user's plans, members...)."""
        return list(items[self.offset:self.offset + self.limit])

    def apply(self, stmt: Q) -> Q:
        return stmt.limit(self.limit).offset(self.offset)

    def links(self, path: str, arguments: dict[str, str], total: int) -> str:
        """The ``Link`` header value for a page of ``total`` items ("" when it is all)."""
        def url(offset: int) -> str:
            query = {**arguments, "limit": str(self.limit), "offset": str(offset)}
            return f"<{path}?{urlencode(query)}>"

        parts = []
        if self.offset + self.limit < total:
            parts.append(f'{url(self.offset + self.limit)}; rel="next"')
        if self.offset > 0:
            parts.append(f'{url(max(0, self.offset - self.limit))}; rel="prev"')
        return ", ".join(parts)

    def pager(self, path: str, arguments: dict[str, str], total: int, shown: int
              ) -> dict[str, Any]:
        """What a page's pager shows: "1-100 of 5,008" and links to its neighbours."""
        def url(offset: int) -> str:
            query = {**arguments, "offset": str(offset), "limit": str(self.limit)}
            return f"{path}?{urlencode(query)}"

        return {"total": total, "first": self.offset + 1 if shown else 0,
                "last": self.offset + shown,
                "next": url(self.offset + self.limit) if self.offset + self.limit < total
                else None,
                "prev": url(max(0, self.offset - self.limit)) if self.offset > 0 else None}


async def count(session: AsyncSession, stmt: GenerativeSelect) -> int:
    """How many rows ``stmt`` matches (ordering dropped)."""
    total = await session.scalar(select(func.count()).select_from(
        stmt.order_by(None).subquery()))
    return int(total or 0)
