"""Which backups a policy's retention rules delete: a pure function.

The rules of the reference, per resource in a vault:

- long-term (``day_backups``, ``week_backups``, ``month_backups``,
  ``year_backups``): the latest backup of each of the last N days, weeks
  (Monday to Sunday), months or years that have a backup, in the policy's
  timezone. Those are kept, and do not count against ``max_backups``;
- ``max_backups`` (> 0): of the other backups, the newest N are kept;
- ``retention_duration_days`` (> 0): other backups older than that go.

Whatever the rules say, the newest available backup of a resource is never
deleted, only ``available`` backups are candidates (one being restored,
replicated or deleted is left alone), and manual backups are left alone
unless the policy says so (``include_manual``). Each deletion names the rule
that caused it, for the operation log.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from controller.persistence.vocabulary import BackupStatus
from controller.services.schedule import parse_timezone


@dataclass(frozen=True)
class Candidate:
    backup_id: str
    resource_id: str
    protected_at: dt.datetime
    auto: bool  # made by a policy run (autobk)
    status: str = BackupStatus.AVAILABLE


@dataclass(frozen=True)
class Expired:
    backup_id: str
    resource_id: str
    rule: str  # max_backups | retention_duration_days


def _age(b: Candidate) -> tuple[dt.datetime, str]:
    """One order for every rule: by time, ties broken by id."""
    return (b.protected_at, b.backup_id)


def _positive(od: dict[str, Any], key: str) -> int:
    value = int(od.get(key, 0) or 0)
    return value if value > 0 else 0


def _long_term(backups: Sequence[Candidate], od: dict[str, Any]) -> set[str]:
    """Ids kept by the day/week/month/year rules (newest first in ``backups``)."""
    tz = parse_timezone(str(od.get("timezone", "")))
    periods: list[tuple[str, Callable[[dt.datetime], Hashable]]] = [
        ("day_backups", lambda t: t.date()),
        ("week_backups", lambda t: t.isocalendar()[:2]),
        ("month_backups", lambda t: (t.year, t.month)),
        ("year_backups", lambda t: t.year),
    ]
    kept: set[str] = set()
    for key, period_of in periods:
        count = _positive(od, key)
        if not count:
            continue
        seen: list[Hashable] = []
        for b in backups:
            period = period_of(b.protected_at.astimezone(tz))
            if period in seen:
                continue  # an older backup of a period already represented
            seen.append(period)
            kept.add(b.backup_id)
            if len(seen) == count:
                break
    return kept


def select_expired(backups: Sequence[Candidate], od: dict[str, Any], now: dt.datetime, *,
                   include_manual: bool = False) -> list[Expired]:
    """The backups the rules delete, oldest first."""
    by_resource: dict[str, list[Candidate]] = defaultdict(list)
    for b in backups:
        if b.status == BackupStatus.AVAILABLE and (b.auto or include_manual):
            by_resource[b.resource_id].append(b)
    newest_available: dict[str, str] = {}
    for b in sorted(backups, key=_age):
        if b.status == BackupStatus.AVAILABLE:
            newest_available[b.resource_id] = b.backup_id
    max_backups = _positive(od, "max_backups")
    max_days = _positive(od, "retention_duration_days")
    out: list[Expired] = []
    for resource_id, items in by_resource.items():
        items.sort(key=_age, reverse=True)
        long_term = _long_term(items, od)
        counted = [b for b in items if b.backup_id not in long_term]
        doomed: dict[str, str] = {}
        if max_backups:
            for b in counted[max_backups:]:
                doomed.setdefault(b.backup_id, "max_backups")
        if max_days:
            limit = now - dt.timedelta(days=max_days)
            for b in counted:
                if b.protected_at < limit:
                    doomed.setdefault(b.backup_id, "retention_duration_days")
        doomed.pop(newest_available.get(resource_id, ""), None)
        out.extend(Expired(b.backup_id, resource_id, doomed[b.backup_id])
                   for b in reversed(items) if b.backup_id in doomed)
    order = {b.backup_id: _age(b) for b in backups}
    out.sort(key=lambda e: order[e.backup_id])
    return out
