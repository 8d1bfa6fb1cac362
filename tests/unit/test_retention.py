"""Retention rules over a simulated year, against expectations written out by
hand, and the guarantees that hold whatever the rules say."""

from __future__ import annotations

import datetime as dt

from controller.services.retention import Candidate, select_expired

UTC = dt.UTC


def day(month: int, d: int, hour: int = 12) -> dt.datetime:
    return dt.datetime(2026, month, d, hour, tzinfo=UTC)


def _year_of_dailies(resource: str = "r1") -> list[Candidate]:
    start = day(1, 1)
    return [Candidate(f"{(start + dt.timedelta(days=i)).date()}", resource,
                      start + dt.timedelta(days=i), auto=True) for i in range(365)]


def test_a_year_of_daily_backups_keeps_what_the_gfs_rules_say() -> None:
    backups = _year_of_dailies()
    rules = {"max_backups": 5, "week_backups": 3, "month_backups": 12, "year_backups": 1,
             "timezone": "UTC+00:00"}
    expired = select_expired(backups, rules, day(12, 31, 13))
    kept = {b.backup_id for b in backups} - {e.backup_id for e in expired}
    # Worked out by hand: the last day of each month (month_backups=12; the
    # year's latest is 12-31 too); the latest of each of the last three ISO
    # weeks, 2026-12-31 being a Thursday (12-31, Sunday 12-27, Sunday 12-20);
    # then the newest five of the rest (max_backups=5).
    assert kept == {
        "2026-01-31", "2026-02-28", "2026-03-31", "2026-04-30", "2026-05-31", "2026-06-30",
        "2026-07-31", "2026-08-31", "2026-09-30", "2026-10-31", "2026-11-30", "2026-12-31",
        "2026-12-27", "2026-12-20",
        "2026-12-30", "2026-12-29", "2026-12-28", "2026-12-26", "2026-12-25",
    }
    assert {e.rule for e in expired} == {"max_backups"}
    assert [e.backup_id for e in expired[:2]] == ["2026-01-01", "2026-01-02"]  # oldest first


def test_long_term_days_follow_the_policy_timezone() -> None:
    # 20:00 UTC is already the next day at UTC+08:00: two backups an evening
    # and a morning apart fall on the same local day.
    backups = [Candidate("evening", "r", dt.datetime(2026, 5, 1, 20, tzinfo=UTC), True),
               Candidate("morning", "r", dt.datetime(2026, 5, 2, 9, tzinfo=UTC), True),
               Candidate("older", "r", dt.datetime(2026, 4, 30, 9, tzinfo=UTC), True)]
    rules = {"max_backups": 1, "day_backups": 2, "timezone": "UTC+08:00"}
    expired = select_expired(backups, rules, dt.datetime(2026, 5, 3, tzinfo=UTC))
    # Local days: 05-02 (evening, morning -> morning is the latest), 04-30.
    # Long-term keeps morning and older; the count keeps evening.
    assert expired == []
    rules_utc = {"max_backups": 1, "day_backups": 1, "timezone": ""}
    expired = select_expired(backups, rules_utc, dt.datetime(2026, 5, 3, tzinfo=UTC))
    assert [e.backup_id for e in expired] == ["older"]


def test_age_rule_names_itself_and_the_newest_backup_always_stays() -> None:
    backups = [Candidate(f"b{i}", "r", day(1, 1 + i), True) for i in range(5)]
    expired = select_expired(backups, {"retention_duration_days": 2}, day(3, 1))
    # Every backup is older than two days, but the newest available stays.
    assert [(e.backup_id, e.rule) for e in expired] == [
        ("b0", "retention_duration_days"), ("b1", "retention_duration_days"),
        ("b2", "retention_duration_days"), ("b3", "retention_duration_days")]


def test_manual_and_busy_backups_are_left_alone_and_resources_count_apart() -> None:
    backups = [
        Candidate("manual-old", "r1", day(1, 1), auto=False),
        Candidate("restoring", "r1", day(1, 2), auto=True, status="restoring"),
        Candidate("auto-1", "r1", day(1, 3), True),
        Candidate("auto-2", "r1", day(1, 4), True),
        Candidate("other-1", "r2", day(1, 1), True),
        Candidate("other-2", "r2", day(1, 2), True),
    ]
    expired = select_expired(backups, {"max_backups": 1}, day(2, 1))
    assert [(e.backup_id, e.resource_id) for e in expired] == [("other-1", "r2"),
                                                               ("auto-1", "r1")]
    with_manual = select_expired(backups, {"max_backups": 1}, day(2, 1), include_manual=True)
    assert {e.backup_id for e in with_manual} == {"manual-old", "auto-1", "other-1"}


def test_no_rules_keep_everything() -> None:
    backups = _year_of_dailies()
    assert select_expired(backups, {"max_backups": -1, "retention_duration_days": -1},
                          day(12, 31, 13)) == []
    assert select_expired(backups, {}, day(12, 31, 13)) == []
