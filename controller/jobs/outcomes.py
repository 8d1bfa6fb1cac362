"""What the end of each command changes in the catalog, keyed by its action.

The hub runs these in the transaction that first ends a task (never for a
result delivered twice), with the command's typed result, or None when the
task failed without one (lost with its agent, refused before it was sent).
What must wait for that transaction (retention's deletions, a follow-up
replication) starts after it commits.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import event
from sqlalchemy.orm import Session

from cbr.v1 import agent_pb2
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


def register(hub: AgentHub, app: App) -> None:
    def backup_done(session: Session, task: Task,
                    result: agent_pb2.CommandResult | None) -> None:
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
                     _result: agent_pb2.CommandResult | None) -> None:
        restores.finish_restore(session, task, task.status == TaskStatus.SUCCESS,
                                app.clock.now())
        images.finish_image(session, task, app.clock.now())

    def import_done(session: Session, task: Task,
                    result: agent_pb2.CommandResult | None) -> None:
        """This cloud is the target: the importer's end adds the replica."""
        imports.finish_import(session, task, commands.typed_result(result, "import"),
                              app.clock.now())

    def transfer_done(session: Session, task: Task,
                      result: agent_pb2.CommandResult | None) -> None:
        """This cloud is the source: the target is asked to confirm the replica."""
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
