"""A scheduled backup run's start and completion windows, on SQLite and
PostgreSQL: windows validated against the trigger, a run that cannot start
in its start window recorded missed with one event, a failed backup retried
with backoff as new tasks of the same run, a backup stopped when its
completion window closes."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select

from cbr import errors
from controller.app import App
from controller.persistence.models import Backup, Event, Policy, PolicyRun, Task
from controller.persistence.vocabulary import EventType, TaskStatus
from controller.services import policies, policy_runs, policy_windows, runs, tasks, vaults
from tests.state.conftest import NOW, Inventory
from tests.state.test_vaults import add, make_vault

DAILY = "FREQ=DAILY;INTERVAL=1;BYHOUR=6;BYMINUTE=00"
AT = dt.datetime(2026, 11, 26, 6, tzinfo=dt.UTC)


def _minutes(n: float) -> dt.datetime:
    return AT + dt.timedelta(minutes=n)


def _policy(app: App, project: str, vault_id: str, start: int = 0,
            completion: int = 0) -> str:
    with app.db.begin() as s:
        pid = policies.create_policy(s, project, "nightly", "backup", True, {}, [DAILY], NOW,
                                     start_window_minutes=start,
                                     completion_window_minutes=completion).id
        vaults.associate_policy(s, project, vault_id, pid, "", NOW)
        return pid


def _setup(app: App, project: str, inventory: Inventory, **windows: int) -> tuple[str, str]:
    vid = make_vault(app, project, object_type="disk")
    add(app, project, vid, inventory.add("vol", "disk"))
    return vid, _policy(app, project, vid, **windows)


def _run(app: App, pid: str, vid: str, online: set[str]) -> policy_runs.RunOutcome:
    with app.db.begin() as s:
        policy = s.get(Policy, pid)
        assert policy is not None
        outcome = policy_runs.run_on_vault(s, policy, vid, AT, now=AT, online=online)
        assert outcome is not None
        return outcome


def _sweep(app: App, at: dt.datetime, online: set[str]) -> policy_windows.SweepResult:
    with app.db.begin() as s:
        return policy_windows.sweep(s, at, online)


def _fail(app: App, task_id: str, at: dt.datetime) -> None:
    with app.db.begin() as s:
        assert tasks.start_task(s, task_id, at) is not None
        task = tasks.finish_task(s, task_id, TaskStatus.FAILED, at,
                                 error_code=errors.StorageUnavailable.code,
                                 error_message="storage went away")
        assert task is not None
        runs.finish_backup(s, task, False, None, at)


def _run_row(app: App) -> PolicyRun:
    with app.db.begin() as s:
        row = s.scalars(select(PolicyRun)).one()
        s.expunge(row)
        return row


def _missed_events(app: App) -> list[Event]:
    with app.db.begin() as s:
        rows = list(s.scalars(select(Event).where(
            Event.event_type == EventType.POLICY_RUN_MISSED)))
        s.expunge_all()
        return rows


def _backup_tasks(app: App) -> list[Task]:
    with app.db.begin() as s:
        rows = list(s.scalars(select(Task).where(Task.operation_type == "backup")
                              .order_by(Task.created_at)))
        s.expunge_all()
        return rows


# -- validation --------------------------------------------------------------------------------


def test_windows_default_to_an_hour_to_start_and_seven_days_to_complete(
        app: App, project: str) -> None:
    vid = make_vault(app, project, object_type="disk")
    pid = _policy(app, project, vid)
    with app.db.begin() as s:
        p = policies.get_policy(s, project, pid)
        assert (p.start_window_minutes, p.completion_window_minutes) == (60, 10080)


@pytest.mark.parametrize(("start", "completion", "field", "words"), [
    (30, 0, "start_window_minutes", "must be 60 to 1440"),
    (1500, 2000, "start_window_minutes", "must be 60 to 1440"),
    (120, 120, "completion_window_minutes", "more than the start window"),
    (60, 50000, "completion_window_minutes", "at most 43200"),
])
def test_windows_out_of_range_are_refused_naming_the_field(
        app: App, project: str, start: int, completion: int, field: str, words: str) -> None:
    with app.db.begin() as s, pytest.raises(errors.InvalidParameter) as caught:
        policies.create_policy(s, project, "p", "backup", True, {}, [DAILY], NOW,
                               start_window_minutes=start, completion_window_minutes=completion)
    assert caught.value.metadata.get("field") == field
    assert words in caught.value.message


def test_a_start_window_longer_than_the_time_between_runs_is_refused(
        app: App, project: str) -> None:
    two_hourly = "FREQ=DAILY;INTERVAL=1;BYHOUR=0,2,4,6,8,10,12,14,16,18,20,22;BYMINUTE=00"
    with app.db.begin() as s, pytest.raises(errors.InvalidParameter) as caught:
        policies.create_policy(s, project, "p", "backup", True, {}, [two_hourly], NOW,
                               start_window_minutes=180)
    assert "120 minutes between two of the policy's runs" in caught.value.message
    with app.db.begin() as s:
        p = policies.create_policy(s, project, "p", "backup", True, {}, [two_hourly], NOW,
                                   start_window_minutes=120)
        assert p.start_window_minutes == 120
        # A later trigger change is checked against the window it keeps.
        with pytest.raises(errors.InvalidParameter):
            policies.update_policy(s, project, p.id, {"trigger": [
                "FREQ=DAILY;INTERVAL=1;BYHOUR=0,1;BYMINUTE=00"]}, NOW)


def test_windows_can_be_changed_and_stay_checked(app: App, project: str) -> None:
    vid = make_vault(app, project, object_type="disk")
    pid = _policy(app, project, vid)
    with app.db.begin() as s:
        p = policies.update_policy(s, project, pid, {"start_window_minutes": 240,
                                                     "completion_window_minutes": 600}, NOW)
        assert (p.start_window_minutes, p.completion_window_minutes) == (240, 600)
    with app.db.begin() as s, pytest.raises(errors.InvalidParameter):
        policies.update_policy(s, project, pid, {"completion_window_minutes": 200}, NOW)


# -- missed runs -------------------------------------------------------------------------------


def test_a_run_the_controller_missed_raises_one_event(
        app: App, project: str, inventory: Inventory) -> None:
    vid, pid = _setup(app, project, inventory)
    with app.db.begin() as s:
        assert policy_runs.record_missed(s, pid, AT, _minutes(90)) == 1
    with app.db.begin() as s:
        assert policy_runs.record_missed(s, pid, AT, _minutes(95)) == 0
    [event] = _missed_events(app)
    assert event.resource_id == pid and event.details["vault_id"] == vid
    assert "start window (60 minutes)" in event.summary


def test_a_run_whose_agent_stays_offline_through_its_start_window_is_missed_once(
        app: App, project: str, inventory: Inventory) -> None:
    _vid, _pid = _setup(app, project, inventory)
    assert _run(app, _pid, _vid, set()).dispatches == []
    assert _sweep(app, _minutes(30), set()).dispatches == []
    assert _run_row(app).status == "dispatched"
    result = _sweep(app, _minutes(60), set())
    row = _run_row(app)
    assert result.missed == [row.id] and row.status == "missed" and row.settled
    assert "offline" in row.detail
    _sweep(app, _minutes(61), set())
    assert len(_missed_events(app)) == 1


def test_a_resource_whose_agent_returns_within_the_window_is_backed_up_late(
        app: App, project: str, inventory: Inventory) -> None:
    vid, pid = _setup(app, project, inventory)
    _run(app, pid, vid, set())
    result = _sweep(app, _minutes(20), {inventory.agent_id})
    assert len(result.dispatches) == 1
    [task] = _backup_tasks(app)
    row = _run_row(app)
    assert task.extra_info["policy_run_id"] == row.id and task.extra_info["attempt"] == 1
    assert task.checkpoint_id == row.checkpoint_id and task.policy_id == pid
    with app.db.begin() as s:
        assert tasks.start_task(s, task.id, _minutes(21)) is not None
    _sweep(app, _minutes(61), {inventory.agent_id})
    assert _run_row(app).status == "dispatched" and _missed_events(app) == []


def test_a_task_that_never_reached_its_agent_is_stopped_and_the_run_missed(
        app: App, project: str, inventory: Inventory) -> None:
    vid, pid = _setup(app, project, inventory)
    [dispatch] = _run(app, pid, vid, {inventory.agent_id}).dispatches  # never sent
    _sweep(app, _minutes(60), set())
    [task] = _backup_tasks(app)
    assert task.status == "timeout" and task.error_code == errors.PolicyWindowClosed.code
    assert "did not start within the policy's start window" in task.error_message
    assert _run_row(app).status == "missed" and len(_missed_events(app)) == 1
    assert dispatch.task_id == task.id


# -- retries -----------------------------------------------------------------------------------


def test_a_failed_scheduled_backup_is_retried_with_backoff_as_tasks_of_the_same_run(
        app: App, project: str, inventory: Inventory) -> None:
    online = {inventory.agent_id}
    vid, pid = _setup(app, project, inventory)
    [first] = _run(app, pid, vid, online).dispatches
    _fail(app, first.task_id, _minutes(1))
    assert _sweep(app, _minutes(2), online).dispatches == []  # backoff: 2 minutes
    [retry] = _sweep(app, _minutes(3), online).dispatches
    _fail(app, retry.task_id, _minutes(4))
    assert _sweep(app, _minutes(10), online).dispatches == []  # backoff: 8 minutes
    [last] = _sweep(app, _minutes(12), online).dispatches
    _fail(app, last.task_id, _minutes(13))
    assert _sweep(app, _minutes(40), online).dispatches == []  # three tries in all
    row = _run_row(app)
    made = _backup_tasks(app)
    assert [t.extra_info["attempt"] for t in made] == [1, 2, 3]
    assert {t.extra_info["policy_run_id"] for t in made} == {row.id}
    assert {t.checkpoint_id for t in made} == {row.checkpoint_id}
    _sweep(app, _minutes(60), online)
    row = _run_row(app)
    assert row.settled and row.status != "missed" and _missed_events(app) == []


def test_no_retry_once_the_vault_refuses_backups_and_the_run_says_why(
        app: App, project: str, inventory: Inventory) -> None:
    online = {inventory.agent_id}
    vid, pid = _setup(app, project, inventory)
    [first] = _run(app, pid, vid, online).dispatches
    _fail(app, first.task_id, _minutes(1))
    with app.db.begin() as s:
        vaults.update_vault(s, project, vid, {"status": "frozen"}, _minutes(2))
    assert _sweep(app, _minutes(3), online).dispatches == []
    assert len(_backup_tasks(app)) == 1
    detail = _run_row(app).detail
    assert "not started again" in detail and errors.VaultStatusIllegal.code in detail


def test_no_retry_once_the_start_window_is_closed(
        app: App, project: str, inventory: Inventory) -> None:
    online = {inventory.agent_id}
    vid, pid = _setup(app, project, inventory)
    [first] = _run(app, pid, vid, online).dispatches
    _fail(app, first.task_id, _minutes(59))
    assert _sweep(app, _minutes(61), online).dispatches == []
    assert _run_row(app).settled


def test_a_retry_succeeding_makes_the_run_available(
        app: App, project: str, inventory: Inventory) -> None:
    from tests.state.test_runs import _succeed

    online = {inventory.agent_id}
    vid, pid = _setup(app, project, inventory)
    [first] = _run(app, pid, vid, online).dispatches
    _fail(app, first.task_id, _minutes(1))
    [retry] = _sweep(app, _minutes(3), online).dispatches
    _succeed(app, retry.task_id)
    assert _sweep(app, _minutes(20), online).dispatches == []
    with app.db.begin() as s:
        statuses = sorted(s.scalars(select(Backup.status)).all())
        assert statuses == ["available", "error"]


# -- completion window -------------------------------------------------------------------------


def test_a_backup_still_running_when_the_completion_window_closes_is_stopped(
        app: App, project: str, inventory: Inventory) -> None:
    online = {inventory.agent_id}
    vid, pid = _setup(app, project, inventory, completion=120)
    [first] = _run(app, pid, vid, online).dispatches
    with app.db.begin() as s:
        assert tasks.start_task(s, first.task_id, _minutes(1)) is not None
    assert _sweep(app, _minutes(119), online).stopped == []
    stopped = _sweep(app, _minutes(120), online)
    assert stopped.stopped == [first.task_id]
    # Its agent is asked to stop once this is committed.
    assert stopped.running == [(inventory.agent_id, first.task_id)]
    [task] = _backup_tasks(app)
    assert task.status == "timeout" and task.error_code == errors.PolicyWindowClosed.code
    assert "completion window (120 minutes" in task.error_message
    with app.db.begin() as s:
        assert s.scalars(select(Backup.status)).all() == ["error"]
        failed = s.scalars(select(Event).where(
            Event.event_type == EventType.BACKUP_FAILED)).all()
        assert len(failed) == 1 and "completion window" in failed[0].summary
    assert _run_row(app).settled and _run_row(app).status == "dispatched"


def test_a_run_on_a_vault_with_nothing_to_back_up_is_not_missed(
        app: App, project: str) -> None:
    vid = make_vault(app, project, object_type="disk")
    pid = _policy(app, project, vid)
    assert _run(app, pid, vid, set()).dispatches == []
    _sweep(app, _minutes(61), set())
    row = _run_row(app)
    assert row.settled and row.status != "missed" and _missed_events(app) == []


def test_manual_runs_have_no_windows(app: App, project: str, inventory: Inventory) -> None:
    vid, pid = _setup(app, project, inventory)
    with app.db.begin() as s:
        policy = s.get(Policy, pid)
        assert policy is not None
        policy_runs.run_on_vault(s, policy, vid, AT, now=AT, online=set(), manual=True)
    assert _run_row(app).settled
    assert _sweep(app, _minutes(90), set()).missed == []
