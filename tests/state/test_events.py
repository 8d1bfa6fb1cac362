"""Events are written in the transaction that ends what they report."""

from __future__ import annotations

from sqlalchemy import select

from controller.app import App
from controller.persistence.models import Event
from controller.persistence.vocabulary import EventType, OperationType, TaskStatus
from controller.services import tasks
from tests.state.conftest import NOW


def _events(app: App, project: str) -> list[Event]:
    with app.db.begin() as s:
        rows = s.scalars(select(Event).where(Event.project_id == project)).all()
        s.expunge_all()
        return list(rows)


def test_a_failed_backup_records_one_error_event_naming_the_resource(app: App,
                                                                     project: str) -> None:
    with app.db.begin() as s:
        task = tasks.create_task(s, project_id=project, operation_type=OperationType.BACKUP,
                                 now=NOW, resource_id="r-1", resource_name="web-1",
                                 vault_id="v-1", vault_name="vault-a")
        task_id = task.id
    with app.db.begin() as s:
        tasks.finish_task(s, task_id, TaskStatus.FAILED, NOW, error_code="BackupService.6001",
                          error_message="the agent went away")
        # A result delivered twice ends the task once and records one event.
        assert tasks.finish_task(s, task_id, TaskStatus.FAILED, NOW) is None
    [event] = _events(app, project)
    assert event.event_type == EventType.BACKUP_FAILED
    assert event.severity == "error"
    assert (event.resource_id, event.resource_name, event.task_id) == ("r-1", "web-1", task_id)
    assert "the agent went away" in event.summary
    assert event.details["error_code"] == "BackupService.6001"


def test_routine_tasks_record_no_event_and_a_rolled_back_end_records_none(
        app: App, project: str) -> None:
    with app.db.begin() as s:
        sync = tasks.create_task(s, project_id=project, operation_type=OperationType.SYNC,
                                 now=NOW).id
        restore = tasks.create_task(s, project_id=project,
                                    operation_type=OperationType.RESTORE, now=NOW).id
    with app.db.begin() as s:
        tasks.finish_task(s, sync, TaskStatus.SUCCESS, NOW)
    try:
        with app.db.begin() as s:
            tasks.finish_task(s, restore, TaskStatus.SUCCESS, NOW)
            raise RuntimeError("the change fails after the task ended")
    except RuntimeError:
        pass
    assert _events(app, project) == []
    with app.db.begin() as s:
        tasks.finish_task(s, restore, TaskStatus.SUCCESS, NOW)
    assert [e.event_type for e in _events(app, project)] == [EventType.RESTORE_SUCCEEDED]
