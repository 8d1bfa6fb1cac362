"""The commands the controller sends agents, and what it reads of their results.

Every command is a typed ``cbr.v1.Command`` built here, so its shape is
written down once (``protos/cbr/v1/agent.proto``) and checked by the
compiler, not rebuilt from dict keys by each service. A task stores its
command as the message's proto3 JSON (the ``tasks.command`` column) without
the task id and without what the hub adds when it sends it (storage access,
import token): those are secrets and are never stored.

A command's result comes back typed too (``CommandResult.result``); what a
task shows of it, its ``extra_info``, is the result's figures, flattened by
``result_info``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

from google.protobuf import json_format, timestamp_pb2
from google.protobuf.message import Message

from cbr.v1 import agent_pb2, common_pb2
from controller.persistence.models import Backup, Checkpoint, Protectable, Task, Vault
from controller.persistence.vocabulary import ObjectType

# The wire's ObjectType of each object type, in commands and in agents' reports.
OBJECT_TYPES: dict[str, common_pb2.ObjectType] = {
    ObjectType.SERVER: common_pb2.OBJECT_TYPE_SERVER,
    ObjectType.DISK: common_pb2.OBJECT_TYPE_DISK,
    ObjectType.TURBO: common_pb2.OBJECT_TYPE_TURBO,
}


def stored(command: agent_pb2.Command) -> dict[str, Any]:
    """The JSON a task keeps of its command: the action, no task id."""
    body = json_format.MessageToDict(command, always_print_fields_with_no_presence=True)
    body.pop("taskId", None)
    return body


def of(task: Task) -> agent_pb2.Command:
    """The task's command as a message, its task id filled in.

    Raises ``json_format.ParseError`` when the stored JSON is not a Command
    (a row written by a newer controller, or edited by hand).
    """
    return json_format.ParseDict({**task.command, "taskId": task.id}, agent_pb2.Command())


def kind(task: Task) -> str:
    """The command's action (``backup``, ``import``, ...); '' for a task without one."""
    return next(iter(task.command), "") if task.command else ""


def _timestamp(when: dt.datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(when.astimezone(dt.UTC))
    return ts


def sync() -> agent_pb2.Command:
    return agent_pb2.Command(sync=agent_pb2.SyncCommand())


def disk_backup(child: Backup, disk: Mapping[str, Any],
                previous: Backup | None) -> agent_pb2.DiskBackupSpec:
    """One disk of a server backup, sent against the disk's previous backup."""
    return agent_pb2.DiskBackupSpec(
        backup_id=child.id, disk_local_id=str(disk["id"]), name=str(disk["name"]),
        system_disk=bool(disk["system_disk"]), size_bytes=int(disk["size_bytes"]),
        parent_backup_id=previous.id if previous is not None else "",
        parent_manifest_sha256=previous.manifest_sha256 if previous is not None else "")


def backup(vault: Vault, checkpoint: Checkpoint, top: Backup, protectable: Protectable,
           parent: Backup | None, disks: Iterable[agent_pb2.DiskBackupSpec], *,
           auto_trigger: bool, now: dt.datetime) -> agent_pb2.Command:
    return agent_pb2.Command(backup=agent_pb2.BackupCommand(
        vault_id=vault.id, checkpoint_id=checkpoint.id, backup_id=top.id, name=top.name,
        description=top.description, resource_id=protectable.id,
        resource_local_id=protectable.local_id, resource_name=protectable.name,
        resource_type=OBJECT_TYPES.get(protectable.object_type,
                                       common_pb2.OBJECT_TYPE_UNSPECIFIED),
        resource_size_bytes=protectable.size_bytes,
        parent_backup_id=parent.id if parent is not None else "",
        parent_manifest_sha256=parent.manifest_sha256 if parent is not None else "",
        disks=list(disks), auto_trigger=auto_trigger, created_at=_timestamp(now)))


def manifest_digests(family: Iterable[Backup]) -> dict[str, str]:
    """Backup id to the manifest digest the catalog recorded, for each that has one."""
    return {b.id: b.manifest_sha256 for b in family if b.manifest_sha256}


def restore(top: Backup, children: Iterable[Backup], *, source_path: str,
            target_path: str = "", disk_targets: Mapping[str, str] | None = None
            ) -> agent_pb2.Command:
    return agent_pb2.Command(restore=agent_pb2.RestoreCommand(
        backup_id=top.id,
        resource_type=OBJECT_TYPES.get(top.resource_type, common_pb2.OBJECT_TYPE_UNSPECIFIED),
        source_path=source_path, target_path=target_path, disk_targets=disk_targets or {},
        manifest_sha256=manifest_digests((top, *children))))


def replicate(top: Backup, children: Iterable[Backup], *, replica_ids: Mapping[str, str],
              destination_vault_id: str, destination_checkpoint_id: str,
              importer_endpoint: str, importer_server_name: str, ca_certificate_pem: str,
              source_cloud: str, source_region: str, replication_record_id: str,
              retry_seconds: float, expires_at: str) -> agent_pb2.Command:
    """The source agent's half of a replication. ``expires_at`` is the
    target's RFC 3339 answer ('' when it set none)."""
    command = agent_pb2.ReplicateCommand(
        backup_id=top.id, manifest_sha256=manifest_digests((top, *children)),
        replica_ids=dict(replica_ids), destination_vault_id=destination_vault_id,
        destination_checkpoint_id=destination_checkpoint_id,
        importer_endpoint=importer_endpoint, importer_server_name=importer_server_name,
        ca_certificate_pem=ca_certificate_pem, source_cloud=source_cloud,
        source_region=source_region, source_project_id=top.project_id,
        replication_record_id=replication_record_id, retry_seconds=retry_seconds)
    if expires_at:
        command.expires_at.FromJsonString(expires_at)
    return agent_pb2.Command(replicate=command)


def import_(import_id: str, vault_id: str, token_sha256: bytes, replica_ids: Iterable[str],
            expires_at: dt.datetime) -> agent_pb2.Command:
    command = agent_pb2.Command()
    getattr(command, "import").CopyFrom(agent_pb2.ImportCommand(  # a keyword in Python
        import_id=import_id, vault_id=vault_id, token_sha256=token_sha256,
        replica_ids=sorted(replica_ids), expires_at=_timestamp(expires_at)))
    return command


def typed_result(result: agent_pb2.CommandResult | None, action: str) -> Any:
    """The result of the given action, or None when the result carries
    another one or none (a failure, an older agent's result)."""
    if result is None or result.WhichOneof("result") != action:
        return None
    return getattr(result, action)


def result_info(result: agent_pb2.CommandResult) -> dict[str, Any]:
    """What a task shows of its command's result: every figure of the typed
    result, flat; lists of text joined; nested records (the backups a
    backup made, a replica's manifest digests) are left to the catalog."""
    action = result.WhichOneof("result")
    if action is None:
        return {}
    typed: Message = getattr(result, action)
    info: dict[str, Any] = {}
    for field in typed.DESCRIPTOR.fields:
        value = getattr(typed, field.name)
        if field.message_type is not None:
            continue
        if field.is_repeated:
            if value:
                info[field.name] = "; ".join(str(v) for v in value)
        elif not field.has_presence or typed.HasField(field.name):
            info[field.name] = value
    if action == "replicate":
        info["bytes_sent"] = info.get("wire_bytes", 0)  # the progress reports' name
    return info
