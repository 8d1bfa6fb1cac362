"""Run times of policy triggers: the reference's examples, fixed offsets
across a daylight-saving date, month and year ends, leap days, and DAILY
intervals counted from the policy's anchor day."""

from __future__ import annotations

import datetime as dt

import pytest

from controller.services.schedule import Schedule, parse_timezone

UTC = dt.UTC
EVERY_DAY_14 = "FREQ=WEEKLY;BYDAY=MO,TU,WE,TH,FR,SA,SU;BYHOUR=14;BYMINUTE=00"
DAILY_6 = "FREQ=DAILY;INTERVAL=1;BYHOUR=6;BYMINUTE=00"


def t(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


def _next(schedule: Schedule, after: dt.datetime, n: int) -> list[dt.datetime]:
    out = []
    for _ in range(n):
        nxt = schedule.next_after(after)
        assert nxt is not None
        out.append(nxt)
        after = nxt
    return out


def test_the_weekly_example_runs_every_day_at_14_local_time() -> None:
    s = Schedule.of([EVERY_DAY_14], "UTC+08:00", t(2026, 1, 1))
    assert _next(s, t(2026, 1, 1, 7), 3) == [t(2026, 1, 2, 6), t(2026, 1, 3, 6),
                                             t(2026, 1, 4, 6)]
    assert s.next_after(t(2026, 1, 1, 5, 59)) == t(2026, 1, 1, 6)


def test_the_daily_example_runs_at_6_utc_without_a_timezone() -> None:
    s = Schedule.of([DAILY_6], "", t(2026, 1, 1))
    assert _next(s, t(2026, 1, 1, 6), 2) == [t(2026, 1, 2, 6), t(2026, 1, 3, 6)]
    # Exactly at a run time, that run is not "after" it.
    assert s.next_after(t(2026, 1, 2, 6)) == t(2026, 1, 3, 6)
    assert s.latest_at_or_before(t(2026, 1, 2, 6)) == t(2026, 1, 2, 6)


def test_a_fixed_offset_does_not_move_across_a_daylight_saving_date() -> None:
    # Europe moved its clocks on 2026-03-29; UTC+01:00 does not.
    s = Schedule.of([DAILY_6], "UTC+01:00", t(2026, 3, 1))
    assert _next(s, t(2026, 3, 28, 12), 3) == [t(2026, 3, 29, 5), t(2026, 3, 30, 5),
                                               t(2026, 3, 31, 5)]


def test_month_year_and_leap_day_ends() -> None:
    s = Schedule.of([DAILY_6], "UTC-05:30", t(2027, 1, 1))
    assert _next(s, t(2028, 2, 28, 12), 3) == [t(2028, 2, 29, 11, 30), t(2028, 3, 1, 11, 30),
                                               t(2028, 3, 2, 11, 30)]
    assert _next(s, t(2026, 12, 31, 12), 1) == [t(2027, 1, 1, 11, 30)]


def test_a_daily_interval_counts_days_from_the_anchor_across_a_month_end() -> None:
    s = Schedule.of(["FREQ=DAILY;INTERVAL=3;BYHOUR=1;BYMINUTE=30"], "", t(2026, 1, 28, 20))
    assert _next(s, t(2026, 1, 28, 21), 4) == [t(2026, 1, 31, 1, 30), t(2026, 2, 3, 1, 30),
                                               t(2026, 2, 6, 1, 30), t(2026, 2, 9, 1, 30)]


def test_the_anchor_day_is_local_and_weekdays_are_local() -> None:
    # 2026-01-04 20:00 UTC is Monday 2026-01-05 04:00 at UTC+08:00.
    s = Schedule.of(["FREQ=WEEKLY;BYDAY=MO;BYHOUR=3;BYMINUTE=15"], "UTC+08:00",
                    t(2026, 1, 1))
    assert s.next_after(t(2026, 1, 4, 12)) == t(2026, 1, 4, 19, 15)  # Monday 03:15 local
    assert s.next_after(t(2026, 1, 4, 19, 15)) == t(2026, 1, 11, 19, 15)


def test_several_rules_merge_in_time_order() -> None:
    s = Schedule.of(["FREQ=WEEKLY;BYDAY=SA,SU;BYHOUR=22;BYMINUTE=00",
                     "FREQ=DAILY;INTERVAL=1;BYHOUR=2,14;BYMINUTE=0"], "", t(2026, 1, 1))
    # 2026-01-03 is a Saturday.
    assert _next(s, t(2026, 1, 3), 4) == [t(2026, 1, 3, 2), t(2026, 1, 3, 14),
                                          t(2026, 1, 3, 22), t(2026, 1, 4, 2)]
    assert s.runs_between(t(2026, 1, 3), t(2026, 1, 3, 22)) == [
        t(2026, 1, 3, 2), t(2026, 1, 3, 14), t(2026, 1, 3, 22)]


@pytest.mark.parametrize("text,offset", [("", 0), ("UTC+08:00", 480), ("UTC-05:30", -330),
                                         ("UTC+14:00", 840)])
def test_timezones_are_fixed_offsets(text: str, offset: int) -> None:
    assert parse_timezone(text).utcoffset(None) == dt.timedelta(minutes=offset)
