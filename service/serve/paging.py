"""Cursor pagination as OpenAI's list endpoints do it: ``after=ID`` + ``limit``; ``has_more`` says whether
another page exists (the SDK's auto-pager asks for the next page with the last item's id)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from .errors import ApiError


def page(db: Session, model: Any, query: Select[Any], *, after: str | None, limit: int, order: str,
         render: Callable[[Any], dict[str, Any]], max_limit: int = 100) -> dict[str, Any]:
    """One page of ``query`` (rows of ``model``, which has ``id`` and an ordering ``seq``)."""
    if not 1 <= limit <= max_limit:
        raise ApiError(400, f"limit must be between 1 and {max_limit}, got {limit}", param="limit",
                       code="invalid_limit")
    if order not in ("asc", "desc"):
        raise ApiError(400, f"order must be 'asc' or 'desc', got '{order}'", param="order", code="invalid_order")
    if after:
        # the cursor is looked up within the same (owner-filtered) query: another key's id is not a cursor
        cursor = db.scalar(select(model.seq).where(model.id == after))
        if cursor is None or db.scalar(query.where(model.id == after).with_only_columns(model.seq)) is None:
            raise ApiError(400, f"after: no such object {after} in this list", param="after", code="invalid_cursor")
        query = query.where(model.seq < cursor if order == "desc" else model.seq > cursor)
    query = query.order_by(model.seq.desc() if order == "desc" else model.seq.asc()).limit(limit + 1)
    rows = list(db.scalars(query))
    return {"object": "list", "data": [render(r) for r in rows[:limit]], "has_more": len(rows) > limit,
            "first_id": rows[0].id if rows else None, "last_id": rows[min(limit, len(rows)) - 1].id if rows else None}
