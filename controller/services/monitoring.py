"""What the controller's metrics read from the state at scrape time.

Read from the database, not kept in memory, so that every controller on one
database reports the same figures and a restart loses none. Each function is
one or two aggregate queries with a bound on the rows it returns: a scrape
every few seconds must cost the database little.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import and_, exists, func, select
from sqlalchemy.orm import Session

from controller.persistence.models import (
    Agent,
    Backup,
    Policy,
    PolicyRun,
    Protectable,
    ReplicationRecord,
    Task,
    Vault,
    VaultPolicy,
    VaultResource,
)
from controller.persistence.vocabulary import (
    AgentRole,
    BackupStatus,
    ImageType,
    OperationType,
    PolicyOperationType,
    PolicyRunStatus,
    ReplicationStatus,
    TaskStatus,
)

# At most this many rows per series family: a metric per resource or vault
# is for a controller's own scale, not a scan of an unbounded catalog.
MAX_ROWS = 5000

# The ends of a backup that say how it went (skipped is not an attempt).
ATTEMPT_ENDS = (TaskStatus.SUCCESS, TaskStatus.FAILED, TaskStatus.TIMEOUT)

# A backup with a record in one of these needs no replication to that region:
# it went, or a rule keeps it from going (the skip record says which).
HANDLED = (ReplicationStatus.SUCCESS, ReplicationStatus.SKIP)


@dataclass(frozen=True)
class ResourceBackups:
    """A resource in a vault: when its last backup succeeded and how its last one ended."""

    resource_id: str
    resource_name: str
    vault_id: str
    last_success_at: dt.datetime | None
    last_succeeded: bool | None


def resource_backups(session: Session) -> list[ResourceBackups]:
    """Every protected resource, from its backup tasks (a resource never backed
    up has neither figure)."""
    attempts = (
        select(Task.resource_id, Task.vault_id, Task.status, Task.ended_at,
               func.row_number().over(partition_by=(Task.resource_id, Task.vault_id),
                                      order_by=(Task.ended_at.desc(), Task.id.desc()))
               .label("n"))
        .where(Task.operation_type == OperationType.BACKUP, Task.status.in_(ATTEMPT_ENDS))
        .subquery())
    last = select(attempts.c.resource_id, attempts.c.vault_id, attempts.c.status) \
        .where(attempts.c.n == 1).subquery()
    success = (
        select(Task.resource_id, Task.vault_id, func.max(Task.ended_at).label("at"))
        .where(Task.operation_type == OperationType.BACKUP, Task.status == TaskStatus.SUCCESS)
        .group_by(Task.resource_id, Task.vault_id).subquery())
    rows = session.execute(
        select(VaultResource.protectable_id, Protectable.name, VaultResource.vault_id,
               success.c.at, last.c.status)
        .join(Protectable, Protectable.id == VaultResource.protectable_id)
        .outerjoin(success, and_(success.c.resource_id == VaultResource.protectable_id,
                                 success.c.vault_id == VaultResource.vault_id))
        .outerjoin(last, and_(last.c.resource_id == VaultResource.protectable_id,
                              last.c.vault_id == VaultResource.vault_id))
        .order_by(VaultResource.id).limit(MAX_ROWS)).all()
    return [ResourceBackups(
        resource_id=r[0], resource_name=r[1], vault_id=r[2],
        last_success_at=_aware(r[3]),
        last_succeeded=None if r[4] is None else r[4] == TaskStatus.SUCCESS) for r in rows]


def tasks_by_status(session: Session) -> dict[tuple[str, str], int]:
    """(operation type, status) to the number of tasks."""
    rows = session.execute(select(Task.operation_type, Task.status, func.count())
                           .group_by(Task.operation_type, Task.status)).all()
    return {(op, status): int(n) for op, status, n in rows}


@dataclass(frozen=True)
class VaultUsage:
    vault_id: str
    vault_name: str
    used_bytes: int
    capacity_bytes: int
    threshold_percent: int
    threshold_exceeded: bool


def vault_usage(session: Session) -> list[VaultUsage]:
    rows = session.execute(select(Vault.id, Vault.name, Vault.used_bytes, Vault.size_gb,
                                  Vault.threshold, Vault.threshold_exceeded)
                           .order_by(Vault.id).limit(MAX_ROWS)).all()
    return [VaultUsage(v, name, int(used or 0), int(size_gb or 0) * 1024**3,
                       int(threshold or 0), bool(exceeded))
            for v, name, used, size_gb, threshold, exceeded in rows]


def agents_online(session: Session, now: dt.datetime, offline_after: float) -> dict[str, int]:
    """Role to the number of agents connected to some controller of this
    database and heard from within ``offline_after`` seconds; every role
    appears, with 0 when none is online."""
    since = now - dt.timedelta(seconds=offline_after)
    rows = session.execute(select(Agent.role, func.count()).where(
        Agent.connected.is_(True), Agent.revoked.is_(False), Agent.last_seen_at >= since)
        .group_by(Agent.role)).all()
    counts = {str(role): 0 for role in AgentRole}
    counts.update({role: int(n) for role, n in rows})
    return counts


def missed_runs(session: Session) -> int:
    """Scheduled runs recorded as missed, by every controller of this database."""
    return int(session.scalar(select(func.count()).select_from(PolicyRun)
                              .where(PolicyRun.status == PolicyRunStatus.MISSED)) or 0)


@dataclass(frozen=True)
class ReplicationLag:
    vault_id: str
    destination_region: str
    seconds: float


def replication_lag(session: Session, now: dt.datetime) -> list[ReplicationLag]:
    """For each vault replicated to a region (an enabled replication policy
    sends it there, or a backup of it was replicated there by hand): how
    long the destination has been missing a backup, i.e. the age of the
    oldest backup not yet replicated there among those newer than the newest
    one that was (0 when nothing waits). A replication that stopped working
    shows as a lag that keeps growing, not one reset by each new backup."""
    by_policy = session.execute(
        select(VaultPolicy.vault_id, Policy.operation_definition)
        .join(Policy, Policy.id == VaultPolicy.policy_id)
        .where(VaultPolicy.operation_type == PolicyOperationType.REPLICATION,
               Policy.enabled.is_(True))
        .order_by(VaultPolicy.vault_id).limit(MAX_ROWS)).all()
    pairs = {(vault_id, str((definition or {}).get("destination_region", "")))
             for vault_id, definition in by_policy}
    # This cloud's own records as the source (an import's record names the
    # same vault on both sides: it is the target's).
    by_hand = session.execute(
        select(ReplicationRecord.vault_id, ReplicationRecord.destination_region).distinct()
        .where(ReplicationRecord.vault_id != ReplicationRecord.destination_vault_id,
               ReplicationRecord.vault_id != "")
        .limit(MAX_ROWS)).all()
    pairs.update((vault_id, region) for vault_id, region in by_hand)
    out: list[ReplicationLag] = []
    for vault_id, region in sorted(pairs)[:MAX_ROWS]:
        if not region:
            continue
        candidates = (Backup.vault_id == vault_id, Backup.parent_id.is_(None),
                      Backup.status == BackupStatus.AVAILABLE,
                      Backup.image_type == ImageType.BACKUP)
        went = exists().where(ReplicationRecord.source_backup_id == Backup.id,
                              ReplicationRecord.destination_region == region,
                              ReplicationRecord.status.in_(HANDLED))
        newest_went = _aware(session.scalar(select(func.max(Backup.created_at))
                                            .where(*candidates, went)))
        waiting = select(func.min(Backup.created_at)).where(*candidates, ~went)
        if newest_went is not None:
            waiting = waiting.where(Backup.created_at > newest_went)
        oldest = _aware(session.scalar(waiting))
        lag = max(0.0, (now - oldest).total_seconds()) if oldest is not None else 0.0
        out.append(ReplicationLag(vault_id, region, lag))
    return out


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    """Aggregates (max, min) skip the column type's conversion: SQLite hands
    back a naive datetime (or its text), which is UTC here."""
    if value is None:
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)
