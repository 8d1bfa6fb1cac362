"""The backup catalog: checkpoints and backups as the controller records them.

Backup runs, restores and deletions are in ``runs``; replication in
``replication`` (the source's rules) and ``imports`` (the target's).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from cbr import errors
from controller.persistence.models import Backup, Checkpoint, ReplicationRecord, Task
from controller.persistence.vocabulary import ProtectType, VaultStatus
from controller.services import validation, vaults


def get_backup(session: Session, project_id: str, backup_id: str) -> Backup:
    backup = session.get(Backup, backup_id) if backup_id else None
    if backup is None or backup.project_id != project_id:
        raise errors.ResourceNotFound(f"No backup with id {backup_id!r}.", backup_id=backup_id)
    return backup


def children(session: Session, backup_id: str) -> list[Backup]:
    return list(session.scalars(select(Backup).where(Backup.parent_id == backup_id)
                                .order_by(Backup.created_at)))


def record_ids(session: Session, backup_id: str) -> list[str]:
    return list(session.scalars(select(ReplicationRecord.id).where(
        ReplicationRecord.source_backup_id == backup_id)))


def get_checkpoint(session: Session, project_id: str,
                   checkpoint_id: str) -> tuple[Checkpoint, list[str], list[str]]:
    cp = session.get(Checkpoint, checkpoint_id) if checkpoint_id else None
    if cp is None or cp.project_id != project_id:
        raise errors.ResourceNotFound(f"No checkpoint with id {checkpoint_id!r}.",
                                      checkpoint_id=checkpoint_id)
    backup_ids = list(session.scalars(select(Backup.id).where(
        Backup.checkpoint_id == cp.id, Backup.parent_id.is_(None))))
    task_ids = list(session.scalars(select(Task.id).where(Task.checkpoint_id == cp.id)))
    return cp, backup_ids, task_ids


def backup_query(project_id: str, *, vault_id: str = "", resource_id: str = "",
                 checkpoint_id: str = "", status: str = "", image_type: str = "",
                 resource_type: str = "", name: str = "",
                 show_children: bool = False) -> Select[Any]:
    stmt = select(Backup).where(Backup.project_id == project_id)
    if not show_children:
        stmt = stmt.where(Backup.parent_id.is_(None))
    for column, value in ((Backup.vault_id, vault_id), (Backup.resource_id, resource_id),
                          (Backup.checkpoint_id, checkpoint_id), (Backup.status, status),
                          (Backup.image_type, image_type),
                          (Backup.resource_type, resource_type), (Backup.name, name)):
        if value:
            stmt = stmt.where(column == value)
    return stmt


def update_backup(session: Session, project_id: str, backup_id: str, name: str,
                  description: str, now: dt.datetime) -> Backup:
    backup = get_backup(session, project_id, backup_id)
    if not name and not description:
        raise errors.InvalidParameter("Give a new name or description.", field="name")
    if name:
        backup.name = validation.name(name)
    if description:
        backup.description = validation.description(description)
    backup.updated_at = now
    return backup


def check_checkpoint_request(session: Session, project_id: str, vault_id: str,
                             resource_ids: list[str]) -> None:
    """Refuses what a backup run could never do, with the reference's codes."""
    vault = vaults.get_vault(session, project_id, vault_id)
    if vault.status != VaultStatus.AVAILABLE:
        raise errors.VaultStatusIllegal(f"allow status: available. Vault {vault.name!r} is "
                                        f"{vault.status}.", vault_id=vault.id)
    if vault.protect_type == ProtectType.REPLICATION:
        raise errors.InvalidParameter("A replication vault holds replicas; it takes no "
                                      "backups.", field="vault_id")
    in_vault = {r.protectable_id for r in vault.resources}
    if not in_vault:
        raise errors.NoResourceAvailable(f"Vault {vault.name!r} has no resources.",
                                         vault_id=vault.id)
    for rid in resource_ids:
        if rid not in in_vault:
            raise errors.ResourceNotFound(f"Resource {rid!r} is not in vault {vault.name!r}.",
                                          resource_id=rid)
    if vault.used_bytes >= vault.size_gb * 1024**3 and not vault.auto_expand:
        raise errors.VaultCapacityExceeded(
            f"Vault {vault.name!r} uses {vault.used_bytes} of {vault.size_gb} GB; expand it.")
