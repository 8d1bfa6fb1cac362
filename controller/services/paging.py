"""Keyset pagination shared by every List call.

A page token encodes the (created_at, id) of the last item served, so pages
stay consistent while rows are added, and a list never costs an OFFSET scan.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from sqlalchemy import Connection, Integer, Select, and_, bindparam, func, or_, select
from sqlalchemy.orm import Session

from cbr import errors, limits


def page_size(requested: int) -> int:
    if requested < 0 or requested > limits.PAGE_SIZE_MAX:
        raise errors.InvalidParameter(
            f"page_size must be 0 to {limits.PAGE_SIZE_MAX} (got {requested}).",
            field="page_size")
    return requested or limits.PAGE_SIZE_DEFAULT


def _encode(created_at: dt.datetime, ident: str) -> str:
    raw = json.dumps([created_at.isoformat(), ident]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(token: str) -> tuple[dt.datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        when, ident = json.loads(raw)
        return dt.datetime.fromisoformat(when), str(ident)
    except (ValueError, TypeError) as exc:
        raise errors.InvalidParameter(
            "page_token is not valid; pass the next_page_token of the previous response "
            "unchanged.", field="page_token") from exc


T = TypeVar("T")


def page_of(items: Sequence[T], requested_size: int, token: str,
            key: Callable[[T], tuple[dt.datetime, str]]) -> tuple[list[T], str, int]:
    """(page, next_page_token, total) of a list already in key order, with
    the same tokens as the SQL lists: for the few lists filtered by state
    that lives in memory (an agent's online status)."""
    size = page_size(requested_size)
    start = 0
    if token:
        after = _decode(token)
        start = next((i for i, item in enumerate(items) if key(item) > after), len(items))
    page = list(items[start:start + size])
    more = start + size < len(items)
    return page, _encode(*key(page[-1])) if more and page else "", len(items)


def paginate(session: Session | Connection, stmt: Select[Any], model: Any, requested_size: int,
             token: str, *, rows: bool = False, at: str = "created_at",
             newest_first: bool = False) -> tuple[Sequence[Any], str, int]:
    """(items, next_page_token, total_count) of stmt ordered by created_at, id
    (or by the time column ``at``: events have only their occurred_at),
    oldest first, or newest first when asked (what a person looks at first).

    For statements built per request; hot lists keep a PagedQuery per filter
    shape instead. With rows=True the items are Core rows (for read paths
    that skip the ORM's per-object cost), else the statement's single entity.
    """
    return PagedQuery(stmt, model.__table__, at, newest_first=newest_first).run(
        session, {}, requested_size, token, entities=not rows)


class PagedQuery:
    """A list query built once, run with parameters: its count, first-page and
    next-page statements are derived once too.

    Building a statement and its cache key costs more than running it on
    SQLite; the hot List calls (vaults, protectables, tasks) keep one
    PagedQuery per filter shape (see ``functools.cache`` at their callers)
    and pass filter values as bind parameters.
    """

    def __init__(self, stmt: Select[Any], table: Any, at: str = "created_at", *,
                 newest_first: bool = False) -> None:
        """A page token carries only the last item's (time, id), so a client
        pages on in the order it asked for the first page."""
        self.at = at
        created, ident = table.c[at], table.c.id
        self.count = select(func.count()).select_from(stmt.subquery())
        after_at = bindparam("after_at", type_=created.type)
        after_id = bindparam("after_id", type_=ident.type)
        if newest_first:
            ordered = stmt.order_by(created.desc(), ident.desc())
            beyond = or_(created < after_at, and_(created == after_at, ident < after_id))
        else:
            ordered = stmt.order_by(created, ident)
            beyond = or_(created > after_at, and_(created == after_at, ident > after_id))
        self.first = ordered.limit(bindparam("page_limit", type_=Integer))
        self.after = ordered.where(beyond).limit(bindparam("page_limit", type_=Integer))

    def run(self, conn: Session | Connection, params: dict[str, Any], requested_size: int,
            token: str, *, entities: bool = False) -> tuple[Sequence[Any], str, int]:
        """(items, next_page_token, total_count); items are Core rows, or the
        statement's ORM entities with entities=True (needs a Session)."""
        size = page_size(requested_size)
        total = int(conn.execute(self.count, params).scalar() or 0)
        values = {**params, "page_limit": size + 1}
        stmt = self.first
        if token:
            when, ident = _decode(token)
            stmt = self.after
            values.update(after_at=when, after_id=ident)
        if entities:
            assert isinstance(conn, Session), "entities need an ORM session"
            items: Sequence[Any] = conn.scalars(stmt, values).all()
        else:
            items = conn.execute(stmt, values).all()
        next_token = ""
        if len(items) > size:
            items = items[:size]
            last = items[-1]
            next_token = _encode(getattr(last, self.at), str(last.id))
        return items, next_token, total
