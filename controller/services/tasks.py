"""Tasks: the record of every asynchronous operation, with its state machine.

waiting -> running -> success | failed | skipped | timeout | cancelled
(``TaskStatus``). A final status never changes again, so a command result that
arrives twice (an agent resending after a reconnect), or the result of a task
cancelled meanwhile, is applied once or not at all.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Connection, Select, Table, bindparam, func, select
from sqlalchemy.orm import Session

from cbr import errors
from cbr.v1 import agent_pb2
from controller.persistence.models import Task
from controller.persistence.vocabulary import OperationType, TaskStatus
from controller.services import actions, commands, events, paging

FINAL_STATUSES = frozenset({TaskStatus.SUCCESS, TaskStatus.FAILED, TaskStatus.SKIPPED,
                            TaskStatus.TIMEOUT, TaskStatus.CANCELLED})
FINAL_MESSAGES = {TaskStatus.SUCCESS: "finished", TaskStatus.FAILED: "failed",
                  TaskStatus.SKIPPED: "skipped", TaskStatus.TIMEOUT: "timed out",
                  TaskStatus.CANCELLED: "cancelled"}
# Not final yet: waiting for its agent or worker, or running there.
OPEN_STATUSES = frozenset({TaskStatus.WAITING, TaskStatus.RUNNING})
_OPERATION_TYPES = frozenset(OperationType)


def create_task(
    session: Session,
    *,
    project_id: str,
    operation_type: OperationType,
    now: dt.datetime,
    status: TaskStatus = TaskStatus.WAITING,
    agent_id: str = "",
    vault_id: str = "",
    vault_name: str = "",
    resource_id: str = "",
    resource_name: str = "",
    checkpoint_id: str = "",
    policy_id: str = "",
    command: agent_pb2.Command | None = None,
    extra_info: dict[str, Any] | None = None,
) -> Task:
    if operation_type not in _OPERATION_TYPES:
        raise ValueError(f"unknown operation type {operation_type}")
    caller = actions.caller_or_none()
    task = Task(
        project_id=project_id,
        operation_type=operation_type,
        status=status,
        progress=100 if status in FINAL_STATUSES else 0,
        agent_id=agent_id,
        vault_id=vault_id,
        vault_name=vault_name,
        resource_id=resource_id,
        resource_name=resource_name,
        checkpoint_id=checkpoint_id,
        policy_id=policy_id,
        command=commands.stored(command) if command is not None else {},
        extra_info=extra_info or {},
        started_by_user_id=caller.user_id if caller is not None else "",
        started_by_access_key_id=caller.access_key_id if caller is not None else "",
        created_at=now,
        updated_at=now,
        started_at=now if status != TaskStatus.WAITING else None,
        ended_at=now if status in FINAL_STATUSES else None,
    )
    session.add(task)
    session.flush()
    return task


def get_task(session: Session, project_id: str, task_id: str) -> Task:
    task = session.get(Task, task_id)
    if task is None or task.project_id != project_id:
        raise errors.ResourceNotFound(f"No task with id {task_id!r}.", task_id=task_id)
    return task


TASK_COLUMNS = tuple(Task.__table__.c)
_tasks = cast(Table, Task.__table__)
# Built once: every GetTask and every tick of a WatchTask runs it.
_TASK_BY_ID = select(*_tasks.c).where(_tasks.c.id == bindparam("task_id"))


def change_stamps(conn: Session | Connection, task_ids: list[str]) -> dict[str, Any]:
    """When each task last changed, for watching many tasks with one query."""
    rows = conn.execute(select(_tasks.c.id, _tasks.c.updated_at)
                        .where(_tasks.c.id.in_(task_ids)))
    return {row.id: row.updated_at for row in rows}


def task_row(conn: Session | Connection, project_id: str, task_id: str) -> Any:
    """The task as a Core row, for read paths (see Database.read)."""
    row = conn.execute(_TASK_BY_ID, {"task_id": task_id}).first() if task_id else None
    if row is None or row.project_id != project_id:
        raise errors.ResourceNotFound(f"No task with id {task_id!r}.", task_id=task_id)
    return row


def start_task(session: Session, task_id: str, now: dt.datetime) -> Task | None:
    """Marks a waiting task running; None when it is already final."""
    task = session.get(Task, task_id, with_for_update=True)
    if task is None or task.status in FINAL_STATUSES:
        return None
    if task.status == TaskStatus.WAITING:
        task.status = TaskStatus.RUNNING
        task.started_at = now
        task.updated_at = now
    return task


def report_progress(
    session: Session, task_id: str, progress: int, now: dt.datetime, message: str = "",
    counters: dict[str, int] | None = None,
) -> Task | None:
    task = session.get(Task, task_id, with_for_update=True)
    if task is None or task.status in FINAL_STATUSES:
        return None
    if task.status == TaskStatus.WAITING:
        task.status = TaskStatus.RUNNING
        task.started_at = now
    task.progress = max(task.progress, min(99, max(0, progress)))
    if message or counters:
        task.extra_info = {**task.extra_info, **(counters or {}),
                           **({"message": message} if message else {})}
    task.updated_at = now
    return task


def finish_task(
    session: Session,
    task_id: str,
    status: TaskStatus,
    now: dt.datetime,
    *,
    error_code: str = "",
    error_message: str = "",
    extra_info: dict[str, Any] | None = None,
) -> Task | None:
    """Moves a task to a final status once; later calls return None."""
    if status not in FINAL_STATUSES:
        raise ValueError(f"{status} is not a final status")
    task = session.get(Task, task_id, with_for_update=True)
    if task is None or task.status in FINAL_STATUSES:
        return None
    task.status = status
    task.progress = 100
    task.error_code = error_code
    task.error_message = error_message
    final = {**task.extra_info, **(extra_info or {})}
    if "message" in task.extra_info and "message" not in (extra_info or {}):
        final["message"] = FINAL_MESSAGES[status]  # not the last "sending chunks"
    task.extra_info = final
    task.started_at = task.started_at or now
    task.ended_at = now
    task.updated_at = now
    events.task_finished(session, task, now)
    return task


# How a cancelled task was stopped, in its extra_info["cancelled"]: the
# handlers of its end (controller.jobs.outcomes) trust that nothing was
# written only when the command never reached an agent or the agent said so.
CANCELLED_BEFORE_START = "before_start"
CANCELLED_BY_AGENT = "by_agent"
CANCELLED_BY_CONTROLLER = "by_controller"
"""The agent did not confirm (offline, or silent past the grace period): it
may still finish what it was doing, so its work is not assumed undone."""


def request_cancel(session: Session, project_id: str, task_id: str,
                   now: dt.datetime) -> Task:
    """Checks that the caller's task may be cancelled and, for a running one,
    records when that was asked (the agent is told after the commit).

    Only tasks carrying an agent command stop: the controller's own
    maintenance (delete, prune, verify, repair) holds storage locks and
    edits the catalog in steps that must not be cut short."""
    task = get_task(session, project_id, task_id)
    session.refresh(task, with_for_update=True)
    if task.status in FINAL_STATUSES:
        raise errors.TaskAlreadyFinished(
            f"Task {task.id} already ended {task.status}.", task_id=task.id)
    if not task.command or not task.agent_id:
        raise errors.TaskNotCancellable(
            f"Task {task.id} is a {task.operation_type} task, which the controller runs "
            "itself and does not stop midway; only backup, restore, replication, import and "
            "sync tasks can be cancelled.", task_id=task.id)
    if task.status == TaskStatus.RUNNING and "cancel_requested_at" not in task.extra_info:
        task.extra_info = {**task.extra_info,
                           "cancel_requested_at": now.isoformat().replace("+00:00", "Z")}
        task.updated_at = now
    return task


def cancelled_error(how: str) -> tuple[str, str]:
    """The error code and message a cancelled task carries."""
    why = {CANCELLED_BEFORE_START: "before it was sent to its agent",
           CANCELLED_BY_AGENT: "and its agent stopped it",
           CANCELLED_BY_CONTROLLER: "and its agent did not confirm in time; what it was "
                                    "doing is not kept"}[how]
    err = errors.TaskCancelled(f"Cancelled by request, {why}.")
    return err.code, err.message


def finish_cancelled(session: Session, task_id: str, how: str, now: dt.datetime) -> Task | None:
    """Ends a task cancelled (once), saying how in its error and extra_info."""
    code, message = cancelled_error(how)
    return finish_task(session, task_id, TaskStatus.CANCELLED, now, error_code=code,
                       error_message=message, extra_info={"cancelled": how})


@dataclass(frozen=True)
class TaskFilter:
    operation_type: str = ""
    status: str = ""
    vault_id: str = ""
    resource_id: str = ""
    checkpoint_id: str = ""
    policy_id: str = ""
    newest_first: bool = False


def task_query(project_id: str, f: TaskFilter) -> Select[Any]:
    stmt = select(*TASK_COLUMNS).where(Task.project_id == project_id)
    for field in ("operation_type", "status", "vault_id", "resource_id", "checkpoint_id",
                  "policy_id"):
        value = getattr(f, field)
        if value:
            stmt = stmt.where(getattr(Task, field) == value)
    return stmt


def list_tasks(conn: Session | Connection, project_id: str, f: TaskFilter, page_size: int,
               page_token: str) -> tuple[Sequence[Any], str, int]:
    """A page of the account's tasks matching f, as Core rows (see Database.read)."""
    return paging.paginate(conn, task_query(project_id, f), Task, page_size, page_token,
                           rows=True, newest_first=f.newest_first)


def count(session: Session, stmt: Select[Any]) -> int:
    return int(session.scalar(select(func.count()).select_from(stmt.subquery())) or 0)
