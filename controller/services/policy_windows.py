"""A scheduled backup run's start and completion windows (AWS Backup's
StartWindowMinutes and CompletionWindowMinutes), and its retries.

A run is due at its scheduled time. Until its start window closes, each
resource of the vault that has not backed up in this run is started again
when it can be: a failed backup after a backoff (at most ``MAX_ATTEMPTS``
tries in all), a resource skipped because its agent was offline once the
agent is back. Each retry is a new task in the run's checkpoint, its
``extra_info`` naming the run (``policy_run_id``) and the ``attempt``.

When the start window closes, tasks that never reached their agent are
stopped, and a run none of whose backups ever started is recorded
``missed`` (once, with its event). A backup still running when the
completion window closes is stopped through :func:`stop_task`.

The policy loop's leader calls :func:`sweep` every few seconds; runs whose
windows are over and judged are marked ``settled`` and not read again.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from cbr import errors
from controller.persistence.models import Checkpoint, Policy, PolicyRun, Task, Vault
from controller.persistence.vocabulary import (
    EventType,
    OperationType,
    PolicyRunStatus,
    TaskStatus,
)
from controller.services import events, runs, tasks

log = logging.getLogger("cbr.controller.policies")

MAX_ATTEMPTS = 3
"""Tries of one resource's backup in one run: the first and two retries."""
RETRY_DELAYS = (dt.timedelta(minutes=2), dt.timedelta(minutes=8))
"""Wait after the first and the second failure before trying again."""
SWEEP_BATCH = 5000
"""Unsettled runs read per sweep (oldest first), so a backlog is bounded work."""
_IN_CHUNK = 500


@dataclass(frozen=True)
class Windows:
    start: dt.timedelta
    completion: dt.timedelta


def windows_of(policy: Policy, tick: float = 0.0) -> Windows:
    """A policy's windows; under the test-only ``scheduler_tick`` a run's start
    window is one tick (the next run is due then)."""
    start = dt.timedelta(minutes=policy.start_window_minutes)
    if tick > 0:
        start = dt.timedelta(seconds=tick)
    return Windows(start, dt.timedelta(minutes=policy.completion_window_minutes))


def stop_task(session: Session, task: Task, reason: str, now: dt.datetime) -> Task | None:
    """Stops a backup task of a policy run: it ends as ``timeout`` with
    ``reason`` and its backups become ``error`` (never visible as done);
    the caller then asks the agent to stop (``SweepResult.running``), and
    its late result is ignored, the task being final. The one place a run's
    task is stopped."""
    done = tasks.finish_task(session, task.id, TaskStatus.TIMEOUT, now,
                             error_code=errors.PolicyWindowClosed.code, error_message=reason)
    if done is not None and done.operation_type == OperationType.BACKUP:
        runs.finish_backup(session, done, False, None, now)
    return done


@dataclass
class SweepResult:
    dispatches: list[runs.Dispatch] = field(default_factory=list)
    missed: list[int] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    # (agent_id, task_id) of the stopped tasks their agent was running: the
    # caller asks each agent to stop after the commit.
    running: list[tuple[str, str]] = field(default_factory=list)


def _attempt_delay(attempts: int) -> dt.timedelta:
    return RETRY_DELAYS[min(attempts, len(RETRY_DELAYS)) - 1]


def sweep(session: Session, now: dt.datetime, online: set[str],
          tick: float = 0.0) -> SweepResult:
    """One pass over the unsettled scheduled backup runs (see the module
    docstring). The caller commits, then sends ``dispatches``.

    Most runs need nothing on most passes (their backups are running or
    done, their windows open): their tasks' states are read in one query
    per batch of checkpoints, and only the runs with something to do are
    loaded whole."""
    result = SweepResult()
    rows = session.execute(
        select(PolicyRun, Policy).join(Policy, Policy.id == PolicyRun.policy_id)
        .where(PolicyRun.settled.is_(False)).order_by(PolicyRun.scheduled_at)
        .limit(SWEEP_BATCH)).all()
    states = _task_states(session, [run.checkpoint_id for run, _p in rows if run.checkpoint_id])
    for run, policy in rows:
        windows = windows_of(policy, tick)
        if _needs_work(run, windows, states.get(run.checkpoint_id), now):
            _sweep_run(session, run, policy, windows, now, online, result)
    return result


@dataclass(frozen=True)
class _TaskState:
    resource_id: str
    status: str
    ended_at: dt.datetime | None


@dataclass
class _RunState:
    skipped: bool = False
    tasks: list[_TaskState] = field(default_factory=list)


def _task_states(session: Session, checkpoint_ids: list[str]) -> dict[str, _RunState]:
    out: dict[str, _RunState] = {}
    for start in range(0, len(checkpoint_ids), _IN_CHUNK):
        chunk = checkpoint_ids[start:start + _IN_CHUNK]
        for cp_id, skipped in session.execute(select(
                Checkpoint.id, Checkpoint.skipped_resources).where(Checkpoint.id.in_(chunk))):
            out[cp_id] = _RunState(skipped=bool(skipped))
        for row in session.execute(select(
                Task.checkpoint_id, Task.resource_id, Task.status, Task.ended_at).where(
                Task.checkpoint_id.in_(chunk), Task.operation_type == OperationType.BACKUP)
                .order_by(Task.created_at)):
            out.setdefault(row.checkpoint_id, _RunState()).tasks.append(
                _TaskState(row.resource_id, row.status, row.ended_at))
    return out


def _needs_work(run: PolicyRun, windows: Windows, state: _RunState | None,
                now: dt.datetime) -> bool:
    if run.status != PolicyRunStatus.DISPATCHED or state is None:
        return True  # settles it
    if now >= run.scheduled_at + windows.start:
        return True  # a window closed: judge the run
    if state.skipped:
        return True  # a resource that did not start may start now
    tried: dict[str, list[_TaskState]] = {}
    for t in state.tasks:
        tried.setdefault(t.resource_id, []).append(t)
    return any(ts[-1].status == TaskStatus.FAILED and len(ts) < MAX_ATTEMPTS
               and now >= (ts[-1].ended_at or now) + _attempt_delay(len(ts))
               for ts in tried.values())


def _sweep_run(session: Session, run: PolicyRun, policy: Policy, windows: Windows,
               now: dt.datetime, online: set[str], result: SweepResult) -> None:
    if run.status != PolicyRunStatus.DISPATCHED or not run.checkpoint_id:
        run.settled = True
        return
    checkpoint = session.get(Checkpoint, run.checkpoint_id)
    vault = session.get(Vault, run.vault_id)
    if checkpoint is None or vault is None:
        run.settled = True
        return
    run_tasks = list(session.scalars(select(Task).where(
        Task.checkpoint_id == checkpoint.id, Task.operation_type == OperationType.BACKUP)
        .order_by(Task.created_at)))
    start_closes = run.scheduled_at + windows.start
    completion_closes = run.scheduled_at + windows.completion
    if now >= completion_closes:
        for task in run_tasks:
            was_running = task.status == TaskStatus.RUNNING and bool(task.agent_id)
            if task.status in tasks.OPEN_STATUSES and stop_task(
                    session, task, f"The backup was still running when the policy's "
                    f"completion window ({policy.completion_window_minutes} minutes after "
                    f"the run's time {run.scheduled_at.isoformat()}) closed; it was stopped.",
                    now) is not None:
                result.stopped.append(task.id)
                if was_running:
                    result.running.append((task.agent_id, task.id))
        run.settled = True
        return
    if now < start_closes:
        _retry(session, run, checkpoint, vault, run_tasks, now, online, result)
        return
    # The start window is closed: what never reached its agent will not now.
    if not run_tasks and not checkpoint.skipped_resources:
        run.settled = True  # the vault had nothing to back up: nothing was missed
        return
    started = [t for t in run_tasks if t.status != TaskStatus.WAITING]
    for task in run_tasks:
        if task.status == TaskStatus.WAITING and stop_task(
                session, task, f"The backup did not start within the policy's start window "
                f"({policy.start_window_minutes} minutes after "
                f"{run.scheduled_at.isoformat()}): its agent did not take it.",
                now) is not None:
            result.stopped.append(task.id)
    if not started:
        _missed(session, run, policy, checkpoint, now)
        result.missed.append(run.id)
        run.settled = True
        return
    if not any(t.status in tasks.OPEN_STATUSES for t in run_tasks):
        run.settled = True


def _retry(session: Session, run: PolicyRun, checkpoint: Checkpoint, vault: Vault,
           run_tasks: list[Task], now: dt.datetime, online: set[str],
           result: SweepResult) -> None:
    """Starts again, within the start window, each resource whose backup in
    this run failed (after its backoff, up to MAX_ATTEMPTS) or never started
    (its agent offline or the resource busy at the run's time)."""
    by_resource: dict[str, list[Task]] = {}
    for task in run_tasks:
        by_resource.setdefault(task.resource_id, []).append(task)
    for resource in vault.resources:
        protectable = resource.protectable
        tried = by_resource.get(protectable.id, [])
        if tried:
            last = tried[-1]
            if last.status != TaskStatus.FAILED or len(tried) >= MAX_ATTEMPTS:
                continue  # running, done, stopped, or out of tries
            if now < (last.ended_at or now) + _attempt_delay(len(tried)):
                continue
        if protectable.gone or protectable.error or protectable.agent_id not in online:
            continue
        if runs.busy_backup(session, protectable.id) is not None:
            continue
        try:
            dispatch = runs.restart_resource(session, checkpoint, resource, now=now,
                                             full=run.full)
        except errors.CbrError as exc:
            # The vault no longer takes backups (frozen, full, its key
            # disabled): nothing of this run starts again; the run says why.
            run.detail = f"not started again: {exc.code}: {exc.message}"[:2000]
            return
        made = session.get(Task, dispatch.task_id)
        if made is not None:
            made.policy_id = run.policy_id
            made.extra_info = {**made.extra_info, "policy_run_id": run.id,
                               "attempt": len(tried) + 1}
        log.info("policy %s run at %s on vault %s: %s of %s (task %s)", run.policy_id,
                 run.scheduled_at.isoformat(), run.vault_id,
                 f"retry {len(tried)}" if tried else "late start", protectable.name,
                 dispatch.task_id)
        result.dispatches.append(dispatch)


def _missed(session: Session, run: PolicyRun, policy: Policy, checkpoint: Checkpoint,
            now: dt.datetime) -> None:
    why = "; ".join(f"{s.get('resource_name') or s.get('resource_id', '')}: "
                    f"{s.get('reason', '')}" for s in checkpoint.skipped_resources or [])
    run.status = PolicyRunStatus.MISSED
    run.detail = (f"no backup started within the start window "
                  f"({policy.start_window_minutes} minutes)"
                  + (f": {why}" if why else ""))[:2000]
    missed_event(session, policy, run.vault_id, run.scheduled_at, run.detail, now)
    log.warning("policy %s run at %s on vault %s missed: %s", policy.id,
                run.scheduled_at.isoformat(), run.vault_id, run.detail)


def missed_event(session: Session, policy: Policy, vault_id: str, scheduled_at: dt.datetime,
                 detail: str, now: dt.datetime) -> None:
    """The event of one missed run (one per policy, vault and scheduled time:
    the caller records the run's row first, which is unique on those)."""
    events.record(session, project_id=policy.project_id, event_type=EventType.POLICY_RUN_MISSED,
                  now=now, summary=f"The run of policy {policy.name} at "
                  f"{scheduled_at.isoformat()} on vault {vault_id} was missed: {detail}",
                  resource_type="policy", resource_id=policy.id, resource_name=policy.name,
                  details={"vault_id": vault_id, "scheduled_at": scheduled_at.isoformat(),
                           "operation_type": policy.operation_type})
