"""Deleting backups, resources with their backups, and whole vaults, and
marking the backups a repair found damaged: the rules and the catalog side.

Deletion is a task the controller's maintenance worker runs (storage first,
then the catalog); what is in use (being backed up, restored, replicated or
made into an image) is refused, naming it, before anything changes.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from cbr import errors
from controller.persistence.models import (
    Backup,
    Checkpoint,
    Image,
    ReplicationRecord,
    Task,
    Vault,
)
from controller.persistence.vocabulary import (
    BackupStatus,
    ImageStatus,
    OperationType,
    ReplicationStatus,
    TaskStatus,
)
from controller.services import backups, keys, tasks, validation, vaults
from controller.services.runs import (
    BUSY_STATUSES,
    backup_family,
    rfc3339,
    update_checkpoint,
    vault_resource,
)

# A backup may be deleted (or marked damaged) only when it is in one of these.
SETTLED = frozenset({BackupStatus.AVAILABLE, BackupStatus.ERROR})


def start_delete(session: Session, project_id: str, backup_id: str, now: dt.datetime) -> Task:
    """Marks a backup ``deleting`` and makes the controller's delete task."""
    backup = backups.get_backup(session, project_id, backup_id)
    if backup.parent_id:
        raise errors.InvalidParameter(
            f"{backup.id} is a disk of server backup {backup.parent_id}; delete that.",
            field="backup_id")
    if backup.status not in SETTLED:
        raise errors.BackupStatusIllegal(
            f"Backup {backup.id} is {backup.status}; wait until it is available or error.",
            backup_id=backup.id)
    for b in backup_family(session, backup.id):
        b.status = BackupStatus.DELETING
        b.updated_at = now
    return tasks.create_task(
        session, project_id=project_id, operation_type=OperationType.DELETE, now=now,
        vault_id=backup.vault_id, resource_id=backup.resource_id,
        resource_name=backup.resource_name, checkpoint_id=backup.checkpoint_id,
        extra_info={"backup_id": backup.id, "backup_name": backup.name})


# -- deleting a vault, or a resource with its backups --------------------------------------


def _in_use(session: Session, vault_id: str, resource_id: str = "") -> str:
    """What makes deleting the vault's backups (of one resource) unsafe now,
    in words; "" when nothing does."""
    mine = select(Backup.id).where(Backup.vault_id == vault_id)
    if resource_id:
        mine = mine.where(Backup.resource_id == resource_id)
    busy = session.scalars(mine.with_only_columns(Backup).where(
        Backup.parent_id.is_(None), Backup.status.in_(BUSY_STATUSES))
        .limit(1)).first()
    if busy is not None:
        doing = ("being backed up" if busy.status == BackupStatus.PROTECTING
                 else "being restored")
        return f"backup {busy.id} of {busy.resource_name!r} is {doing}"
    records = select(ReplicationRecord).where(
        ReplicationRecord.status == ReplicationStatus.REPLICATING)
    records = records.where(ReplicationRecord.source_backup_id.in_(mine)) if resource_id \
        else records.where(ReplicationRecord.vault_id == vault_id)
    record = session.scalars(records.limit(1)).first()
    if record is not None:
        return (f"backup {record.source_backup_id} is being replicated (replication record "
                f"{record.id})")
    image = session.scalars(select(Image).where(
        Image.status == ImageStatus.CREATING, Image.backup_id.in_(mine)).limit(1)).first()
    if image is not None:
        return f"image {image.id} is being made from backup {image.backup_id}"
    return ""


def start_vault_delete(session: Session, project_id: str, vault_id: str,
                       now: dt.datetime) -> str:
    """Marks the vault and its backups deleting and makes the vault_delete
    task; refused, changing nothing, while anything uses them."""
    vault = vaults.get_vault(session, project_id, vault_id, lock=True)
    busy = _in_use(session, vault.id)
    if busy:
        raise errors.Conflict(f"Vault {vault.name!r} cannot be deleted now: {busy}. Delete "
                              "it when that has ended.", vault_id=vault.id)
    task_id = vaults.mark_deleting(session, vault, now)
    for b in session.scalars(select(Backup).where(Backup.vault_id == vault.id)):
        b.status = BackupStatus.DELETING
        b.updated_at = now
    return task_id


def forget_vault(session: Session, vault_id: str) -> None:
    """Removes an erased vault's rows: backups, checkpoints, resources, bindings."""
    vault = session.get(Vault, vault_id)
    if vault is None:
        return
    for parent in (False, True):  # disks before the server backups that own them
        for b in session.scalars(select(Backup).where(
                Backup.vault_id == vault_id, Backup.parent_id.is_(None) == parent)):
            session.delete(b)
        session.flush()
    for cp in session.scalars(select(Checkpoint).where(Checkpoint.vault_id == vault_id)):
        session.delete(cp)
    session.delete(vault)


def start_remove_resources(session: Session, project_id: str, vault_id: str,
                           resource_ids: list[str], now: dt.datetime) -> list[str]:
    """Takes resources out of the vault and makes one remove_resource task
    each, which deletes the resource's backups there (the reference's
    semantics); refused, changing nothing, while any of them is in use."""
    vault = vaults.get_vault(session, project_id, vault_id, lock=True)
    if not resource_ids:
        raise errors.InvalidParameter("resource_ids is empty.", field="resource_ids")
    validation.unique(resource_ids, "resource_ids", errors.DuplicateResource)
    tops: dict[str, list[Backup]] = {}
    for rid in resource_ids:
        busy = _in_use(session, vault.id, rid)
        if busy:
            raise errors.Conflict(f"Resource {rid} cannot be removed from vault "
                                  f"{vault.name!r} now: {busy}. Remove it when that has "
                                  "ended.", resource_id=rid)
        tops[rid] = list(session.scalars(select(Backup).where(
            Backup.vault_id == vault.id, Backup.resource_id == rid,
            Backup.parent_id.is_(None))))
    if any(tops.values()):
        keys.check_vault_key(session, vault, now)  # deleting them reads the vault
    task_ids = []
    for rid in resource_ids:
        vr = vaults.release_resource(session, vault, rid, now)
        for top in tops[rid]:
            for b in backup_family(session, top.id):
                b.status = BackupStatus.DELETING
                b.updated_at = now
        task = tasks.create_task(
            session, project_id=project_id, operation_type=OperationType.REMOVE_RESOURCE,
            now=now, status=TaskStatus.WAITING if tops[rid] else TaskStatus.SUCCESS,
            vault_id=vault.id,
            vault_name=vault.name, resource_id=rid, resource_name=vr.protectable.name,
            extra_info={"backup_ids": [b.id for b in tops[rid]]})
        task_ids.append(task.id)
    session.flush()
    return task_ids


DAMAGED = "damaged"
"""``extend_info`` key of a backup repair found damaged: why, in a sentence."""


@dataclass
class DamageMarks:
    """What repair changed (or, in a dry run, would change) in the catalog."""

    damaged: list[str]
    whole_again: list[str]
    busy: list[str]
    """Damaged, but restoring or being deleted: left as they are."""


def mark_damage(session: Session, vault_id: str, damage: dict[str, str], checked: set[str],
                now: dt.datetime, *, dry_run: bool) -> DamageMarks:
    """Marks the vault's backups that repair found damaged ``error`` with the
    reason, so no restore or incremental starts from them; never deletes one.
    A backup marked so earlier that repair found whole again (a later backup
    stored its lost chunks) is ``available`` again."""
    marks = DamageMarks([], [], [])
    for top in session.scalars(select(Backup).where(
            Backup.vault_id == vault_id, Backup.parent_id.is_(None)).order_by(Backup.id)):
        marked = top.status == BackupStatus.ERROR and DAMAGED in top.extend_info
        if top.id in damage:
            if top.status in SETTLED and not (
                    marked and top.extend_info[DAMAGED] == damage[top.id]):
                marks.damaged.append(top.id)
                status = BackupStatus.ERROR
                info = {DAMAGED: damage[top.id], "damaged_at": rfc3339(now)}
            else:
                if top.status not in SETTLED:
                    marks.busy.append(top.id)
                continue
        elif marked and top.id in checked:
            marks.whole_again.append(top.id)
            status, info = BackupStatus.AVAILABLE, {}
        else:
            continue
        if dry_run:
            continue
        for b in backup_family(session, top.id):
            b.status = status
            b.extend_info = {**{k: v for k, v in b.extend_info.items()
                                if k not in (DAMAGED, "damaged_at")}, **info}
            b.updated_at = now
        update_checkpoint(session, top.checkpoint_id)
    return marks


def forget_backup(session: Session, backup_id: str) -> int:
    """Removes a deleted backup (and its children) from the catalog; its stored bytes."""
    family = backup_family(session, backup_id)
    if not family:
        return 0
    top = family[0]
    freed = sum(b.stored_bytes for b in family)
    resource = vault_resource(session, top.vault_id, top.resource_id)
    if resource is not None and top.status in (BackupStatus.DELETING, BackupStatus.AVAILABLE):
        resource.backup_count = max(0, resource.backup_count - 1)
        resource.backup_size_bytes = max(0, resource.backup_size_bytes - freed)
    for b in reversed(family):
        session.delete(b)
    return freed
