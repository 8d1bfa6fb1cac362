"""The audit trail's rules: which calls it keeps, what it keeps of them, who
may read them and for how long they are kept.

A call is kept when it may change something (``actions.changes_state``),
whatever its outcome, and when it was refused for who made it
(unauthenticated, not authorized), whatever its method: both are what an
operator asks of an audit trail ("who deleted this vault?", "who is trying
keys?"). Reads that succeed are not kept; they would drown the rest.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import Connection, Table, Text, delete, insert, or_, select
from sqlalchemy.orm import Session

from controller.persistence.models import AuditRecord, new_id
from controller.persistence.vocabulary import AuditResult
from controller.services import actions, paging

# A refusal for who the caller is: kept even for reads.
IDENTITY_REFUSALS = frozenset({"UNAUTHENTICATED", "PERMISSION_DENIED"})
# The request was refused (by identity or by a rule); anything else not OK failed.
REFUSALS = IDENTITY_REFUSALS | frozenset({
    "INVALID_ARGUMENT", "NOT_FOUND", "ALREADY_EXISTS", "FAILED_PRECONDITION",
    "OUT_OF_RANGE", "RESOURCE_EXHAUSTED"})
MAX_RESOURCE_IDS = 16
MAX_ID_LENGTH = 64
MAX_MESSAGE_LENGTH = 1000

_records = cast(Table, AuditRecord.__table__)


@dataclass
class Entry:
    """One call as the API saw it; filled in as the call goes (the caller
    once authenticated, the outcome at the end)."""

    method: str
    source: str
    created_at: dt.datetime
    project_id: str = ""
    user_id: str = ""
    access_key_id: str = ""
    resource_ids: list[str] = field(default_factory=list)
    status_code: str = "OK"
    error_code: str = ""
    error_message: str = ""
    duration_ms: int = 0

    def attribute(self, caller: actions.Caller) -> None:
        self.project_id = caller.account_id
        self.user_id = caller.user_id
        self.access_key_id = caller.access_key_id

    @property
    def kept(self) -> bool:
        return self.method.startswith("/cbr.v1.") and (
            actions.changes_state(self.method) or self.status_code in IDENTITY_REFUSALS)

    @property
    def result(self) -> AuditResult:
        if self.status_code == "OK":
            return AuditResult.SUCCESS
        return AuditResult.REFUSED if self.status_code in REFUSALS else AuditResult.FAILED

    def row(self) -> dict[str, Any]:
        return {"id": new_id(), "project_id": self.project_id, "user_id": self.user_id,
                "access_key_id": self.access_key_id[:32], "method": self.method[:128],
                "action": actions.METHOD_ACTIONS.get(self.method, "")[:64],
                "resource_ids": self.resource_ids[:MAX_RESOURCE_IDS],
                "source": self.source[:128], "result": self.result,
                "status_code": self.status_code, "error_code": self.error_code[:32],
                "error_message": self.error_message[:MAX_MESSAGE_LENGTH],
                "duration_ms": self.duration_ms, "created_at": self.created_at}


def resource_ids(*messages: Any) -> list[str]:
    """The ids a request names and its response returns: fields named id,
    ``*_id`` or ``*_ids`` at the top of each message, and the id of each
    message directly inside it (``CreateVaultResponse.vault.id``)."""
    found: list[str] = []

    def take(value: Any) -> None:
        if isinstance(value, str) and value and len(value) <= MAX_ID_LENGTH \
                and value not in found:
            found.append(value)

    for message in messages:
        if message is None or not hasattr(message, "ListFields"):
            continue
        for fd, value in message.ListFields():
            name = fd.name
            if name == "id" or name.endswith("_id"):
                take(value)
            elif name.endswith("_ids"):
                for item in value:
                    take(item)
            elif fd.message_type is not None and not fd.is_repeated \
                    and "id" in fd.message_type.fields_by_name:
                take(getattr(value, "id", ""))
    return found[:MAX_RESOURCE_IDS]


def write(session: Session, entries: Iterable[Entry]) -> int:
    """Inserts the kept entries in one statement; returns how many."""
    rows = [e.row() for e in entries if e.kept]
    if rows:
        session.execute(insert(_records), rows)
    return len(rows)


def purge(session: Session, before: dt.datetime) -> int:
    """Forgets records older than the retention period."""
    result = session.execute(delete(_records).where(_records.c.created_at < before))
    return int(getattr(result, "rowcount", 0) or 0)


@dataclass(frozen=True)
class AuditFilter:
    action: str = ""
    user_id: str = ""
    access_key_id: str = ""
    resource_id: str = ""
    result: str = ""
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    newest_first: bool = False


def list_records(conn: Session | Connection, caller: actions.Caller, f: AuditFilter,
                 page_size: int, page_token: str) -> tuple[Sequence[Any], str, int]:
    """A page of the records the caller may read: its own account's, and for
    the administrator account also those of calls nobody could be identified
    for (a bad signature, an unknown key)."""
    c = _records.c
    stmt = select(*c)
    if caller.administrator:
        stmt = stmt.where(or_(c.project_id == caller.account_id, c.project_id == ""))
    else:
        stmt = stmt.where(c.project_id == caller.account_id)
    for column, value in ((c.action, f.action), (c.user_id, f.user_id),
                          (c.access_key_id, f.access_key_id), (c.result, f.result)):
        if value:
            stmt = stmt.where(column == value)
    if f.since is not None:
        stmt = stmt.where(c.created_at >= f.since)
    if f.until is not None:
        stmt = stmt.where(c.created_at < f.until)
    if f.resource_id:
        # JSON containment differs by database; a LIKE on the stored list is
        # exact enough for ids (quoted, so "v-1" does not match "v-12").
        stmt = stmt.where(c.resource_ids.cast(Text).like(f'%"{_like(f.resource_id)}"%',
                                                          escape="\\"))
    return paging.paginate(conn, stmt, AuditRecord, page_size, page_token, rows=True,
                           newest_first=f.newest_first)


def _like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
