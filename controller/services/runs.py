"""Backup runs: the rules, and the catalog changes they make (restores are in
``restores``, deletions in ``deletions``).

A checkpoint makes one ``protecting`` backup and one backup task per
resource (a server's backup has one child per disk) and sends the task to
the resource's agent. The agent writes the data and the manifests, and only
then reports success, so a backup becomes ``available`` only once its
manifest is in storage (data before catalog). A failed or lost task leaves
its backups ``error``, never ``available``.

Everything here runs inside the caller's transaction and does no I/O; the
servicers dispatch the tasks after the commit.
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from cbr import errors
from cbr.v1 import agent_pb2
from controller.persistence.models import (
    Backup,
    Checkpoint,
    Protectable,
    Task,
    Vault,
    VaultResource,
)
from controller.persistence.vocabulary import (
    BackupStatus,
    CheckpointStatus,
    ImageType,
    ObjectType,
    OperationType,
    ProtectStatus,
)
from controller.services import (
    backups,
    capacity,
    commands,
    events,
    keys,
    tasks,
    validation,
    vaults,
)

# A resource with a backup in one of these is busy: no other backup, restore
# or deletion of it starts.
BUSY_STATUSES = frozenset({BackupStatus.PROTECTING, BackupStatus.RESTORING})


@dataclass(frozen=True)
class Dispatch:
    """A task to send to an agent once the transaction commits."""

    agent_id: str
    task_id: str


def default_name(vault: Vault, auto: bool) -> str:
    prefix = vault.backup_name_prefix or ("autobk" if auto else "manualbk")
    return f"{prefix}_{secrets.token_hex(2)}"


def _latest_available(session: Session, vault_id: str, resource_id: str) -> Backup | None:
    return session.scalars(
        select(Backup).where(Backup.vault_id == vault_id, Backup.resource_id == resource_id,
                             Backup.parent_id.is_(None),
                             Backup.status == BackupStatus.AVAILABLE,
                             Backup.image_type == ImageType.BACKUP)
        .order_by(Backup.created_at.desc()).limit(1)).first()


def busy_backup(session: Session, resource_id: str) -> Backup | None:
    return session.scalars(select(Backup).where(
        Backup.resource_id == resource_id, Backup.parent_id.is_(None),
        Backup.status.in_(BUSY_STATUSES))).first()


def _selected_disks(resource: VaultResource, protectable: Protectable) -> list[dict[str, Any]]:
    disks = list(protectable.disks)
    if resource.include_volumes:
        disks = [d for d in disks if d["id"] in resource.include_volumes or d["system_disk"]]
    if resource.exclude_volumes:
        disks = [d for d in disks if d["id"] not in resource.exclude_volumes or d["system_disk"]]
    return disks


def create_checkpoint(
    session: Session, project_id: str, vault_id: str, resource_ids: list[str], *,
    name: str, description: str, full: bool, now: dt.datetime, online: set[str],
    auto_trigger: bool = False, policy_id: str = "",
) -> tuple[Checkpoint, list[Dispatch]]:
    """Starts a backup of the vault's resources (all, or those named).

    Resources that cannot be backed up now (agent offline, resource gone or
    busy) are listed on the checkpoint as skipped with a code and reason; if
    none can, the checkpoint is still recorded, with status ``error``.
    """
    backups.check_checkpoint_request(session, project_id, vault_id, resource_ids)
    vault = vaults.get_vault(session, project_id, vault_id)
    keys.check_vault_key(session, vault, now)
    if name:
        validation.name(name)
    if description:
        validation.description(description)
    name = name or default_name(vault, auto_trigger)
    checkpoint = Checkpoint(project_id=project_id, vault_id=vault.id, name=name,
                            description=description, status=CheckpointStatus.PROTECTING,
                            auto_trigger=auto_trigger, policy_id=policy_id,
                            skipped_resources=[], created_at=now)
    session.add(checkpoint)
    session.flush()
    chosen = [r for r in vault.resources if not resource_ids or r.protectable_id in resource_ids]
    skipped: list[dict[str, str]] = []
    dispatches: list[Dispatch] = []
    for resource in chosen:
        protectable = resource.protectable

        def skip(code: str, reason: str, p: Protectable = protectable) -> None:
            skipped.append({"resource_id": p.id, "resource_name": p.name, "code": code,
                            "reason": reason})
            if code != errors.ResourceBeingBackedUp.code:  # the running one will report
                events.backup_not_started(
                    session, project_id=project_id, vault_id=vault.id, vault_name=vault.name,
                    resource_id=p.id, resource_name=p.name, code=code, reason=reason,
                    policy_id=policy_id, now=now)

        if protectable.gone:
            skip(errors.NoResourceAvailable.code, "The agent no longer reports this resource.")
            continue
        if protectable.error:
            skip(errors.NoResourceAvailable.code, f"The agent cannot read it: {protectable.error}")
            continue
        if protectable.agent_id not in online:
            skip(errors.AgentUnavailable.code, f"Its agent {protectable.agent_id} is offline.")
            continue
        busy = busy_backup(session, protectable.id)
        if busy is not None:
            skip(errors.ResourceBeingBackedUp.code, f"Backup {busy.id} of it is {busy.status}.")
            continue
        dispatches.append(_start_backup(session, vault, checkpoint, resource, protectable,
                                         name=name, description=description, full=full,
                                         now=now, auto_trigger=auto_trigger))
    checkpoint.skipped_resources = skipped
    if not dispatches:
        checkpoint.status = CheckpointStatus.ERROR
    return checkpoint, dispatches


def restart_resource(session: Session, checkpoint: Checkpoint, resource: VaultResource,
                     *, now: dt.datetime, full: bool) -> Dispatch:
    """Starts one more backup of a resource in an existing checkpoint (a
    policy run's retry), named as the checkpoint's other backups, if the
    vault still takes backups (its status, capacity and key are checked
    again: they may have changed since the run began)."""
    vault = resource.vault
    backups.check_checkpoint_request(session, vault.project_id, vault.id,
                                     [resource.protectable_id])
    keys.check_vault_key(session, vault, now)
    checkpoint.skipped_resources = [
        s for s in checkpoint.skipped_resources or []
        if s.get("resource_id") != resource.protectable_id]
    dispatch = _start_backup(session, vault, checkpoint, resource, resource.protectable,
                             name=checkpoint.name, description=checkpoint.description,
                             full=full, now=now, auto_trigger=checkpoint.auto_trigger)
    update_checkpoint(session, checkpoint.id)
    return dispatch


def _start_backup(
    session: Session, vault: Vault, checkpoint: Checkpoint, resource: VaultResource,
    protectable: Protectable, *, name: str, description: str, full: bool, now: dt.datetime,
    auto_trigger: bool,
) -> Dispatch:
    parent = None if full else _latest_available(session, vault.id, protectable.id)
    backup = Backup(
        project_id=vault.project_id, vault_id=vault.id, checkpoint_id=checkpoint.id,
        name=name, description=description, resource_id=protectable.id,
        resource_name=protectable.name, resource_type=protectable.object_type,
        resource_size_bytes=protectable.size_bytes, status=BackupStatus.PROTECTING,
        image_type=ImageType.BACKUP, incremental=parent is not None, stored_bytes=0,
        extend_info={"auto_trigger": auto_trigger, "encrypted": bool(vault.encrypted)},
        created_at=now, updated_at=now)
    session.add(backup)
    session.flush()
    disks = []
    if protectable.object_type == ObjectType.SERVER:
        parent_children = ({c.extend_info.get("disk_id"): c
                            for c in backups.children(session, parent.id)}
                           if parent is not None else {})
        has_system = False
        for disk in _selected_disks(resource, protectable):
            child = Backup(
                project_id=vault.project_id, vault_id=vault.id, checkpoint_id=checkpoint.id,
                parent_id=backup.id, name=name, description=description,
                resource_id=protectable.id, resource_name=disk["name"],
                resource_type=ObjectType.DISK, resource_size_bytes=int(disk["size_bytes"]),
                status=BackupStatus.PROTECTING, image_type=ImageType.BACKUP, stored_bytes=0,
                extend_info={"disk_id": disk["id"], "system_disk": bool(disk["system_disk"]),
                             "auto_trigger": auto_trigger, "encrypted": bool(vault.encrypted)},
                created_at=now, updated_at=now)
            previous = parent_children.get(disk["id"])
            child.incremental = previous is not None
            session.add(child)
            session.flush()
            has_system = has_system or bool(disk["system_disk"])
            disks.append(commands.disk_backup(child, disk, previous))
        backup.extend_info = {**backup.extend_info, "contain_system_disk": has_system}
    resource.protect_status = ProtectStatus.PROTECTING
    task = tasks.create_task(
        session, project_id=vault.project_id, operation_type=OperationType.BACKUP, now=now,
        agent_id=protectable.agent_id, vault_id=vault.id, vault_name=vault.name,
        resource_id=protectable.id, resource_name=protectable.name,
        checkpoint_id=checkpoint.id,
        command=commands.backup(vault, checkpoint, backup, protectable, parent, disks,
                                auto_trigger=auto_trigger, now=now),
        extra_info={"backup_id": backup.id, "backup_name": name,
                    "incremental": parent is not None})
    return Dispatch(protectable.agent_id, task.id)


def rfc3339(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def backup_family(session: Session, backup_id: str) -> list[Backup]:
    top = session.get(Backup, backup_id)
    if top is None:
        return []
    return [top, *backups.children(session, top.id)]


def update_checkpoint(session: Session, checkpoint_id: str) -> None:
    cp = session.get(Checkpoint, checkpoint_id)
    if cp is None:
        return
    statuses = set(session.scalars(select(Backup.status).where(
        Backup.checkpoint_id == cp.id, Backup.parent_id.is_(None))))
    if BackupStatus.PROTECTING in statuses:
        cp.status = CheckpointStatus.PROTECTING
    elif not statuses or BackupStatus.ERROR in statuses or cp.skipped_resources:
        cp.status = (CheckpointStatus.ERROR if not statuses or statuses <= {BackupStatus.ERROR}
                     else CheckpointStatus.AVAILABLE)
    else:
        cp.status = CheckpointStatus.AVAILABLE


def vault_resource(session: Session, vault_id: str, resource_id: str) -> VaultResource | None:
    return session.scalars(select(VaultResource).where(
        VaultResource.vault_id == vault_id,
        VaultResource.protectable_id == resource_id)).first()


def finish_backup(session: Session, task: Task, success: bool,
                  result: agent_pb2.BackupResult | None, now: dt.datetime) -> None:
    """Applies a backup task's end to its backups, resource, vault and checkpoint.

    A success whose result does not name the top backup (an agent that sent
    none) is not understood, and counts as a failure: nothing is marked
    available that the catalog cannot point at."""
    backup_id = str(task.extra_info.get("backup_id", ""))
    family = backup_family(session, backup_id)
    if not family:
        return
    top = family[0]
    results = {item.backup_id: item for item in result.backups} if result is not None else {}
    if top.id not in results:
        success = False
    resource = vault_resource(session, top.vault_id, top.resource_id)
    if not success:
        for b in family:
            if b.status == BackupStatus.PROTECTING:
                b.status = BackupStatus.ERROR
                b.updated_at = now
        if resource is not None:
            resource.protect_status = ProtectStatus.ERROR
        update_checkpoint(session, top.checkpoint_id)
        return
    added = 0
    for b in family:
        item = results.get(b.id, agent_pb2.BackedUp())
        b.status = BackupStatus.AVAILABLE
        b.stored_bytes = item.stored_bytes
        b.manifest_sha256 = item.manifest_sha256
        b.protected_at = (item.protected_at.ToDatetime(tzinfo=dt.UTC)
                          if item.HasField("protected_at") else now)
        info = dict(b.extend_info)
        if b.id in results:
            info.update(warnings=list(item.warnings), bytes_scanned=item.bytes_scanned)
        for key in ("snapshot", "app_consistent", "freeze_ms", "change_detection"):
            if item.HasField(key):
                info[key] = getattr(item, key)
        b.extend_info = info
        b.updated_at = now
        added += b.stored_bytes
    vault = session.get(Vault, top.vault_id)
    if vault is not None:
        vault.used_bytes += added
        capacity.usage_changed(session, vault, now)
    if resource is not None:
        resource.protect_status = ProtectStatus.AVAILABLE
        resource.backup_count += 1
        resource.backup_size_bytes += added
    update_checkpoint(session, top.checkpoint_id)


def cancel_backup(session: Session, task: Task, nothing_written: bool, now: dt.datetime) -> None:
    """Applies a cancelled backup task to its backups, resource and checkpoint.

    When its agent confirmed the stop, or never got the command, no manifest
    was written: the backups go from the catalog, so no listing shows a half
    backup (the chunks it uploaded stay indexed in storage for the next
    backup to reuse, and prune removes them if none does). When the agent
    did not confirm, it may still write a manifest: the backups become
    ``error``, which deleting removes from storage too. The resource is
    ``available`` again either way: cancelling is no failure of its own."""
    family = backup_family(session, str(task.extra_info.get("backup_id", "")))
    if not family:
        return
    top = family[0]
    resource = vault_resource(session, top.vault_id, top.resource_id)
    if resource is not None and resource.protect_status == ProtectStatus.PROTECTING:
        resource.protect_status = ProtectStatus.AVAILABLE
    for b in reversed(family):
        if b.status != BackupStatus.PROTECTING:
            continue
        if nothing_written:
            session.delete(b)
        else:
            b.status = BackupStatus.ERROR
            b.extend_info = {**b.extend_info, "cancelled": True}
            b.updated_at = now
    session.flush()
    update_checkpoint(session, top.checkpoint_id)
