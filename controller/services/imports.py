"""The target cloud's side of replication: allowing imports, and registering replicas.

A source cloud asks, with a credential's access key, to import one backup
into a replication vault (``prepare_import``). The target checks its own
rules, picks an online importer agent, and makes an import task for it whose
command carries only the digest of a fresh bearer token; the token itself
goes back to the source once. The replica's ids are fixed here, so a source
that resumes writes the same replica. The replica becomes a backup of the
catalog only when the importer reports the commit (``finish_import``), in
the transaction that ends the import task: until then nothing of it can be
listed, restored or replicated.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from cbr import errors
from cbr.v1 import agent_pb2
from controller.keyring import Keyring
from controller.persistence.models import (
    Account,
    Agent,
    Backup,
    Checkpoint,
    Key,
    ReplicationRecord,
    Task,
    Vault,
)
from controller.persistence.vocabulary import (
    AgentRole,
    BackupStatus,
    CheckpointStatus,
    ImageType,
    ObjectType,
    OperationType,
    ProtectType,
    ReplicationStatus,
    TaskStatus,
    VaultStatus,
)
from controller.services import actions, capacity, commands, keys, tasks

IMPORT_TTL = dt.timedelta(hours=24)
"""How long a source may take to commit one import before the importer
forgets its grant and the import fails, unless the controller's
``--import-ttl`` says otherwise."""

# What replicates across clouds (rule 1).
_REPLICABLE = frozenset({ObjectType.SERVER, ObjectType.TURBO})


def require_replication_actions(granted: frozenset[str]) -> None:
    """Reference rule 11: the credential's user holds all nine actions (old
    names and CBRFullAccess were expanded when the caller was resolved)."""
    for action in actions.REPLICATION_TARGET_ACTIONS:
        if action not in granted:
            raise errors.PermissionDenied(
                f"The target account's user lacks the action {action!r}, which replication "
                "needs; grant it (or CBRFullAccess) on the target cloud.", action=action)


def region_supported(regions: tuple[tuple[str, bool], ...], region: str) -> bool:
    return any(r == region and ok for r, ok in regions)


def check_chunk_keys(chunk_keys: list[tuple[bytes, bytes]]) -> None:
    """The source lineage's chunk-id keys, as (key id, key): one to 16 of them."""
    if not chunk_keys or len(chunk_keys) > 16 or any(
            len(key_id) != 16 or len(key) != 32 for key_id, key in chunk_keys):
        raise errors.InvalidParameter("chunk_keys: one to 16 keys, each a 16-byte id and "
                                      "a 32-byte key.", field="chunk_keys")


@dataclass(frozen=True)
class ImportRequest:
    """What a source says about the backup it wants to replicate."""

    source_record_id: str
    source_cloud: str
    source_region: str
    source_project_id: str
    source_vault_id: str
    source_checkpoint_id: str
    destination_region: str
    destination_vault_id: str
    backup: dict[str, Any]  # ImportedBackup as JSON: ids, names, type, children
    encrypted: bool
    auto_trigger: bool


@dataclass(frozen=True)
class ImportPlan:
    record: ReplicationRecord
    task: Task
    importer: Agent
    token: str


def _walk(backup: dict[str, Any]) -> list[dict[str, Any]]:
    return [backup, *backup.get("children", [])]


def _check_backup(doc: dict[str, Any]) -> None:
    """The shape of what the source sent; the source checked its own rules,
    but a target trusts nothing it did not check."""
    kind = str(doc.get("resourceType", ""))
    if kind not in _REPLICABLE:
        raise errors.ReplicationNotAllowedForType(
            f"Only server and file-system backups replicate; got resource type {kind!r}.")
    seen: set[str] = set()
    for item in _walk(doc):
        sid = str(item.get("sourceBackupId", ""))
        if not sid or len(sid) > 36 or sid in seen:
            raise errors.InvalidParameter("Every imported backup needs a distinct "
                                          "source_backup_id of at most 36 characters.",
                                          field="backup.source_backup_id")
        seen.add(sid)
    if kind == ObjectType.SERVER:
        children = doc.get("children", [])
        if not children or not any(c.get("systemDisk") for c in children):
            raise errors.NotEcsBackup("A server backup replicates only with its system disk.")
    elif doc.get("children"):
        raise errors.InvalidParameter("A file-system backup has no children.",
                                      field="backup.children")


def _destination_vault(session: Session, project_id: str, vault_id: str, region: str,
                       kind: str) -> Vault:
    vault = session.get(Vault, vault_id) if vault_id else None
    if vault is None or vault.project_id != project_id:
        raise errors.VaultNotFound(f"No vault {vault_id!r} in the target account.",
                                   vault_id=vault_id)
    if vault.protect_type != ProtectType.REPLICATION:
        raise errors.ReplicationNotAllowedForType(
            f"Vault {vault.name!r} is a backup vault; replicas go only to replication vaults.")
    if vault.object_type != kind:
        raise errors.ResourceTypeMismatch(
            f"Vault {vault.name!r} holds {vault.object_type} backups, not {kind} backups.")
    if vault.region != region:
        raise errors.InvalidParameter(
            f"Vault {vault.name!r} is in region {vault.region}, not {region}.",
            field="destination_vault_id")
    if vault.status != VaultStatus.AVAILABLE:
        raise errors.VaultStatusIllegal(f"Vault {vault.name!r} is {vault.status}.")
    return vault


def _check_encryption(session: Session, vault: Vault, req: ImportRequest,
                      now: dt.datetime) -> None:
    """Rules 8-10 as the target sees them."""
    if req.encrypted and not vault.encrypted:
        raise errors.ReplicaEncryptionMismatch(
            f"Backup {req.backup['sourceBackupId']} is encrypted; it replicates only into an "
            f"encrypted replication vault, and {vault.name!r} is not.")
    if vault.encrypted:
        key = session.get(Key, vault.kms_key_id)
        if key is not None and key.project_id != vault.project_id:
            raise errors.SharedKeyNotAllowed(
                f"Vault {vault.name!r} uses key {key.alias}, shared from another account.",
                key_id=key.id)
        keys.check_vault_key(session, vault, now)
    # The resource's earlier replicas in this account fix the encryption of
    # every later one: the same key, or none. Imports still on their way
    # count as replicas already (the caller holds the account's lock).
    resource_id = str(req.backup.get("resourceId", ""))
    earlier: list[tuple[bool, str, str]] = [(e, k, n) for e, k, n in session.execute(
        select(Vault.encrypted, Vault.kms_key_id, Vault.name)
        .join(Backup, Backup.vault_id == Vault.id)
        .where(Backup.project_id == vault.project_id,
               Backup.image_type == ImageType.REPLICATION,
               Backup.parent_id.is_(None), Backup.resource_id == resource_id)
        .limit(50))]
    for record in session.scalars(select(ReplicationRecord).where(
            ReplicationRecord.project_id == vault.project_id,
            ReplicationRecord.status == ReplicationStatus.REPLICATING)):
        backup = record.extra_info.get("backup")
        if record.extra_info.get("side") == "target" and isinstance(backup, dict) \
                and str(backup.get("resourceId", "")) == resource_id:
            into = session.get(Vault, record.vault_id)
            if into is not None:
                earlier.append((into.encrypted, into.kms_key_id, into.name))
    for encrypted, key_id, name in earlier:
        if encrypted and (not vault.encrypted or vault.kms_key_id != key_id):
            raise errors.ReplicaEncryptionMismatch(
                f"Resource {resource_id} already has a replica in vault {name!r}, encrypted "
                f"with key {key_id}; its other backups may go only to vaults with that key.")
        if not encrypted and vault.encrypted:
            raise errors.ReplicaEncryptionMismatch(
                f"Resource {resource_id} already has a replica in the unencrypted vault "
                f"{name!r}; its other backups may not go to an encrypted vault.")


def _existing_replica(session: Session, project_id: str, source_cloud: str,
                      source_backup_id: str, region: str) -> str | None:
    """Rule 6: one replica of a backup per region (available, or on its way)."""
    for backup in session.scalars(select(Backup).where(
            Backup.project_id == project_id, Backup.image_type == ImageType.REPLICATION,
            Backup.parent_id.is_(None),
            Backup.status.in_((BackupStatus.AVAILABLE, BackupStatus.RESTORING)))):
        info = backup.extend_info
        if info.get("source_backup_id") == source_backup_id \
                and info.get("source_cloud") == source_cloud:
            vault = session.get(Vault, backup.vault_id)
            if vault is not None and vault.region == region:
                return backup.id
    pending = session.scalars(select(ReplicationRecord).where(
        ReplicationRecord.project_id == project_id,
        ReplicationRecord.source_backup_id == source_backup_id,
        ReplicationRecord.destination_region == region,
        ReplicationRecord.status == ReplicationStatus.REPLICATING)).all()
    for record in pending:
        if record.extra_info.get("source_cloud") == source_cloud:
            return record.destination_backup_id
    return None


def pick_importer(session: Session, online: set[str]) -> Agent:
    """An online importer; the least busy one, so imports spread."""
    importers = session.scalars(select(Agent).where(
        Agent.role == AgentRole.IMPORTER, Agent.revoked.is_(False))).all()
    candidates = [a for a in importers if a.id in online and a.endpoint]
    if not candidates:
        raise errors.NoImporter("Start one with `cbr-agent --role importer` on the target "
                                "cloud, enrolled with its controller.")
    busy = {a.id: 0 for a in candidates}
    for agent_id in session.scalars(select(Task.agent_id).where(
            Task.agent_id.in_(busy), Task.status.in_(tasks.OPEN_STATUSES))):
        busy[agent_id] += 1
    return min(candidates, key=lambda a: (busy[a.id], a.id))


def _seal_token(keyring: Keyring, record_id: str, token: str) -> str:
    return base64.b64encode(keyring.seal(token.encode(), f"import:{record_id}".encode())).decode()


def unseal_token(keyring: Keyring, record: ReplicationRecord) -> str:
    sealed = base64.b64decode(str(record.extra_info.get("token_sealed", "")))
    return keyring.unseal(sealed, f"import:{record.id}".encode()).decode()


def prepare_import(session: Session, keyring: Keyring, project_id: str, req: ImportRequest, *,
                   regions: tuple[tuple[str, bool], ...], online: set[str],
                   now: dt.datetime, ttl: dt.timedelta = IMPORT_TTL) -> ImportPlan:
    """Checks the target's rules and allows one import (the same one again
    for a source record it has seen).

    Decided one at a time per account: rules 6 and 8 count imports still
    on their way, so two imports racing must not both read before either
    writes (SQLite has one writer; PostgreSQL takes the account's row lock)."""
    session.get(Account, project_id, with_for_update=True)
    previous = session.scalars(select(ReplicationRecord).where(
        ReplicationRecord.project_id == project_id,
        ReplicationRecord.source_project_id == req.source_project_id,
        ReplicationRecord.source_backup_id == req.backup.get("sourceBackupId", ""),
        ReplicationRecord.status == ReplicationStatus.REPLICATING)).all()
    for record in previous:
        if record.extra_info.get("source_record_id") == req.source_record_id:
            task = session.get(Task, str(record.extra_info.get("task_id", "")))
            importer = session.get(Agent, task.agent_id) if task is not None else None
            if task is not None and importer is not None:
                return ImportPlan(record, task, importer, unseal_token(keyring, record))
    if not region_supported(regions, req.destination_region):
        accepting = ", ".join(r for r, ok in regions if ok) or "none"
        known = any(r == req.destination_region for r, _ok in regions)
        raise errors.RegionNotSupported(
            f"Region {req.destination_region!r} of the target cloud does not accept "
            f"replicas; these do: {accepting}." if known else
            f"The target cloud has no region {req.destination_region!r}; its regions that "
            f"accept replicas: {accepting}.")
    _check_backup(req.backup)
    kind = ObjectType(str(req.backup["resourceType"]))
    vault = _destination_vault(session, project_id, req.destination_vault_id,
                               req.destination_region, kind)
    source_backup_id = str(req.backup["sourceBackupId"])
    existing = _existing_replica(session, project_id, req.source_cloud, source_backup_id,
                                 req.destination_region)
    if existing is not None:
        raise errors.AlreadyReplicated(
            f"Backup {source_backup_id} already has replica {existing} in region "
            f"{req.destination_region}; delete that replica to replicate it again.")
    _check_encryption(session, vault, req, now)
    importer = pick_importer(session, online)
    replica_ids = {str(item["sourceBackupId"]): str(uuid.uuid4()) for item in _walk(req.backup)}
    checkpoint_id = str(uuid.uuid4())
    expires = now + ttl
    token = secrets.token_urlsafe(32)
    record = ReplicationRecord(
        id=str(uuid.uuid4()), project_id=project_id, status=ReplicationStatus.REPLICATING,
        vault_id=vault.id,
        source_region=req.source_region, source_project_id=req.source_project_id,
        source_backup_id=source_backup_id, source_checkpoint_id=req.source_checkpoint_id,
        destination_region=req.destination_region, destination_project_id=project_id,
        destination_vault_id=vault.id, destination_backup_id=replica_ids[source_backup_id],
        destination_checkpoint_id=checkpoint_id, created_at=now, updated_at=now)
    record.extra_info = {
        "side": "target", "source_record_id": req.source_record_id,
        "source_cloud": req.source_cloud, "source_vault_id": req.source_vault_id,
        "replica_ids": replica_ids, "backup": req.backup, "encrypted": req.encrypted,
        "auto_trigger": req.auto_trigger, "expires_at": expires.isoformat(),
        "token_sealed": _seal_token(keyring, record.id, token), "progress": 0}
    session.add(record)
    session.flush()
    task = tasks.create_task(
        session, project_id=project_id, operation_type=OperationType.REPLICATION, now=now,
        agent_id=importer.id, vault_id=vault.id, vault_name=vault.name,
        resource_id=str(req.backup.get("resourceId", "")),
        resource_name=str(req.backup.get("resourceName", "")),
        command=commands.import_(record.id, vault.id, hashlib.sha256(token.encode()).digest(),
                                 replica_ids.values(), expires),
        extra_info={"replication_record_id": record.id, "side": "target",
                    "source_cloud": req.source_cloud, "source_backup_id": source_backup_id,
                    "destination_backup_id": record.destination_backup_id,
                    "destination_region": req.destination_region})
    record.extra_info = {**record.extra_info, "task_id": task.id}
    return ImportPlan(record, task, importer, token)


def get_import(session: Session, project_id: str, import_id: str) -> ReplicationRecord:
    record = session.get(ReplicationRecord, import_id) if import_id else None
    if record is None or record.project_id != project_id \
            or record.extra_info.get("side") != "target":
        raise errors.ResourceNotFound(f"No import {import_id!r} in this account.")
    return record


def abort_import(session: Session, project_id: str, import_id: str, reason: str,
                 now: dt.datetime) -> Task | None:
    """Fails an import that is not committed; the importer drops its grant.
    Returns the import task when the importer must be told."""
    record = get_import(session, project_id, import_id)
    if record.status != ReplicationStatus.REPLICATING:
        return None
    task = session.get(Task, str(record.extra_info.get("task_id", "")))
    _fail(record, errors.Conflict.code, reason or "aborted by the source cloud", now)
    if task is not None and task.status not in tasks.FINAL_STATUSES:
        tasks.finish_task(session, task.id, TaskStatus.FAILED, now,
                          error_code=errors.Conflict.code,
                          error_message=reason or "aborted by the source cloud")
        return task
    return None


def _fail(record: ReplicationRecord, code: str, reason: str, now: dt.datetime) -> None:
    record.status = ReplicationStatus.FAIL
    record.extra_info = {**record.extra_info, "fail_code": code, "fail_reason": reason}
    record.updated_at = now


def finish_import(session: Session, task: Task, result: agent_pb2.ImportResult | None,
                  now: dt.datetime) -> None:
    """The importer's end of an import: on success the replica joins the
    catalog (checkpoint, backup and its disks, usage) in this transaction."""
    record = session.get(ReplicationRecord, str(task.extra_info.get("replication_record_id")))
    if record is None or record.status != ReplicationStatus.REPLICATING:
        return
    if task.status != TaskStatus.SUCCESS:
        _fail(record, task.error_code or errors.InternalError.code,
              task.error_message or "the import failed", now)
        return
    if result is None:
        _fail(record, errors.InternalError.code, "the importer's report is malformed", now)
        return
    manifests = dict(result.manifest_sha256)
    added = result.bytes_stored
    info = record.extra_info
    ids: dict[str, str] = dict(info["replica_ids"])
    doc: dict[str, Any] = info["backup"]
    if set(ids.values()) - manifests.keys():
        _fail(record, errors.DataIntegrityError.code, "the importer committed fewer manifests than "
              "the replica has", now)
        return
    vault = session.get(Vault, record.destination_vault_id)
    if vault is None:
        _fail(record, errors.VaultNotFound.code, "the replication vault was deleted", now)
        return
    auto = bool(info.get("auto_trigger"))
    session.add(Checkpoint(
        id=record.destination_checkpoint_id, project_id=record.project_id, vault_id=vault.id,
        name=str(doc.get("name", ""))[:64], description=str(doc.get("description", ""))[:255],
        status=CheckpointStatus.AVAILABLE, auto_trigger=auto, created_at=now))
    # What the import added to storage is the replica's own; its disks share
    # one transfer, so the server's backup carries the whole amount.
    top = _replica_row(record, vault, doc, ids, manifests, None, now)
    top.stored_bytes = added
    session.add(top)
    session.flush()
    for child in doc.get("children", []):
        row = _replica_row(record, vault, child, ids, manifests, top.id, now)
        row.resource_id = top.resource_id  # a disk's backup names its server, as at the source
        session.add(row)
    vault.used_bytes += added
    capacity.usage_changed(session, vault, now)
    record.status = ReplicationStatus.SUCCESS
    record.extra_info = {**info, "progress": 100}
    record.updated_at = now


def _replica_row(record: ReplicationRecord, vault: Vault, doc: dict[str, Any],
                 ids: dict[str, str], manifests: dict[str, str], parent_id: str | None,
                 now: dt.datetime) -> Backup:
    source_id = str(doc["sourceBackupId"])
    replica_id = ids[source_id]
    protected = doc.get("protectedAt")
    info: dict[str, Any] = {
        "source_backup_id": source_id, "source_cloud": record.extra_info.get("source_cloud"),
        "source_region": record.source_region, "source_project_id": record.source_project_id,
        "source_vault_id": record.extra_info.get("source_vault_id"),
        "replication_record_id": record.id, "encrypted": bool(vault.encrypted),
        "auto_trigger": bool(record.extra_info.get("auto_trigger"))}
    if parent_id is not None:
        info["system_disk"] = bool(doc.get("systemDisk"))
        info["disk_id"] = str(doc.get("resourceId", ""))
    elif doc.get("resourceType") == ObjectType.SERVER:
        info["contain_system_disk"] = True
    return Backup(
        id=replica_id, project_id=record.project_id, vault_id=vault.id,
        checkpoint_id=record.destination_checkpoint_id, parent_id=parent_id,
        name=str(doc.get("name", ""))[:64], description=str(doc.get("description", ""))[:255],
        resource_id=str(doc.get("resourceId", ""))[:36],
        resource_name=str(doc.get("resourceName", ""))[:255],
        resource_type=ObjectType.DISK if parent_id is not None else str(doc["resourceType"]),
        resource_size_bytes=int(doc.get("resourceSizeBytes", 0) or 0),
        status=BackupStatus.AVAILABLE, image_type=ImageType.REPLICATION,
        incremental=bool(doc.get("incremental")),
        stored_bytes=0, manifest_sha256=manifests[replica_id],
        extend_info=info,
        protected_at=dt.datetime.fromisoformat(str(protected).replace("Z", "+00:00"))
        if protected else now,
        created_at=now, updated_at=now)
