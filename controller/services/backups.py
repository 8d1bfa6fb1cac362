"""The backup catalog: checkpoints and backups as the controller records them.

Backup runs, restores and deletions are in ``runs``; replication in
``replication`` (the source's rules) and ``imports`` (the target's).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from cbr import errors
from controller.persistence.models import Backup, Checkpoint, ReplicationRecord, Task, Vault
from controller.persistence.vocabulary import BackupStatus, ObjectType, ProtectType, VaultStatus
from controller.services import paging, validation, vaults


def get_backup(session: Session, project_id: str, backup_id: str) -> Backup:
    backup = session.get(Backup, backup_id) if backup_id else None
    if backup is None or backup.project_id != project_id:
        raise errors.ResourceNotFound(f"No backup with id {backup_id!r}.", backup_id=backup_id)
    return backup


def children(session: Session, backup_id: str) -> list[Backup]:
    return list(session.scalars(select(Backup).where(Backup.parent_id == backup_id)
                                .order_by(Backup.created_at)))


def children_of(session: Session, backup_ids: list[str]) -> dict[str, list[Backup]]:
    """The children of many backups in one query (a page of a list), by parent."""
    out: dict[str, list[Backup]] = {}
    if not backup_ids:
        return out
    for child in session.scalars(select(Backup).where(Backup.parent_id.in_(backup_ids))
                                 .order_by(Backup.created_at)):
        out.setdefault(child.parent_id or "", []).append(child)
    return out


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


@dataclass(frozen=True)
class BackupFilter:
    vault_id: str = ""
    resource_id: str = ""
    checkpoint_id: str = ""
    status: str = ""
    image_type: str = ""
    resource_type: str = ""
    name: str = ""
    show_children: bool = False
    newest_first: bool = False


def backup_query(project_id: str, f: BackupFilter) -> Select[Any]:
    stmt = select(Backup).where(Backup.project_id == project_id)
    if not f.show_children:
        stmt = stmt.where(Backup.parent_id.is_(None))
    for column, value in ((Backup.vault_id, f.vault_id), (Backup.resource_id, f.resource_id),
                          (Backup.checkpoint_id, f.checkpoint_id), (Backup.status, f.status),
                          (Backup.image_type, f.image_type),
                          (Backup.resource_type, f.resource_type), (Backup.name, f.name)):
        if value:
            stmt = stmt.where(column == value)
    return stmt


def list_backups(session: Session, project_id: str, f: BackupFilter, page_size: int,
                 page_token: str) -> tuple[Sequence[Backup], str, int]:
    """A page of the account's backups matching f: (backups, next_page_token, total)."""
    stmt = backup_query(project_id, f)
    if f.vault_id:  # an unknown vault is not an empty one
        vaults.get_vault(session, project_id, f.vault_id)
    return paging.paginate(session, stmt, Backup, page_size, page_token,
                           newest_first=f.newest_first)


def tree_backup(session: Session, project_id: str, backup_id: str, field: str,
                verb: str) -> Backup:
    """A file-system backup of the account whose tree may be read now."""
    b = get_backup(session, project_id, backup_id)
    if b.resource_type != ObjectType.TURBO:
        raise errors.InvalidParameter(
            f"Backup {b.id} is a {b.resource_type} backup; only file-system backups "
            f"have files to {verb}.", field=field)
    if b.status not in (BackupStatus.AVAILABLE, BackupStatus.RESTORING):
        raise errors.BackupStatusIllegal(f"Backup {b.id} is {b.status}; files can be read "
                                         "only from an available (or restoring) backup.",
                                         backup_id=b.id)
    return b


def vault_url(session: Session, backup: Backup) -> str:
    """The storage of the backup's vault; empty when the vault row is gone."""
    vault = session.get(Vault, backup.vault_id)
    return vault.storage_url if vault is not None else ""


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
