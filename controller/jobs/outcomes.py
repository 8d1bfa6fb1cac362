"""What the end of each command changes in the catalog, keyed by its action.

The hub runs these in the transaction that first ends a task (never for a
result delivered twice), with the command's typed result, or None when the
task failed without one (lost with its agent, refused before it was sent).
What must wait for that transaction (retention's deletions, a follow-up
replication) starts after it commits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session

from cbr.v1 import agent_pb2
from controller import metrics
from controller.agents.hub import AgentHub
from controller.app import App
from controller.jobs.maintenance import Maintenance
from controller.persistence.models import Checkpoint, Task
from controller.persistence.vocabulary import TaskStatus
from controller.services import (
    commands,
    images,
    imports,
    policy_runs,
    replication,
    restores,
    runs,
    tasks,
)


def _after_commit(session: Session, then: Callable[[], object]) -> None:
    event.listen(session, "after_commit", lambda _s: then(), once=True)


def _counted(session: Session, task: Task, operation: str, typed: Any) -> None:
    """Counts the ended operation in the metrics once its end is committed
    (a rolled-back end is not counted; a result delivered twice never runs
    the handlers again)."""
    started = task.started_at or task.created_at
    seconds = (task.ended_at - started).total_seconds() if task.ended_at and started else 0.0
    figures: dict[str, int] = {}
    if isinstance(typed, agent_pb2.BackupResult):
        figures = {"read": typed.bytes_scanned, "new": typed.bytes_new,
                   "stored": typed.bytes_sent, "wire": typed.bytes_sent}
    elif isinstance(typed, agent_pb2.RestoreResult):
        figures = {"read": typed.bytes_read, "stored": typed.bytes_restored}
    elif isinstance(typed, agent_pb2.ReplicateResult):
        figures = {"read": typed.bytes_total, "new": typed.bytes_new,
                   "stored": typed.bytes_stored, "wire": typed.wire_bytes}
    elif isinstance(typed, agent_pb2.ImportResult):
        figures = {"stored": typed.bytes_stored}
    end = metrics.Ended(operation, task.status == TaskStatus.SUCCESS, seconds, **figures)
    _after_commit(session, lambda: metrics.operation_ended(end))


def register(hub: AgentHub, app: App) -> None:
    def backup_done(session: Session, task: Task,
                    result: agent_pb2.CommandResult | None) -> None:
        _counted(session, task, "backup", commands.typed_result(result, "backup"))
        now = app.clock.now()
        if task.status == TaskStatus.CANCELLED:
            runs.cancel_backup(session, task, task.extra_info.get("cancelled") in (
                tasks.CANCELLED_BEFORE_START, tasks.CANCELLED_BY_AGENT), now)
            return
        runs.finish_backup(session, task, task.status == TaskStatus.SUCCESS,
                           commands.typed_result(result, "backup"), now)
        if task.status != TaskStatus.SUCCESS:
            return
        # Retention after each successful automatic backup; the deletions
        # start once this transaction (which marks them) is committed.
        deletions = policy_runs.apply_retention(session, task, now)
        maintenance = app.maintenance
        if deletions and maintenance is not None:
            def start_deletions(jobs: Maintenance = maintenance) -> None:
                for task_id in deletions:
                    jobs.submit(task_id)

            _after_commit(session, start_deletions)
        checkpoint = session.get(Checkpoint, task.checkpoint_id)
        follow = policy_runs.replication_policy_of(session, task.vault_id) \
            if checkpoint is not None and checkpoint.auto_trigger else None
        replicator = app.replicator
        if follow is not None and replicator is not None:
            project_id, vault_id, policy_id = task.project_id, task.vault_id, follow.id
            _after_commit(session,
                          lambda: replicator.follow_backup(project_id, vault_id, policy_id))

    def restore_done(session: Session, task: Task,
                     result: agent_pb2.CommandResult | None) -> None:
        _counted(session, task, "restore", commands.typed_result(result, "restore"))
        restores.finish_restore(session, task, task.status == TaskStatus.SUCCESS,
                                app.clock.now())
        images.finish_image(session, task, app.clock.now())

    def import_done(session: Session, task: Task,
                    result: agent_pb2.CommandResult | None) -> None:
        """This cloud is the target: the importer's end adds the replica."""
        _counted(session, task, "import", commands.typed_result(result, "import"))
        imports.finish_import(session, task, commands.typed_result(result, "import"),
                              app.clock.now())

    def transfer_done(session: Session, task: Task,
                      result: agent_pb2.CommandResult | None) -> None:
        """This cloud is the source: the target is asked to confirm the replica."""
        _counted(session, task, "replication", commands.typed_result(result, "replicate"))
        record = replication.transfer_done(session, task,
                                           commands.typed_result(result, "replicate"),
                                           app.clock.now())
        replicator = app.replicator
        if record is not None and replicator is not None:
            _after_commit(session, replicator.wake)

    hub.register_result_handler("backup", backup_done)
    hub.register_result_handler("restore", restore_done)
    hub.register_result_handler("import", import_done)
    hub.register_result_handler("replicate", transfer_done)
