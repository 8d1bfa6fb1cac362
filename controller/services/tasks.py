"""Tasks: the record of every asynchronous operation, with its state machine.

waiting -> running -> success | failed | skipped | timeout (``TaskStatus``). A
final status never changes again, so a command result that arrives twice (an
agent resending after a reconnect) is applied once.
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
                            TaskStatus.TIMEOUT})
FINAL_MESSAGES = {TaskStatus.SUCCESS: "finished", TaskStatus.FAILED: "failed",
                  TaskStatus.SKIPPED: "skipped", TaskStatus.TIMEOUT: "timed out"}
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


@dataclass(frozen=True)
class TaskFilter:
    operation_type: str = ""
    status: str = ""
    vault_id: str = ""
    resource_id: str = ""
    checkpoint_id: str = ""
    policy_id: str = ""


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
                           rows=True)


def count(session: Session, stmt: Select[Any]) -> int:
    return int(session.scalar(select(func.count()).select_from(stmt.subquery())) or 0)
