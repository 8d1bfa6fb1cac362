"""Backup runs, restores and deletions: the rules, and the catalog changes they make.

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
import json
import posixpath
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from cbr import errors
from controller.persistence.models import (
    Agent,
    Backup,
    Checkpoint,
    Image,
    Protectable,
    ReplicationRecord,
    Task,
    Vault,
    VaultResource,
)
from controller.services import backups, keys, tasks, validation, vaults

RESOURCE_TYPES = {"server": "OS::Nova::Server", "disk": "OS::Cinder::Volume",
                  "turbo": "OS::Sfs::Turbo"}


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
                             Backup.parent_id.is_(None), Backup.status == "available",
                             Backup.image_type == "backup")
        .order_by(Backup.created_at.desc()).limit(1)).first()


def _busy(session: Session, resource_id: str) -> Backup | None:
    return session.scalars(select(Backup).where(
        Backup.resource_id == resource_id, Backup.parent_id.is_(None),
        Backup.status.in_(("protecting", "restoring")))).first()


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
                            description=description, status="protecting",
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

        if protectable.gone:
            skip(errors.NoResourceAvailable.code, "The agent no longer reports this resource.")
            continue
        if protectable.error:
            skip(errors.NoResourceAvailable.code, f"The agent cannot read it: {protectable.error}")
            continue
        if protectable.agent_id not in online:
            skip(errors.AgentUnavailable.code, f"Its agent {protectable.agent_id} is offline.")
            continue
        busy = _busy(session, protectable.id)
        if busy is not None:
            skip(errors.ResourceBeingBackedUp.code, f"Backup {busy.id} of it is {busy.status}.")
            continue
        dispatches.append(_start_backup(session, vault, checkpoint, resource, protectable,
                                         name=name, description=description, full=full,
                                         now=now, auto_trigger=auto_trigger))
    checkpoint.skipped_resources = skipped
    if not dispatches:
        checkpoint.status = "error"
    return checkpoint, dispatches


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
        resource_size_bytes=protectable.size_bytes, status="protecting",
        image_type="backup", incremental=parent is not None, stored_bytes=0,
        extend_info={"auto_trigger": auto_trigger, "encrypted": bool(vault.encrypted)},
        created_at=now, updated_at=now)
    session.add(backup)
    session.flush()
    command: dict[str, Any] = {
        "vaultId": vault.id, "checkpointId": checkpoint.id, "backupId": backup.id,
        "name": name, "description": description, "resourceId": protectable.id,
        "resourceLocalId": protectable.local_id, "resourceName": protectable.name,
        "resourceType": f"OBJECT_TYPE_{protectable.object_type.upper()}",
        "resourceSizeBytes": str(protectable.size_bytes),
        "parentBackupId": parent.id if parent is not None else "",
        "parentManifestSha256": parent.manifest_sha256 if parent is not None else "",
        "autoTrigger": auto_trigger, "createdAt": _rfc3339(now),
    }
    if protectable.object_type == "server":
        parent_children = ({c.extend_info.get("disk_id"): c
                            for c in backups.children(session, parent.id)}
                           if parent is not None else {})
        disks = []
        has_system = False
        for disk in _selected_disks(resource, protectable):
            child = Backup(
                project_id=vault.project_id, vault_id=vault.id, checkpoint_id=checkpoint.id,
                parent_id=backup.id, name=name, description=description,
                resource_id=protectable.id, resource_name=disk["name"], resource_type="disk",
                resource_size_bytes=int(disk["size_bytes"]), status="protecting",
                image_type="backup", stored_bytes=0,
                extend_info={"disk_id": disk["id"], "system_disk": bool(disk["system_disk"]),
                             "auto_trigger": auto_trigger, "encrypted": bool(vault.encrypted)},
                created_at=now, updated_at=now)
            previous = parent_children.get(disk["id"])
            child.incremental = previous is not None
            session.add(child)
            session.flush()
            has_system = has_system or bool(disk["system_disk"])
            disks.append({"backupId": child.id, "diskLocalId": disk["id"],
                          "name": disk["name"], "systemDisk": bool(disk["system_disk"]),
                          "parentBackupId": previous.id if previous is not None else "",
                          "parentManifestSha256": (previous.manifest_sha256
                                                   if previous is not None else ""),
                          "sizeBytes": str(int(disk["size_bytes"]))})
        backup.extend_info = {**backup.extend_info, "contain_system_disk": has_system}
        command["disks"] = disks
    resource.protect_status = "protecting"
    task = tasks.create_task(
        session, project_id=vault.project_id, operation_type="backup", now=now,
        agent_id=protectable.agent_id, vault_id=vault.id, vault_name=vault.name,
        resource_id=protectable.id, resource_name=protectable.name,
        checkpoint_id=checkpoint.id, command={"backup": command},
        extra_info={"backup_id": backup.id, "backup_name": name,
                    "incremental": parent is not None})
    return Dispatch(protectable.agent_id, task.id)


def _rfc3339(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _family(session: Session, backup_id: str) -> list[Backup]:
    top = session.get(Backup, backup_id)
    if top is None:
        return []
    return [top, *backups.children(session, top.id)]


def _update_checkpoint(session: Session, checkpoint_id: str) -> None:
    cp = session.get(Checkpoint, checkpoint_id)
    if cp is None:
        return
    statuses = set(session.scalars(select(Backup.status).where(
        Backup.checkpoint_id == cp.id, Backup.parent_id.is_(None))))
    if "protecting" in statuses:
        cp.status = "protecting"
    elif not statuses or "error" in statuses or cp.skipped_resources:
        cp.status = "error" if not statuses or statuses <= {"error"} else "available"
    else:
        cp.status = "available"


def _vault_resource(session: Session, vault_id: str, resource_id: str) -> VaultResource | None:
    return session.scalars(select(VaultResource).where(
        VaultResource.vault_id == vault_id,
        VaultResource.protectable_id == resource_id)).first()


def finish_backup(session: Session, task: Task, success: bool, extra: dict[str, Any],
                  now: dt.datetime) -> None:
    """Applies a backup task's end to its backups, resource, vault and checkpoint."""
    backup_id = str(task.extra_info.get("backup_id", ""))
    family = _family(session, backup_id)
    if not family:
        return
    top = family[0]
    results: dict[str, dict[str, Any]] = {}
    if success:
        try:
            for item in json.loads(str(extra.get("backups", "[]"))):
                results[str(item["backup_id"])] = item
        except (ValueError, KeyError, TypeError):
            success = False
        if top.id not in results:
            success = False
    resource = _vault_resource(session, top.vault_id, top.resource_id)
    if not success:
        for b in family:
            if b.status == "protecting":
                b.status = "error"
                b.updated_at = now
        if resource is not None:
            resource.protect_status = "error"
        _update_checkpoint(session, top.checkpoint_id)
        return
    added = 0
    for b in family:
        item = results.get(b.id, {})
        b.status = "available"
        b.stored_bytes = int(item.get("stored_bytes", 0))
        b.manifest_sha256 = str(item.get("manifest_sha256", ""))
        if "protected_at" in item:
            b.protected_at = dt.datetime.fromisoformat(str(item["protected_at"]))
        else:
            b.protected_at = now
        info = dict(b.extend_info)
        for key in ("warnings", "snapshot", "app_consistent", "freeze_ms", "bytes_scanned"):
            if key in item:
                info[key] = item[key]
        if "method" in item:
            info["change_detection"] = item["method"]
        b.extend_info = info
        b.updated_at = now
        added += b.stored_bytes
    vault = session.get(Vault, top.vault_id)
    if vault is not None:
        vault.used_bytes += added
    if resource is not None:
        resource.protect_status = "available"
        resource.backup_count += 1
        resource.backup_size_bytes += added
    _update_checkpoint(session, top.checkpoint_id)


# -- restore -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RestoreRequest:
    backup_id: str
    target_resource_id: str = ""
    target_agent_id: str = ""
    target_path: str = ""
    mappings: dict[str, str] | None = None
    source_path: str = ""
    encrypted: bool = False


def _no_nul(path: str, field: str) -> None:
    if "\x00" in path:
        raise errors.InvalidParameter(f"{field} may not contain a NUL character.", field=field)


def _safe_source_path(path: str) -> str:
    _no_nul(path, "source_path")
    parts = [p for p in path.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise errors.InvalidParameter(f"source_path {path!r} may not contain '.' or '..'.",
                                      field="source_path")
    return "/".join(parts)


def create_restore(session: Session, project_id: str, req: RestoreRequest, now: dt.datetime,
                   online: set[str]) -> Dispatch:
    """Checks a restore with the reference's codes and makes its task."""
    backup = backups.get_backup(session, project_id, req.backup_id)
    if backup.status != "available":
        damaged = backup.extend_info.get(DAMAGED)
        raise errors.BackupStatusIllegal(
            f"Backup {backup.id} is damaged ({damaged})." if damaged else
            f"Backup {backup.id} is {backup.status}; only available backups restore.",
            backup_id=backup.id)
    kind = backup.resource_type
    children = backups.children(session, backup.id)
    vault = session.get(Vault, backup.vault_id)
    if vault is not None:
        keys.check_vault_key(session, vault, now)
    encrypted = bool(backup.extend_info.get("encrypted")) or bool(vault and vault.encrypted)
    source_path = _safe_source_path(req.source_path)
    if source_path and kind != "turbo":
        raise errors.InvalidParameter("source_path is only for file-system backups.",
                                      field="source_path")
    command: dict[str, Any] = {"backupId": backup.id,
                               "resourceType": f"OBJECT_TYPE_{kind.upper()}",
                               "sourcePath": source_path,
                               "manifestSha256": {b.id: b.manifest_sha256
                                                  for b in (backup, *children)
                                                  if b.manifest_sha256}}
    target_resource: Protectable | None = None
    if req.target_agent_id or req.target_path or req.mappings:
        if encrypted and not req.encrypted:
            raise errors.EncryptedRestoreTarget(
                f"Backup {backup.id} is in encrypted vault {vault.name if vault else ''!r}; "
                "restore it to a new place only as an encrypted server or file system "
                "(set encrypted, `--encrypted` in the CLI, with the target on encrypted "
                "storage).", backup_id=backup.id)
        agent_id = req.target_agent_id
        if not agent_id:
            source = session.get(Protectable, backup.resource_id)
            if source is None:
                raise errors.InvalidParameter(
                    "The backup's resource is gone here; name the agent to restore on "
                    "(target_agent_id).", field="target_agent_id")
            agent_id = source.agent_id
        agent = _restore_agent(session, project_id, agent_id)
        if kind == "server":
            targets = dict(req.mappings or {})
            if not targets:
                if not req.target_path:
                    raise errors.InvalidParameter(
                        "Restoring a server to a new place needs target_path (a directory "
                        "for its disk images) or mappings.", field="target_path")
                base = req.target_path.rstrip("/")
                targets = {c.id: f"{base}/{c.resource_name}.img" for c in children}
            known = {c.id for c in children}
            for child_id, path in targets.items():
                if child_id not in known:
                    raise errors.InvalidParameter(
                        f"mappings names {child_id!r}, which is not a disk backup of "
                        f"{backup.id}.", field="mappings")
                _allowed_target(session, agent, _absolute(path, "mappings"), "mappings",
                                device=True)
            missing = known - set(targets)
            if missing:
                raise errors.InvalidParameter(
                    f"mappings leaves out disk backups {sorted(missing)}.", field="mappings")
            command["diskTargets"] = targets
        else:
            command["targetPath"] = _allowed_target(
                session, agent, _absolute(req.target_path, "target_path"), "target_path",
                device=kind == "disk" or bool(backup.parent_id))
    else:
        rid = req.target_resource_id or backup.resource_id
        target_resource = session.get(Protectable, rid)
        if target_resource is None or target_resource.project_id != project_id:
            raise errors.ResourceNotFound(f"No resource with id {rid!r} to restore to.",
                                          resource_id=rid)
        if target_resource.gone:
            raise errors.ResourceNotFound(
                f"Resource {target_resource.name} is no longer reported by its agent.",
                resource_id=rid)
        target_kind = "disk" if backup.parent_id else kind
        if target_resource.object_type != target_kind and not (
                target_kind == "disk" and backup.parent_id and target_resource.id == rid):
            raise errors.ResourceTypeMismatch(
                f"A {kind} backup cannot restore into {target_resource.object_type} "
                f"{target_resource.name}.", resource_id=rid)
        if encrypted and target_resource.id != backup.resource_id:
            _require_encrypted_target(session, backup, target_resource)
        busy = _busy(session, target_resource.id)
        if busy is not None:
            raise errors.ResourceBeingBackedUp(
                f"Backup {busy.id} of {target_resource.name} is {busy.status}.",
                resource_id=target_resource.id)
        agent_id = target_resource.agent_id
        owner = session.get(Agent, agent_id)
        if owner is None or owner.revoked:
            raise errors.ResourceNotFound(
                f"The agent that reported {target_resource.name} ({agent_id}) was deleted; "
                "restore to a new place on another agent (target_agent_id, target_path).",
                agent_id=agent_id)
        if kind == "server":
            by_disk = {d["id"]: d for d in target_resource.disks}
            targets = {}
            for child in children:
                disk = by_disk.get(child.extend_info.get("disk_id"))
                if disk is None:
                    raise errors.InvalidParameter(
                        f"Server {target_resource.name} has no disk "
                        f"{child.extend_info.get('disk_id')} for disk backup {child.id}; "
                        "restore to a new place with mappings.", field="mappings")
                if int(disk["size_bytes"]) < child.resource_size_bytes:
                    raise errors.RestoreTargetTooSmall(
                        f"Disk {disk['name']} has {disk['size_bytes']} bytes; the backup "
                        f"needs {child.resource_size_bytes}.", resource_id=target_resource.id)
                targets[child.id] = disk["path"]
            command["diskTargets"] = targets
        elif kind == "disk" or backup.parent_id:
            if target_resource.size_bytes < backup.resource_size_bytes:
                raise errors.RestoreTargetTooSmall(
                    f"Disk {target_resource.name} has {target_resource.size_bytes} bytes; "
                    f"the backup needs {backup.resource_size_bytes}.",
                    resource_id=target_resource.id)
            path = target_resource.path or next(
                (d["path"] for d in target_resource.disks), "")
            command["targetPath"] = path
        else:
            command["targetPath"] = target_resource.path
    if agent_id not in online:
        raise errors.AgentUnavailable(
            f"Agent {agent_id} is offline; restore when it is connected.", agent_id=agent_id)
    backup.status = "restoring"
    backup.updated_at = now
    if target_resource is not None:
        resource = _vault_resource(session, backup.vault_id, target_resource.id)
        if resource is not None:
            resource.protect_status = "restoring"
    task = tasks.create_task(
        session, project_id=project_id, operation_type="restore", now=now, agent_id=agent_id,
        vault_id=backup.vault_id, resource_id=target_resource.id if target_resource else "",
        resource_name=target_resource.name if target_resource else "",
        command={"restore": command},
        extra_info={"backup_id": backup.id,
                    "target": (target_resource.id if target_resource is not None
                               else req.target_path or json.dumps(req.mappings or {}))})
    return Dispatch(agent_id, task.id)


def _require_encrypted_target(session: Session, backup: Backup,
                              target: Protectable) -> None:
    """Another existing resource is an encrypted one when the vault that
    protects it is encrypted (its data is kept only encrypted)."""
    held = session.scalars(select(VaultResource).where(
        VaultResource.protectable_id == target.id)).first()
    target_vault = session.get(Vault, held.vault_id) if held is not None else None
    if target_vault is None or not target_vault.encrypted:
        raise errors.EncryptedRestoreTarget(
            f"Backup {backup.id} is encrypted; {target.name} is not protected by an "
            "encrypted vault, so it cannot receive it.", backup_id=backup.id,
            resource_id=target.id)


def _restore_agent(session: Session, project_id: str, agent_id: str) -> Agent:
    """The caller's own host agent: a restore never runs on another account's host."""
    agent = session.get(Agent, agent_id) if agent_id else None
    if agent is None or agent.project_id != project_id or agent.revoked:
        raise errors.ResourceNotFound(f"No agent with id {agent_id!r} to restore on.",
                                      agent_id=agent_id)
    if agent.role != "host":
        raise errors.InvalidParameter(
            f"Agent {agent.name} is an {agent.role}; restores run on host agents.",
            field="target_agent_id")
    return agent


def _allowed_target(session: Session, agent: Agent, path: str, field: str, *,
                    device: bool) -> str:
    """Refuses early what the host will refuse: a path outside its restore roots
    that is not one of its protected resources. Lexical only; the host decides
    again on the real path (agent.restore_targets)."""
    normal = posixpath.normpath(path)
    roots = [str(r) for r in agent.restore_roots]
    if any(_within(normal, root) for root in roots):
        return path
    for resource in session.scalars(select(Protectable).where(
            Protectable.agent_id == agent.id, Protectable.gone.is_(False))):
        if device:
            paths = [resource.path] if resource.object_type == "disk" else []
            paths += [str(d.get("path", "")) for d in resource.disks]
            if normal in (posixpath.normpath(p) for p in paths if p):
                return path
        elif resource.object_type == "turbo" and resource.path \
                and _within(normal, posixpath.normpath(resource.path)):
            return path
    allowed = ", ".join(roots) if roots else "none reported yet"
    raise errors.RestoreTargetNotAllowed(
        f"Agent {agent.name} allows restores to new places only under its restore roots "
        f"({allowed}){' or onto the disks it protects' if device else ''}; {field} "
        f"{path!r} is elsewhere. Choose a path under a root, or ask the host's operator to "
        "add one to restore_roots in its agent config.", agent_id=agent.id)


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _absolute(path: str, field: str) -> str:
    _no_nul(path, field)
    if not path.startswith("/"):
        raise errors.InvalidParameter(f"{field} {path!r} must be an absolute path.",
                                      field=field)
    return path


def finish_restore(session: Session, task: Task, success: bool, now: dt.datetime) -> None:
    backup = session.get(Backup, str(task.extra_info.get("backup_id", "")))
    if backup is not None and backup.status == "restoring":
        backup.status = "available"
        backup.updated_at = now
    if backup is not None and task.resource_id:
        resource = _vault_resource(session, backup.vault_id, task.resource_id)
        if resource is not None and resource.protect_status == "restoring":
            resource.protect_status = "available" if success else "error"


# -- deletion -------------------------------------------------------------------------------


def start_delete(session: Session, project_id: str, backup_id: str, now: dt.datetime) -> Task:
    """Marks a backup ``deleting`` and makes the controller's delete task."""
    backup = backups.get_backup(session, project_id, backup_id)
    if backup.parent_id:
        raise errors.InvalidParameter(
            f"{backup.id} is a disk of server backup {backup.parent_id}; delete that.",
            field="backup_id")
    if backup.status not in ("available", "error"):
        raise errors.BackupStatusIllegal(
            f"Backup {backup.id} is {backup.status}; wait until it is available or error.",
            backup_id=backup.id)
    for b in _family(session, backup.id):
        b.status = "deleting"
        b.updated_at = now
    return tasks.create_task(
        session, project_id=project_id, operation_type="delete", now=now,
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
        Backup.parent_id.is_(None), Backup.status.in_(("protecting", "restoring")))
        .limit(1)).first()
    if busy is not None:
        doing = "being backed up" if busy.status == "protecting" else "being restored"
        return f"backup {busy.id} of {busy.resource_name!r} is {doing}"
    records = select(ReplicationRecord).where(ReplicationRecord.status == "replicating")
    records = records.where(ReplicationRecord.source_backup_id.in_(mine)) if resource_id \
        else records.where(ReplicationRecord.vault_id == vault_id)
    record = session.scalars(records.limit(1)).first()
    if record is not None:
        return (f"backup {record.source_backup_id} is being replicated (replication record "
                f"{record.id})")
    image = session.scalars(select(Image).where(
        Image.status == "creating", Image.backup_id.in_(mine)).limit(1)).first()
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
        b.status = "deleting"
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
            for b in _family(session, top.id):
                b.status = "deleting"
                b.updated_at = now
        task = tasks.create_task(
            session, project_id=project_id, operation_type="remove_resource", now=now,
            status="waiting" if tops[rid] else "success", vault_id=vault.id,
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
        marked = top.status == "error" and DAMAGED in top.extend_info
        if top.id in damage:
            if top.status in ("available", "error") and not (
                    marked and top.extend_info[DAMAGED] == damage[top.id]):
                marks.damaged.append(top.id)
                status, info = "error", {DAMAGED: damage[top.id], "damaged_at": _rfc3339(now)}
            else:
                if top.status not in ("available", "error"):
                    marks.busy.append(top.id)
                continue
        elif marked and top.id in checked:
            marks.whole_again.append(top.id)
            status, info = "available", {}
        else:
            continue
        if dry_run:
            continue
        for b in _family(session, top.id):
            b.status = status
            b.extend_info = {**{k: v for k, v in b.extend_info.items()
                                if k not in (DAMAGED, "damaged_at")}, **info}
            b.updated_at = now
        _update_checkpoint(session, top.checkpoint_id)
    return marks


def forget_backup(session: Session, backup_id: str) -> int:
    """Removes a deleted backup (and its children) from the catalog; its stored bytes."""
    family = _family(session, backup_id)
    if not family:
        return 0
    top = family[0]
    freed = sum(b.stored_bytes for b in family)
    resource = _vault_resource(session, top.vault_id, top.resource_id)
    if resource is not None and top.status in ("deleting", "available"):
        resource.backup_count = max(0, resource.backup_count - 1)
        resource.backup_size_bytes = max(0, resource.backup_size_bytes - freed)
    for b in reversed(family):
        session.delete(b)
    return freed
