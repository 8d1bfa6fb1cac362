"""When a policy runs: its RRULEs in its timezone, as plain date arithmetic.

A policy's timezone is a fixed UTC offset (``UTC+08:00``, as the reference
writes it), so a run time never moves with daylight saving: 02:00 at
UTC+01:00 is 01:00 UTC in January and in July. ``FREQ=DAILY;INTERVAL=N``
counts days from the policy's anchor day (the local day it was created), so
the days it runs do not depend on when the controller last started.

Pure functions of their inputs: the scheduler, ``run-now``, the API's next
run times and the tests all ask the same questions here.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Protocol

from controller.services.policy_rules import parse_rule

_OFFSET = re.compile(r"^UTC([+-])(\d{2}):(\d{2})$")
SEARCH_DAYS = 62
"""Days searched for a run: every rule runs at least once in 30 days
(INTERVAL <= 30) or 7 (WEEKLY), so two months always find one."""


def parse_timezone(text: str) -> dt.timezone:
    """``UTC+08:00`` as a fixed offset; empty means UTC."""
    if not text:
        return dt.UTC
    match = _OFFSET.match(text)
    if match is None:
        raise ValueError(f"timezone {text!r} must look like UTC+08:00")
    sign = 1 if match.group(1) == "+" else -1
    return dt.timezone(sign * dt.timedelta(hours=int(match.group(2)),
                                           minutes=int(match.group(3))))


@dataclass(frozen=True)
class Rule:
    weekdays: frozenset[int]  # 0 = Monday
    times: tuple[tuple[int, int], ...]  # (hour, minute), sorted
    interval: int  # days between runs of a DAILY rule; 1 for WEEKLY


@dataclass(frozen=True)
class Schedule:
    rules: tuple[Rule, ...]
    tz: dt.timezone
    anchor: dt.date  # local day DAILY intervals count from

    @classmethod
    def of(cls, patterns: list[str], timezone: str, anchor: dt.datetime) -> Schedule:
        tz = parse_timezone(timezone)
        rules = []
        for pattern in patterns:
            days, times, interval = parse_rule(pattern)
            rules.append(Rule(frozenset(days), tuple(times), interval))
        return cls(tuple(rules), tz, anchor.astimezone(tz).date())

    def _runs_on(self, day: dt.date) -> list[dt.datetime]:
        """Run times of one local day, as aware datetimes, sorted."""
        out: set[dt.datetime] = set()
        for rule in self.rules:
            if day.weekday() not in rule.weekdays:
                continue
            if rule.interval > 1 and (day - self.anchor).days % rule.interval:
                continue
            for hour, minute in rule.times:
                out.add(dt.datetime(day.year, day.month, day.day, hour, minute, tzinfo=self.tz))
        return sorted(out)

    def next_after(self, when: dt.datetime) -> dt.datetime | None:
        """The first run strictly after ``when`` (UTC), or None without rules."""
        day = when.astimezone(self.tz).date()
        for offset in range(SEARCH_DAYS):
            for run in self._runs_on(day + dt.timedelta(days=offset)):
                if run > when:
                    return run.astimezone(dt.UTC)
        return None

    def latest_at_or_before(self, when: dt.datetime) -> dt.datetime | None:
        """The last run at or before ``when`` (UTC), or None."""
        day = when.astimezone(self.tz).date()
        for offset in range(SEARCH_DAYS):
            for run in reversed(self._runs_on(day - dt.timedelta(days=offset))):
                if run <= when:
                    return run.astimezone(dt.UTC)
        return None

    def runs_between(self, start: dt.datetime, end: dt.datetime) -> list[dt.datetime]:
        return runs_between(self, start, end)


class _NextAfter(Protocol):
    def next_after(self, when: dt.datetime) -> dt.datetime | None: ...


def runs_between(schedule: _NextAfter, start: dt.datetime,
                 end: dt.datetime) -> list[dt.datetime]:
    """Runs of any schedule in ``(start, end]``, in order."""
    out = []
    run = schedule.next_after(start)
    while run is not None and run <= end:
        out.append(run)
        run = schedule.next_after(run)
    return out
