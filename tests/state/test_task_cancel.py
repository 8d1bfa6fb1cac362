"""Cancelling tasks: the service's rules and what a cancel leaves in the
catalog, on SQLite and PostgreSQL.

The hub is real (its result handlers are the controller's); the agent's
stream is a stand-in that records what would be sent, and the agent's
answer is the result it would report.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest

from cbr import errors
from cbr.v1 import agent_pb2
from controller import jobs
from controller.agents.hub import AgentHub
from controller.app import App
from controller.persistence.models import (
    Agent,
    Backup,
    ReplicationRecord,
    Task,
    Vault,
    VaultResource,
)
from controller.persistence.vocabulary import OperationType, ReplicationStatus
from controller.services import deletions, restores, tasks
from tests.state.conftest import NOW, Inventory
from tests.state.test_runs import _available_disk_backup, _checkpoint
from tests.state.test_vaults import add, make_vault


@pytest.fixture
def hub(app: App) -> Iterator[AgentHub]:
    hub = AgentHub(app)  # not started: no background thread, no endpoint
    jobs.install(hub, app)
    app.hub = hub
    yield hub
    hub._executor.shutdown(wait=False)


def _connected(hub: AgentHub, agent_id: str, project: str) -> list[Any]:
    """Attaches a stream for the agent that records what the hub sends on it."""
    stream = hub._attach(agent_id, project)
    stream.greeted.set()
    sent: list[Any] = []

    def send(message: Any) -> bool:
        sent.append(message)
        return True

    stream.send = send  # type: ignore[method-assign]
    return sent


def _agent_reports(hub: AgentHub, agent_id: str, project: str,
                   result: agent_pb2.CommandResult) -> None:
    stream = hub._streams.get(agent_id) or hub._attach(agent_id, project)
    hub._on_result(stream, result)


def _cancelled_result(task_id: str) -> agent_pb2.CommandResult:
    err = errors.TaskCancelled("backup of vol: the backup was cancelled")
    return agent_pb2.CommandResult(task_id=task_id, success=False, error_code=err.code,
                                   error_message=err.message)


def _cancel(app: App, hub: AgentHub, project: str, task_id: str) -> Task:
    """What CancelTask does: the rules in one transaction, then the agent asked."""
    with app.db.begin() as s:
        task = tasks.request_cancel(s, project, task_id, NOW)
        agent_id, running = task.agent_id, task.status == "running"
        if not running:
            hub.end_cancelled(s, task_id, tasks.CANCELLED_BEFORE_START)
    if running:
        hub.cancel_running(agent_id, task_id)
    with app.db.begin() as s:
        return tasks.get_task(s, project, task_id)


def _disk_backup_task(app: App, project: str, inventory: Inventory) -> tuple[str, str]:
    vol = inventory.add("vol", "disk")
    vid = make_vault(app, project, object_type="disk")
    add(app, project, vid, vol)
    _, [d] = _checkpoint(app, project, vid, {inventory.agent_id})
    return d.task_id, vid


def _backups_of(app: App, vault_id: str) -> list[tuple[str, str]]:
    with app.db.begin() as s:
        return [(b.id, b.status) for b in s.query(Backup).filter(Backup.vault_id == vault_id)]


def _resource_status(app: App, vault_id: str) -> str:
    with app.db.begin() as s:
        row = s.query(VaultResource).filter(VaultResource.vault_id == vault_id).one()
        return row.protect_status


def test_a_waiting_backup_is_cancelled_at_once_and_leaves_no_backup(
        app: App, project: str, inventory: Inventory, hub: AgentHub) -> None:
    task_id, vid = _disk_backup_task(app, project, inventory)
    assert [status for _, status in _backups_of(app, vid)] == ["protecting"]
    task = _cancel(app, hub, project, task_id)
    assert task.status == "cancelled"
    assert task.error_code == errors.TaskCancelled.code
    assert task.extra_info["cancelled"] == tasks.CANCELLED_BEFORE_START
    assert _backups_of(app, vid) == []
    assert _resource_status(app, vid) == "available"
    # Never sent afterwards: the agent's next Hello does not pick it up.
    sent = _connected(hub, inventory.agent_id, project)
    assert hub.dispatch(inventory.agent_id, task_id) is False
    assert sent == []


def test_a_finished_task_is_refused_with_a_failed_precondition_code(
        app: App, project: str, inventory: Inventory, hub: AgentHub) -> None:
    task_id, _ = _disk_backup_task(app, project, inventory)
    with app.db.begin() as s:
        tasks.finish_task(s, task_id, "failed", NOW, error_code="x")
    with pytest.raises(errors.TaskAlreadyFinished) as refused, app.db.begin() as s:
        tasks.request_cancel(s, project, task_id, NOW)
    assert refused.value.status.name == "FAILED_PRECONDITION"
    assert "already ended failed" in refused.value.message


def test_another_accounts_task_is_not_found(
        app: App, project: str, inventory: Inventory, hub: AgentHub) -> None:
    task_id, vid = _disk_backup_task(app, project, inventory)
    with pytest.raises(errors.ResourceNotFound), app.db.begin() as s:
        tasks.request_cancel(s, "someone-else", task_id, NOW)
    assert [status for _, status in _backups_of(app, vid)] == ["protecting"]


def test_the_controllers_own_maintenance_tasks_are_not_cancellable(
        app: App, project: str, inventory: Inventory, hub: AgentHub) -> None:
    backup_id = _available_disk_backup(app, project, inventory)
    with app.db.begin() as s:
        delete_id = deletions.start_delete(s, project, backup_id, NOW).id
    with pytest.raises(errors.TaskNotCancellable) as refused, app.db.begin() as s:
        tasks.request_cancel(s, project, delete_id, NOW)
    assert "delete task" in refused.value.message
    assert refused.value.status.name == "FAILED_PRECONDITION"


def test_a_running_backup_ends_cancelled_when_its_agent_confirms_and_no_backup_stays(
        app: App, project: str, inventory: Inventory, hub: AgentHub) -> None:
    task_id, vid = _disk_backup_task(app, project, inventory)
    sent = _connected(hub, inventory.agent_id, project)
    assert hub.dispatch(inventory.agent_id, task_id)
    task = _cancel(app, hub, project, task_id)
    assert task.status == "running" and "cancel_requested_at" in task.extra_info
    assert [m.cancel.task_id for m in sent if m.WhichOneof("message") == "cancel"] == [task_id]
    _agent_reports(hub, inventory.agent_id, project, _cancelled_result(task_id))
    with app.db.begin() as s:
        task = tasks.get_task(s, project, task_id)
        assert (task.status, task.extra_info["cancelled"]) == ("cancelled",
                                                               tasks.CANCELLED_BY_AGENT)
        vault = s.get(Vault, vid)
        assert vault is not None and vault.used_bytes == 0
    assert _backups_of(app, vid) == []
    assert _resource_status(app, vid) == "available"
    # A second cancel of the ended task is refused.
    with pytest.raises(errors.TaskAlreadyFinished), app.db.begin() as s:
        tasks.request_cancel(s, project, task_id, NOW)


def test_an_offline_agents_task_is_cancelled_without_it_and_its_late_result_is_ignored(
        app: App, project: str, inventory: Inventory, hub: AgentHub) -> None:
    task_id, vid = _disk_backup_task(app, project, inventory)
    with app.db.begin() as s:
        tasks.start_task(s, task_id, NOW)  # sent before the agent went away
    task = _cancel(app, hub, project, task_id)
    assert (task.status, task.extra_info["cancelled"]) == ("cancelled",
                                                           tasks.CANCELLED_BY_CONTROLLER)
    # The agent may still write its manifest: the backup is error (deleting
    # it removes that too), never protecting or available.
    [(backup_id, status)] = _backups_of(app, vid)
    assert status == "error"
    # Its journaled success, resent after a reconnect, changes nothing.
    result = agent_pb2.CommandResult(task_id=task_id, success=True)
    result.backup.backups.add(backup_id=backup_id, stored_bytes=5000)
    _agent_reports(hub, inventory.agent_id, project, result)
    with app.db.begin() as s:
        assert tasks.get_task(s, project, task_id).status == "cancelled"
        vault = s.get(Vault, vid)
        assert vault is not None and vault.used_bytes == 0
    assert _backups_of(app, vid) == [(backup_id, "error")]


def test_an_agent_silent_past_the_grace_period_does_not_keep_the_task_open(
        app: App, project: str, inventory: Inventory, hub: AgentHub) -> None:
    task_id, vid = _disk_backup_task(app, project, inventory)
    _connected(hub, inventory.agent_id, project)
    assert hub.dispatch(inventory.agent_id, task_id)
    hub.cancel_grace_s = 3600.0
    assert _cancel(app, hub, project, task_id).status == "running"
    assert hub.end_overdue_cancels() == 0
    hub._cancels = dict.fromkeys(hub._cancels, 0.0)  # the grace period has passed
    assert hub.end_overdue_cancels() == 1
    with app.db.begin() as s:
        task = tasks.get_task(s, project, task_id)
        assert (task.status, task.extra_info["cancelled"]) == ("cancelled",
                                                               tasks.CANCELLED_BY_CONTROLLER)
    assert [status for _, status in _backups_of(app, vid)] == ["error"]
    # The agent's cancelled result, late, is ignored too.
    _agent_reports(hub, inventory.agent_id, project, _cancelled_result(task_id))
    with app.db.begin() as s:
        assert tasks.get_task(s, project, task_id).extra_info["cancelled"] == \
            tasks.CANCELLED_BY_CONTROLLER


def test_a_hello_from_an_agent_still_running_a_cancelled_task_tells_it_to_stop(
        app: App, project: str, inventory: Inventory, hub: AgentHub) -> None:
    task_id, _ = _disk_backup_task(app, project, inventory)
    with app.db.begin() as s:
        tasks.start_task(s, task_id, NOW)
    _cancel(app, hub, project, task_id)  # offline: cancelled without it
    sent = _connected(hub, inventory.agent_id, project)
    stream = hub._streams[inventory.agent_id]
    hub._on_hello(stream, agent_pb2.Hello(agent_id=inventory.agent_id,
                                          running_task_ids=[task_id]))
    assert [m.cancel.task_id for m in sent if m.WhichOneof("message") == "cancel"] == [task_id]


def test_a_cancelled_restore_gives_the_backup_back(
        app: App, project: str, inventory: Inventory, hub: AgentHub) -> None:
    backup_id = _available_disk_backup(app, project, inventory)
    with app.db.begin() as s:
        restore_id = restores.create_restore(s, project, restores.RestoreRequest(backup_id), NOW,
                                             {inventory.agent_id}).task_id
    _connected(hub, inventory.agent_id, project)
    assert hub.dispatch(inventory.agent_id, restore_id)
    assert _cancel(app, hub, project, restore_id).status == "running"
    _agent_reports(hub, inventory.agent_id, project, _cancelled_result(restore_id))
    with app.db.begin() as s:
        assert tasks.get_task(s, project, restore_id).status == "cancelled"
        backup = s.get(Backup, backup_id)
        assert backup is not None and backup.status == "available"


def test_a_cancelled_replication_fails_its_record_saying_it_was_cancelled(
        app: App, project: str, inventory: Inventory, hub: AgentHub) -> None:
    backup_id = _available_disk_backup(app, project, inventory)
    with app.db.begin() as s:
        record = ReplicationRecord(project_id=project, status=ReplicationStatus.REPLICATING,
                                   source_backup_id=backup_id, extra_info={"side": "source"},
                                   created_at=NOW, updated_at=NOW)
        s.add(record)
        s.flush()
        command = agent_pb2.Command(replicate=agent_pb2.ReplicateCommand(
            backup_id=backup_id, replication_record_id=record.id))
        task_id = tasks.create_task(
            s, project_id=project, operation_type=OperationType.REPLICATION, now=NOW,
            agent_id=inventory.agent_id, command=command,
            extra_info={"replication_record_id": record.id, "side": "source"}).id
        record_id = record.id
    with app.db.begin() as s:
        tasks.start_task(s, task_id, NOW)
    _connected(hub, inventory.agent_id, project)
    assert _cancel(app, hub, project, task_id).status == "running"
    _agent_reports(hub, inventory.agent_id, project, _cancelled_result(task_id))
    with app.db.begin() as s:
        assert tasks.get_task(s, project, task_id).status == "cancelled"
        row = s.get(ReplicationRecord, record_id)
        assert row is not None and row.status == "fail"
        assert row.extra_info["fail_code"] == errors.TaskCancelled.code
        assert "cancelled" in row.extra_info["fail_reason"].lower()


def test_a_cancel_asked_while_the_agent_reconnects_is_asked_again_or_ends_the_lost_task(
        app: App, project: str, inventory: Inventory, hub: AgentHub) -> None:
    task_id, vid = _disk_backup_task(app, project, inventory)
    _connected(hub, inventory.agent_id, project)
    assert hub.dispatch(inventory.agent_id, task_id)
    assert _cancel(app, hub, project, task_id).status == "running"
    # The agent reconnects, still running it: it is told again.
    sent = _connected(hub, inventory.agent_id, project)
    hub._on_hello(hub._streams[inventory.agent_id], agent_pb2.Hello(
        agent_id=inventory.agent_id, running_task_ids=[task_id]))
    assert [m.cancel.task_id for m in sent if m.WhichOneof("message") == "cancel"] == [task_id]
    # It reconnects again without it (its process died): the task ends
    # cancelled, not failed, and its backup is error (a manifest may exist).
    _connected(hub, inventory.agent_id, project)
    hub._on_hello(hub._streams[inventory.agent_id], agent_pb2.Hello(
        agent_id=inventory.agent_id))
    with app.db.begin() as s:
        task = tasks.get_task(s, project, task_id)
        assert (task.status, task.extra_info["cancelled"]) == ("cancelled",
                                                               tasks.CANCELLED_BY_CONTROLLER)
    assert [status for _, status in _backups_of(app, vid)] == ["error"]


def _held_elsewhere(app: App, inventory: Inventory, project: str, task_id: str
                    ) -> tuple[AgentHub, list[Any]]:
    """Another controller on the same database holds the agent's stream and
    sent it the task; its flush recorded the agent connected."""
    other = AgentHub(app)
    jobs.install(other, app)
    sent = _connected(other, inventory.agent_id, project)
    assert other.dispatch(inventory.agent_id, task_id)
    with app.db.begin() as s:
        agent = s.get(Agent, inventory.agent_id)
        assert agent is not None
        agent.connected, agent.last_seen_at = True, app.clock.now()
    return other, sent


def test_a_cancel_asked_on_another_controller_reaches_the_agent_through_its_own(
        app: App, project: str, inventory: Inventory, hub: AgentHub) -> None:
    task_id, vid = _disk_backup_task(app, project, inventory)
    other, sent = _held_elsewhere(app, inventory, project, task_id)
    try:
        with app.db.begin() as s:
            tasks.request_cancel(s, project, task_id, app.clock.now())
        assert hub.cancel_running(inventory.agent_id, task_id) is False
        assert hub.send_cancels() == 0  # not its agent, and not overdue
        with app.db.begin() as s:
            assert tasks.get_task(s, project, task_id).status == "running"
        assert other.send_cancels() == 1
        assert [m.cancel.task_id for m in sent
                if m.WhichOneof("message") == "cancel"] == [task_id]
        assert other.send_cancels() == 0  # asked once
        _agent_reports(other, inventory.agent_id, project, _cancelled_result(task_id))
        with app.db.begin() as s:
            assert tasks.get_task(s, project, task_id).extra_info["cancelled"] == \
                tasks.CANCELLED_BY_AGENT
        assert _backups_of(app, vid) == []
    finally:
        other._executor.shutdown(wait=False)


def test_a_cancel_no_controller_carries_out_ends_the_task_after_twice_the_grace_period(
        app: App, project: str, inventory: Inventory, hub: AgentHub) -> None:
    task_id, vid = _disk_backup_task(app, project, inventory)
    other, _ = _held_elsewhere(app, inventory, project, task_id)
    other._executor.shutdown(wait=False)  # that controller is gone
    long_ago = app.clock.now() - dt.timedelta(seconds=2 * hub.cancel_grace_s + 1)
    with app.db.begin() as s:
        tasks.request_cancel(s, project, task_id, long_ago)
    assert hub.send_cancels() == 1
    with app.db.begin() as s:
        task = tasks.get_task(s, project, task_id)
        assert (task.status, task.extra_info["cancelled"]) == ("cancelled",
                                                               tasks.CANCELLED_BY_CONTROLLER)
    assert [status for _, status in _backups_of(app, vid)] == ["error"]
