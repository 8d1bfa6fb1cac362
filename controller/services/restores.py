"""Restores: where a backup may be written back, checked against the
caller's account and the host's restore roots, and the catalog changes a
restore makes (the backup ``restoring`` until its task ends).

Everything here runs inside the caller's transaction and does no I/O.
"""

from __future__ import annotations

import datetime as dt
import json
import posixpath
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from cbr import errors
from controller.persistence.models import (
    Agent,
    Backup,
    Protectable,
    Task,
    Vault,
    VaultResource,
)
from controller.persistence.vocabulary import (
    AgentRole,
    BackupStatus,
    ObjectType,
    OperationType,
    ProtectStatus,
)
from controller.services import backups, commands, keys, tasks
from controller.services.deletions import DAMAGED
from controller.services.runs import Dispatch, busy_backup, vault_resource


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
    if backup.status != BackupStatus.AVAILABLE:
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
    if source_path and kind != ObjectType.TURBO:
        raise errors.InvalidParameter("source_path is only for file-system backups.",
                                      field="source_path")
    target_path = ""
    targets: dict[str, str] = {}
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
        if kind == ObjectType.SERVER:
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
        else:
            target_path = _allowed_target(
                session, agent, _absolute(req.target_path, "target_path"), "target_path",
                device=kind == ObjectType.DISK or bool(backup.parent_id))
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
        target_kind = ObjectType.DISK if backup.parent_id else kind
        if target_resource.object_type != target_kind and not (
                target_kind == ObjectType.DISK and backup.parent_id
                and target_resource.id == rid):
            raise errors.ResourceTypeMismatch(
                f"A {kind} backup cannot restore into {target_resource.object_type} "
                f"{target_resource.name}.", resource_id=rid)
        if encrypted and target_resource.id != backup.resource_id:
            _require_encrypted_target(session, backup, target_resource)
        busy = busy_backup(session, target_resource.id)
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
        if kind == ObjectType.SERVER:
            by_disk = {d["id"]: d for d in target_resource.disks}
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
        elif kind == ObjectType.DISK or backup.parent_id:
            if target_resource.size_bytes < backup.resource_size_bytes:
                raise errors.RestoreTargetTooSmall(
                    f"Disk {target_resource.name} has {target_resource.size_bytes} bytes; "
                    f"the backup needs {backup.resource_size_bytes}.",
                    resource_id=target_resource.id)
            target_path = target_resource.path or next(
                (d["path"] for d in target_resource.disks), "")
        else:
            target_path = target_resource.path
    if agent_id not in online:
        raise errors.AgentUnavailable(
            f"Agent {agent_id} is offline; restore when it is connected.", agent_id=agent_id)
    backup.status = BackupStatus.RESTORING
    backup.updated_at = now
    if target_resource is not None:
        resource = vault_resource(session, backup.vault_id, target_resource.id)
        if resource is not None:
            resource.protect_status = ProtectStatus.RESTORING
    task = tasks.create_task(
        session, project_id=project_id, operation_type=OperationType.RESTORE, now=now,
        agent_id=agent_id,
        vault_id=backup.vault_id, resource_id=target_resource.id if target_resource else "",
        resource_name=target_resource.name if target_resource else "",
        command=commands.restore(backup, children, source_path=source_path,
                                 target_path=target_path, disk_targets=targets),
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
    if agent.role != AgentRole.HOST:
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
            paths = [resource.path] if resource.object_type == ObjectType.DISK else []
            paths += [str(d.get("path", "")) for d in resource.disks]
            if normal in (posixpath.normpath(p) for p in paths if p):
                return path
        elif resource.object_type == ObjectType.TURBO and resource.path \
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
    if backup is not None and backup.status == BackupStatus.RESTORING:
        backup.status = BackupStatus.AVAILABLE
        backup.updated_at = now
    if backup is not None and task.resource_id:
        resource = vault_resource(session, backup.vault_id, task.resource_id)
        if resource is not None and resource.protect_status == ProtectStatus.RESTORING:
            resource.protect_status = ProtectStatus.AVAILABLE if success else ProtectStatus.ERROR
