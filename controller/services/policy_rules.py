"""The rules a policy must keep (its schedule, windows and retention), as pure
functions of the values, with no database: the API applies them before it
stores a policy, and the console's schedule builder asks the same questions
while the user types, so both refuse the same input with the same words."""

from __future__ import annotations

import re
from typing import Any

from cbr import errors
from cbr.repo.maintenance.subset import DataSubset
from controller.persistence.vocabulary import PolicyOperationType
from controller.services import validation

DAYS = ("MO", "TU", "WE", "TH", "FR", "SA", "SU")
MAX_RULES = 24
MAX_RUNS_PER_DAY = 24
MIN_GAP_MINUTES = 60
# Start window: AWS Backup's minimum (60) is the default here, not its 8
# hours: runs may be an hour apart (MIN_GAP_MINUTES) and a run's window must
# close before the next run is due, so 60 fits every trigger.
START_WINDOW_DEFAULT = 60
START_WINDOW_MIN = 60
START_WINDOW_MAX = 1440
COMPLETION_WINDOW_DEFAULT = 7 * 1440  # AWS Backup's default
COMPLETION_WINDOW_MAX = 30 * 1440
MAINTENANCE_TYPES = frozenset({PolicyOperationType.VERIFY, PolicyOperationType.PRUNE})
_TIMEZONE = re.compile(r"^UTC([+-])(\d{2}):(\d{2})$")


def _ints(text: str, low: int, high: int, what: str, rule: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise errors.InvalidParameter(f"{what} in {rule!r} must be numbers.",
                                      field="trigger.pattern") from None
    for v in values:
        if not low <= v <= high:
            raise errors.InvalidParameter(f"{what} {v} in {rule!r} must be {low} to {high}.",
                                          field="trigger.pattern")
    return values


def parse_rule(rule: str) -> tuple[list[int], list[tuple[int, int]], int]:
    """(weekdays 0=Monday, [(hour, minute)], interval days) of one RRULE."""
    parts: dict[str, str] = {}
    for item in rule.split(";"):
        key, sep, value = item.partition("=")
        if not sep or not value:
            raise errors.InvalidParameter(
                f"Trigger rule {rule!r}: {item!r} is not KEY=VALUE.", field="trigger.pattern")
        key = key.strip().upper()
        if key in parts:
            raise errors.InvalidParameter(f"Trigger rule {rule!r} sets {key} twice.",
                                          field="trigger.pattern")
        parts[key] = value.strip().upper()
    unknown = set(parts) - {"FREQ", "BYDAY", "BYHOUR", "BYMINUTE", "INTERVAL"}
    if unknown:
        raise errors.InvalidParameter(
            f"Trigger rule {rule!r}: {', '.join(sorted(unknown))} not supported; use FREQ, "
            "BYDAY, BYHOUR, BYMINUTE and INTERVAL.", field="trigger.pattern")
    freq = parts.get("FREQ")
    if freq not in ("WEEKLY", "DAILY"):
        raise errors.InvalidParameter(
            f"Trigger rule {rule!r}: FREQ must be WEEKLY or DAILY.", field="trigger.pattern")
    if "BYHOUR" not in parts or "BYMINUTE" not in parts:
        raise errors.InvalidParameter(f"Trigger rule {rule!r} needs BYHOUR and BYMINUTE.",
                                      field="trigger.pattern")
    hours = _ints(parts["BYHOUR"], 0, 23, "BYHOUR", rule)
    minutes = _ints(parts["BYMINUTE"], 0, 59, "BYMINUTE", rule)
    if freq == "WEEKLY":
        if "INTERVAL" in parts:
            raise errors.InvalidParameter(
                f"Trigger rule {rule!r}: INTERVAL (days) goes with FREQ=DAILY.",
                field="trigger.pattern")
        if "BYDAY" not in parts:
            raise errors.InvalidParameter(f"Trigger rule {rule!r}: FREQ=WEEKLY needs BYDAY.",
                                          field="trigger.pattern")
        days = []
        for d in parts["BYDAY"].split(","):
            if d not in DAYS:
                raise errors.InvalidParameter(
                    f"Trigger rule {rule!r}: BYDAY {d!r} is not one of {', '.join(DAYS)}.",
                    field="trigger.pattern")
            days.append(DAYS.index(d))
        interval = 1
    else:
        if "BYDAY" in parts:
            raise errors.InvalidParameter(
                f"Trigger rule {rule!r}: BYDAY goes with FREQ=WEEKLY.", field="trigger.pattern")
        interval = _ints(parts.get("INTERVAL", "1"), 1, 30, "INTERVAL", rule)[0]
        days = list(range(7))
    return sorted(set(days)), sorted({(h, m) for h in hours for m in minutes}), interval


def _week(patterns: list[str]) -> list[int]:
    """The minutes of the week (0 = Monday 00:00) at which the rules run."""
    week: set[int] = set()
    for rule in patterns:
        days, times, _interval = parse_rule(rule)
        for d in days:
            week |= {d * 1440 + h * 60 + m for h, m in times}
    return sorted(week)


def shortest_gap(patterns: list[str]) -> int:
    """Minutes between the two closest runs (a week when there is one run a
    week); DAILY INTERVAL=N counts as daily, its closest case."""
    ordered = _week(patterns)
    if len(ordered) < 2:
        return 7 * 1440
    return min(b - a for a, b in zip(
        ordered, [*ordered[1:], ordered[0] + 7 * 1440], strict=True))


def validate_windows(start: int, completion: int, patterns: list[str]) -> tuple[int, int]:
    """The start and completion windows (0 means the default), checked: a run
    may start until its start window closes, and that must be before the
    next run is due; a backup runs until its completion window closes."""
    start = start or START_WINDOW_DEFAULT
    completion = completion or COMPLETION_WINDOW_DEFAULT
    if not START_WINDOW_MIN <= start <= START_WINDOW_MAX:
        raise errors.InvalidParameter(
            f"start_window_minutes {start} must be {START_WINDOW_MIN} to {START_WINDOW_MAX} "
            "(0 for the default, 60).", field="start_window_minutes")
    if not start < completion <= COMPLETION_WINDOW_MAX:
        raise errors.InvalidParameter(
            f"completion_window_minutes {completion} must be more than the start window "
            f"({start}) and at most {COMPLETION_WINDOW_MAX} (30 days); 0 for the default, "
            f"{COMPLETION_WINDOW_DEFAULT} (7 days).", field="completion_window_minutes")
    gap = shortest_gap(patterns) if patterns else 7 * 1440
    if start > gap:
        raise errors.InvalidParameter(
            f"start_window_minutes {start} is longer than the {gap} minutes between two of "
            "the policy's runs; a run's start window must close before the next run is due.",
            field="start_window_minutes")
    return start, completion


def validate_trigger(patterns: list[str], required: bool) -> list[str]:
    if not patterns:
        if required:
            raise errors.InvalidParameter("trigger.pattern needs at least one rule.",
                                          field="trigger.pattern")
        return []
    if len(patterns) > MAX_RULES:
        raise errors.InvalidParameter(f"At most {MAX_RULES} trigger rules.",
                                      field="trigger.pattern")
    week = set(_week(patterns))
    for day in range(7):
        runs = [t for t in week if day * 1440 <= t < (day + 1) * 1440]
        if len(runs) > MAX_RUNS_PER_DAY:
            raise errors.InvalidParameter(
                f"The trigger runs {len(runs)} times on {DAYS[day]}; at most "
                f"{MAX_RUNS_PER_DAY} runs a day.", field="trigger.pattern")
    ordered = sorted(week)
    for a, b in zip(ordered, [*ordered[1:], ordered[0] + 7 * 1440], strict=True):
        if len(ordered) > 1 and b - a < MIN_GAP_MINUTES:
            raise errors.InvalidParameter(
                f"Two runs are {b - a} minutes apart ({DAYS[(a // 1440) % 7]} "
                f"{a % 1440 // 60:02d}:{a % 60:02d}); at least one hour must be between runs.",
                field="trigger.pattern")
    return patterns


def validate_definition(op: str, od: dict[str, Any]) -> dict[str, Any]:
    validation.int_range(od.get("max_backups", 0), 0, 99999, "max_backups", also=(-1,))
    validation.int_range(od.get("retention_duration_days", 0), 0, 99999,
                         "retention_duration_days", also=(-1,))
    long_term = False
    for key in ("day_backups", "week_backups", "month_backups", "year_backups"):
        validation.int_range(od.get(key, 0), 0, 100, key)
        long_term = long_term or od.get(key, 0) > 0
    tz = od.get("timezone", "")
    if tz:
        match = _TIMEZONE.match(tz)
        if not match or int(match.group(2)) > 14 or int(match.group(3)) >= 60:
            raise errors.InvalidParameter(
                f"timezone {tz!r} must look like UTC+08:00 or UTC-05:30.", field="timezone")
    if long_term and not tz:
        raise errors.InvalidParameter(
            "day/week/month/year_backups need a timezone such as UTC+08:00.", field="timezone")
    validation.int_range(od.get("full_backup_interval", 0), -1, 100, "full_backup_interval")
    _validate_kind(op, od)
    replication_fields = ("destination_region", "destination_project_id", "credential_id")
    if op == PolicyOperationType.REPLICATION:
        if not od.get("destination_region"):
            raise errors.InvalidParameter("A replication policy needs destination_region.",
                                          field="destination_region")
        if not od.get("destination_project_id"):
            raise errors.InvalidParameter(
                "A replication policy needs destination_project_id (the target account id).",
                field="destination_project_id")
        if not od.get("credential_id"):
            raise errors.InvalidParameter(
                "A replication policy needs credential_id: the credential of the target "
                "account (`cbr credential list`).", field="credential_id")
    else:
        for key in replication_fields:
            if od.get(key):
                raise errors.InvalidParameter(f"{key} is for replication policies only.",
                                              field=key)
    return od


_BACKUP_ONLY = ("max_backups", "retention_duration_days", "day_backups", "week_backups",
                "month_backups", "year_backups", "full_backup_interval",
                "include_manual_backups")


def _validate_kind(op: str, od: dict[str, Any]) -> None:
    """Fields that belong to one operation type are refused on the others,
    so a policy never carries a rule that silently does nothing."""
    if op in MAINTENANCE_TYPES:
        for key in _BACKUP_ONLY:
            if od.get(key):
                raise errors.InvalidParameter(
                    f"{key} is for backup policies; a {op} policy has no retention.",
                    field=key)
    if op != PolicyOperationType.VERIFY:
        for key in ("read_data", "read_data_subset"):
            if od.get(key):
                raise errors.InvalidParameter(f"{key} is for verify policies only.",
                                              field=key)
        return
    subset = str(od.get("read_data_subset", "") or "")
    if subset:
        try:
            DataSubset.parse(subset)
        except ValueError as exc:
            raise errors.InvalidParameter(f"read_data_subset: {exc}",
                                          field="read_data_subset") from None
