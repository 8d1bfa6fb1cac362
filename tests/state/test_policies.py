"""Policy schedule and retention rules from the reference."""

from __future__ import annotations

import pytest

from cbr import errors
from controller.app import App
from controller.services import policies
from tests.state.conftest import NOW

DAILY = "FREQ=DAILY;INTERVAL=1;BYHOUR=6;BYMINUTE=00"
WEEKLY = "FREQ=WEEKLY;BYDAY=MO,TU,WE,TH,FR,SA,SU;BYHOUR=14;BYMINUTE=00"


def create(app: App, project: str, patterns: list[str], op: str = "backup",
           **od: object) -> str:
    with app.db.begin() as s:
        return policies.create_policy(s, project, "p", op, True, dict(od), patterns, NOW).id


@pytest.mark.parametrize("patterns", [[DAILY], [WEEKLY], [DAILY, WEEKLY],
                                      ["FREQ=DAILY;INTERVAL=30;BYHOUR=0,12;BYMINUTE=30"]])
def test_reference_trigger_examples_are_accepted(app: App, project: str,
                                                 patterns: list[str]) -> None:
    create(app, project, patterns)


@pytest.mark.parametrize("rule, why", [
    ("FREQ=HOURLY;BYHOUR=1;BYMINUTE=0", "FREQ must be WEEKLY or DAILY"),
    ("FREQ=DAILY;INTERVAL=31;BYHOUR=1;BYMINUTE=0", "INTERVAL 31"),
    ("FREQ=DAILY;BYHOUR=24;BYMINUTE=0", "BYHOUR 24"),
    ("FREQ=DAILY;BYHOUR=1;BYMINUTE=60", "BYMINUTE 60"),
    ("FREQ=WEEKLY;BYDAY=XX;BYHOUR=1;BYMINUTE=0", "BYDAY 'XX'"),
    ("FREQ=WEEKLY;BYHOUR=1;BYMINUTE=0", "needs BYDAY"),
    ("FREQ=DAILY;BYHOUR=1", "needs BYHOUR and BYMINUTE"),
    ("FREQ=DAILY;BYHOUR=1;BYMINUTE=0;COUNT=3", "COUNT not supported"),
    ("FREQ=DAILY;BYHOUR=1,2;BYMINUTE=0,30", "at least one hour"),
    ("garbage", "not KEY=VALUE"),
    ("FREQ=DAILY;INTERVAL=0;BYHOUR=1;BYMINUTE=0", "INTERVAL 0"),
    ("FREQ=DAILY;BYHOUR=1;BYMINUTE=-1", "BYMINUTE -1"),
    ("FREQ=WEEKLY;BYDAY=MO;INTERVAL=2;BYHOUR=1;BYMINUTE=0", "INTERVAL .days. goes with"),
    ("FREQ=DAILY;BYDAY=MO;BYHOUR=1;BYMINUTE=0", "BYDAY goes with FREQ=WEEKLY"),
    ("FREQ=DAILY;FREQ=DAILY;BYHOUR=1;BYMINUTE=0", "sets FREQ twice"),
    ("FREQ=DAILY;BYHOUR=" + ",".join(map(str, range(24))) + ";BYMINUTE=0,30",
     "48 times on MO; at most 24 runs a day"),
])
def test_triggers_outside_the_reference_limits_are_refused(app: App, project: str, rule: str,
                                                           why: str) -> None:
    with pytest.raises(errors.InvalidParameter, match=why):
        create(app, project, [rule])


def test_runs_less_than_an_hour_apart_across_midnight_are_refused(app: App,
                                                                  project: str) -> None:
    with pytest.raises(errors.InvalidParameter, match="at least one hour"):
        create(app, project, ["FREQ=DAILY;BYHOUR=23;BYMINUTE=30", "FREQ=DAILY;BYHOUR=0;BYMINUTE=0"])


def test_more_than_24_rules_are_refused(app: App, project: str) -> None:
    rules = [f"FREQ=WEEKLY;BYDAY=MO;BYHOUR={h};BYMINUTE=0" for h in range(24)]
    rules.append("FREQ=WEEKLY;BYDAY=TU;BYHOUR=0;BYMINUTE=0")
    with pytest.raises(errors.InvalidParameter, match="At most 24"):
        create(app, project, rules)


def test_a_policy_needs_a_trigger(app: App, project: str) -> None:
    with pytest.raises(errors.InvalidParameter, match="at least one rule"):
        create(app, project, [])


@pytest.mark.parametrize("od, field", [
    ({"max_backups": 100000}, "max_backups"),
    ({"max_backups": -2}, "max_backups"),
    ({"retention_duration_days": 100000}, "retention_duration_days"),
    ({"day_backups": 101, "timezone": "UTC+08:00"}, "day_backups"),
    ({"week_backups": 3}, "timezone"),
    ({"month_backups": 1, "timezone": "Europe/Paris"}, "timezone"),
    ({"full_backup_interval": 101}, "full_backup_interval"),
    ({"destination_region": "r2"}, "destination_region"),
])
def test_operation_definitions_outside_limits_are_refused(app: App, project: str,
                                                          od: dict[str, object],
                                                          field: str) -> None:
    with pytest.raises(errors.InvalidParameter) as exc:
        create(app, project, [DAILY], **od)
    assert exc.value.metadata["field"] == field


def test_a_replication_policy_needs_its_destination(app: App, project: str) -> None:
    with pytest.raises(errors.InvalidParameter, match="destination_region"):
        create(app, project, [DAILY], op="replication")
    with pytest.raises(errors.InvalidParameter, match="credential_id"):
        create(app, project, [DAILY], op="replication", destination_region="r2",
               destination_project_id="acct")
    create(app, project, [DAILY], op="replication", destination_region="r2",
           destination_project_id="acct", credential_id="c1")


def test_long_term_retention_with_a_timezone_is_accepted(app: App, project: str) -> None:
    create(app, project, [DAILY], max_backups=-1, day_backups=7, week_backups=4,
           month_backups=12, year_backups=100, timezone="UTC+08:00")


def test_updating_a_policy_validates_the_new_trigger(app: App, project: str) -> None:
    pid = create(app, project, [DAILY])
    with app.db.begin() as s, pytest.raises(errors.InvalidParameter):
        policies.update_policy(s, project, pid, {"trigger": ["FREQ=YEARLY"]}, NOW)
    with app.db.begin() as s:
        assert policies.update_policy(s, project, pid, {"trigger": [WEEKLY]},
                                      NOW).trigger_patterns == [WEEKLY]
