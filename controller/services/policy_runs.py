"""Policy runs: a checkpoint per bound vault, at most once per scheduled time,
and retention after each successful automatic backup.

Exactly once rests on the database, not on the scheduler: a run inserts its
``PolicyRun`` row (unique on policy, vault and scheduled time) in the
transaction that creates its checkpoint. Another controller, a retried job
or a restart that fires the same run finds the row and does nothing.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cbr import errors
from cbr.repo.maintenance.subset import DataSubset, rotated
from controller.persistence.models import (
    Backup,
    Checkpoint,
    Policy,
    PolicyRun,
    Task,
    VaultPolicy,
)
from controller.persistence.vocabulary import (
    BackupStatus,
    ImageType,
    OperationType,
    PolicyOperationType,
    PolicyRunStatus,
)
from controller.services import (
    deletions,
    paging,
    policies,
    policy_windows,
    retention,
    runs,
    vaults,
)
from controller.services.schedule import Schedule

log = logging.getLogger("cbr.controller.policies")


def schedule_of(policy: Policy) -> Schedule:
    od = policy.operation_definition or {}
    return Schedule.of(list(policy.trigger_patterns or []), str(od.get("timezone", "")),
                       policy.created_at)


def next_runs(policy: Policy, after: dt.datetime, count: int) -> list[dt.datetime]:
    """The next ``count`` run times of an enabled policy (none when disabled)."""
    if not policy.enabled:
        return []
    schedule = schedule_of(policy)
    out: list[dt.datetime] = []
    when: dt.datetime | None = after
    while len(out) < count and when is not None:
        when = schedule.next_after(when)
        if when is not None:
            out.append(when)
    return out


@dataclass(frozen=True)
class PolicyView:
    """A policy as the API shows it: its row, its vaults and its next run times."""

    policy: Policy
    vault_ids: list[str]
    next_runs: list[dt.datetime]


def policy_view(session: Session, policy: Policy, now: dt.datetime, count: int) -> PolicyView:
    return PolicyView(policy, policies.vault_ids(session, policy.id),
                      next_runs(policy, now, count))


def list_runs(session: Session, project_id: str, policy_id: str, page_size: int,
              page_token: str, newest_first: bool = False
              ) -> tuple[Sequence[PolicyRun], str, int]:
    """A page of one policy's runs, oldest first unless asked."""
    policies.get_policy(session, project_id, policy_id)
    stmt = select(PolicyRun).where(PolicyRun.policy_id == policy_id)
    return paging.paginate(session, stmt, PolicyRun, page_size, page_token,
                           newest_first=newest_first)


def bound_vaults(session: Session, policy_id: str) -> list[str]:
    return list(session.scalars(select(VaultPolicy.vault_id).where(
        VaultPolicy.policy_id == policy_id).order_by(VaultPolicy.vault_id)))


@dataclass(frozen=True)
class RunOutcome:
    vault_id: str
    run_id: int
    checkpoint_id: str
    dispatches: list[runs.Dispatch]
    full: bool


def _full_due(session: Session, policy: Policy, vault_id: str) -> bool:
    """``full_backup_interval`` N: the first run and every Nth after it are full."""
    interval = int((policy.operation_definition or {}).get("full_backup_interval", -1) or -1)
    if interval <= 0:
        return False
    done = session.scalar(select(func.count()).select_from(PolicyRun).where(
        PolicyRun.policy_id == policy.id, PolicyRun.vault_id == vault_id,
        PolicyRun.status == PolicyRunStatus.DISPATCHED))
    return int(done or 0) % interval == 0


def claim_run(session: Session, policy: Policy, vault_id: str, scheduled_at: dt.datetime,
              *, now: dt.datetime, manual: bool, full: bool = False) -> PolicyRun | None:
    """The run's row, or None when another controller or an earlier try
    already made this run (the row is unique on policy, vault and time)."""
    # Only a scheduled backup run has windows to watch (policy_windows).
    windowed = not manual and policy.operation_type == PolicyOperationType.BACKUP
    run = PolicyRun(policy_id=policy.id, vault_id=vault_id, scheduled_at=scheduled_at,
                    status=PolicyRunStatus.DISPATCHED, manual=manual, full=full, checkpoint_id="",
                    detail="", settled=not windowed, created_at=now)
    try:
        with session.begin_nested():
            session.add(run)
            session.flush()
    except IntegrityError:
        return None
    return run


def run_on_vault(session: Session, policy: Policy, vault_id: str, scheduled_at: dt.datetime,
                 *, now: dt.datetime, online: set[str], manual: bool = False
                 ) -> RunOutcome | None:
    """One run of a backup policy on one vault; None if that run already
    happened (or is happening) anywhere. The caller commits."""
    full = _full_due(session, policy, vault_id)
    run = claim_run(session, policy, vault_id, scheduled_at, now=now, manual=manual, full=full)
    if run is None:
        return None
    try:
        checkpoint, dispatches = runs.create_checkpoint(
            session, policy.project_id, vault_id, [], name="", description="",
            full=full, now=now, online=online, auto_trigger=True, policy_id=policy.id)
    except errors.CbrError as exc:
        # The vault refuses backups now (full, frozen, its key disabled):
        # the run is recorded as skipped with the reason, and not retried.
        run.status = PolicyRunStatus.SKIPPED
        run.settled = True
        run.detail = f"{exc.code}: {exc.message}"
        log.warning("policy %s on vault %s at %s skipped: %s", policy.id, vault_id,
                    scheduled_at.isoformat(), run.detail)
        return RunOutcome(vault_id, run.id, "", [], full)
    run.checkpoint_id = checkpoint.id
    for d in dispatches:  # the run's first try of each resource (retries: policy_windows)
        task = session.get(Task, d.task_id)
        if task is not None:
            task.policy_id = policy.id
            task.extra_info = {**task.extra_info, "policy_run_id": run.id, "attempt": 1}
    skipped = checkpoint.skipped_resources or []
    if skipped:
        run.detail = "; ".join(f"{s.get('resource_id', '')}: {s.get('code', '')} "
                               f"{s.get('reason', '')}".strip() for s in skipped)
    return RunOutcome(vault_id, run.id, checkpoint.id, dispatches, full)


def record_missed(session: Session, policy_id: str, scheduled_at: dt.datetime,
                  now: dt.datetime, vault_ids: list[str] | None = None) -> int:
    """Records a run the controller could not make in its start window (it
    was down, or a later run was due first), once per vault (all bound vaults
    unless named), with its event; it is never run late. Returns how many
    vaults it was recorded for (not those another controller recorded)."""
    policy = session.get(Policy, policy_id)
    if policy is None:
        return 0
    detail = ("the controller did not run it within its start window "
              f"({policy.start_window_minutes} minutes) and runs are never made late")
    count = 0
    for vault_id in bound_vaults(session, policy_id) if vault_ids is None else vault_ids:
        try:
            with session.begin_nested():
                session.add(PolicyRun(
                    policy_id=policy_id, vault_id=vault_id, scheduled_at=scheduled_at,
                    status=PolicyRunStatus.MISSED, manual=False, full=False, checkpoint_id="",
                    detail=detail, settled=True, created_at=now))
                session.flush()
                policy_windows.missed_event(session, policy, vault_id, scheduled_at, detail,
                                            now)
            count += 1
        except IntegrityError:
            continue
    return count


def start_maintenance(session: Session, policy: Policy, vault_id: str, run: PolicyRun,
                      now: dt.datetime) -> str:
    """The task of one run of a verify or prune policy (the run is claimed).

    A verify with ``read_data_subset`` n/t reads part ((k-1) mod t)+1 on
    the policy's k-th run on the vault, so t runs read every pack once
    whatever n was given; a percentage is drawn anew each run."""
    od = policy.operation_definition or {}
    options: dict[str, object] = {"policy_run_id": run.id}
    operation = OperationType.PRUNE
    if policy.operation_type == PolicyOperationType.VERIFY:
        operation = OperationType.VERIFY
        options["read_data"] = bool(od.get("read_data", False))
        text = str(od.get("read_data_subset", "") or "")
        if text:
            k = int(session.scalar(select(func.count()).select_from(PolicyRun).where(
                PolicyRun.policy_id == policy.id, PolicyRun.vault_id == vault_id,
                PolicyRun.status == PolicyRunStatus.DISPATCHED)) or 1)
            options["read_data_subset"] = str(rotated(DataSubset.parse(text), k))
            options["read_data"] = True
    task_id = vaults.start_maintenance(session, policy.project_id, vault_id, operation, now,
                                       **options)
    task = session.get(Task, task_id)
    if task is not None:
        task.policy_id = policy.id
    run.task_id = task_id
    run.detail = (f"reads part {options['read_data_subset']} of the data"
                  if "read_data_subset" in options else "")
    return task_id


def apply_retention(session: Session, task: Task, now: dt.datetime) -> list[str]:
    """After an automatic backup succeeded: starts deleting what its policy's
    retention rules expire for that resource. Returns the delete task ids
    (the caller hands them to maintenance once committed)."""
    backup_id = str(task.extra_info.get("backup_id", ""))
    backup = session.get(Backup, backup_id)
    if backup is None or backup.status != BackupStatus.AVAILABLE:
        return []
    checkpoint = session.get(Checkpoint, backup.checkpoint_id)
    if checkpoint is None or not checkpoint.auto_trigger or not checkpoint.policy_id:
        return []
    policy = session.get(Policy, checkpoint.policy_id)
    if policy is None:
        return []
    od = dict(policy.operation_definition or {})
    rows = session.execute(select(
        Backup.id, Backup.resource_id, Backup.protected_at, Backup.created_at, Backup.status,
        Backup.extend_info).where(
        Backup.vault_id == backup.vault_id, Backup.resource_id == backup.resource_id,
        Backup.parent_id.is_(None), Backup.image_type == ImageType.BACKUP)).all()
    candidates = [retention.Candidate(
        backup_id=r.id, resource_id=r.resource_id,
        protected_at=r.protected_at or r.created_at,
        auto=bool((r.extend_info or {}).get("auto_trigger", False)), status=r.status)
        for r in rows]
    task_ids = []
    for expired in retention.select_expired(
            candidates, od, now, include_manual=bool(od.get("include_manual_backups", False))):
        delete = deletions.start_delete(session, policy.project_id, expired.backup_id, now)
        delete.extra_info = {**delete.extra_info, "policy_id": policy.id,
                             "retention_rule": expired.rule}
        log.info("retention of policy %s deletes backup %s (%s)", policy.id,
                 expired.backup_id, expired.rule)
        task_ids.append(delete.id)
    return task_ids


def replication_target(session: Session, policy: Policy, vault_id: str) -> dict[str, str]:
    """Where a replication policy sends one vault's backups."""
    od = policy.operation_definition or {}
    binding = session.scalars(select(VaultPolicy).where(
        VaultPolicy.policy_id == policy.id, VaultPolicy.vault_id == vault_id)).first()
    return {"credential_id": str(od.get("credential_id", "")),
            "region": str(od.get("destination_region", "")),
            "destination_project_id": str(od.get("destination_project_id", "")),
            "destination_vault_id": binding.destination_vault_id if binding else ""}


def replication_policy_of(session: Session, vault_id: str) -> Policy | None:
    """The enabled replication policy bound to a vault, if any."""
    return session.scalars(select(Policy).join(VaultPolicy, VaultPolicy.policy_id == Policy.id)
                           .where(VaultPolicy.vault_id == vault_id,
                                  Policy.operation_type == PolicyOperationType.REPLICATION,
                                  Policy.enabled.is_(True))).first()
