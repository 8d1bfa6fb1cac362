"""The source cloud's side of replication: its rules, its records and its tasks.

The reference's cross-cloud rules are checked where the facts are: this side
knows its backups and the records of where they went (rules 1, 2, 5, 6, 7);
the target knows its regions, vaults, keys and replicas (rules 4, 6, 8-11)
and refuses in ``controller.services.imports``. A replication is a source
record plus a task for a source host agent, made in one transaction once the
target has allowed the import; the agent streams to the target's importer.
"""

from __future__ import annotations

import base64
import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from cbr import errors
from cbr.v1 import agent_pb2
from controller.keyring import Keyring
from controller.persistence.models import (
    Agent,
    Backup,
    Credential,
    Protectable,
    ReplicationRecord,
    Task,
    Vault,
)
from controller.persistence.vocabulary import (
    AgentRole,
    BackupStatus,
    ImageType,
    ObjectType,
    OperationType,
    ReplicationStatus,
    TaskStatus,
)
from controller.services import (
    backups,
    commands,
    credentials,
    events,
    paging,
    retention,
    tasks,
    vaults,
)

# A backup with a record in one of these went (or is going) to its destination.
ACTIVE = frozenset({ReplicationStatus.REPLICATING, ReplicationStatus.SUCCESS})


def _rfc3339(when: dt.datetime | None) -> str:
    if when is None:
        return ""
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def check_replicable(session: Session, backup: Backup, credential: Credential,
                     region: str) -> None:
    """Rules 1, 2, 5, 6 and 7 for one backup, with the reference's codes."""
    if backup.parent_id is not None:
        raise errors.ReplicationNotAllowedForType(
            f"Backup {backup.id} is one disk of a server backup; replicate the server "
            f"backup {backup.parent_id}.")
    if backup.resource_type == ObjectType.DISK:
        raise errors.ReplicationNotAllowedForType(
            "Disk backups do not replicate; only server and file-system backups do.")
    if backup.status != BackupStatus.AVAILABLE:
        raise errors.BackupStatusIllegal(
            f"Backup {backup.id} is {backup.status}; only available backups replicate.",
            backup_id=backup.id)
    if backup.resource_type == ObjectType.SERVER:
        disks = backups.children(session, backup.id)
        if not backup.extend_info.get("contain_system_disk") \
                or not any(d.extend_info.get("system_disk") for d in disks):
            raise errors.NotEcsBackup(
                f"Server backup {backup.id} does not contain the system disk.")
    if backup.image_type == ImageType.REPLICATION:
        home = str(backup.extend_info.get("source_cloud", ""))
        if credential.target_cloud != home:
            raise errors.ReplicationNotAllowedForType(
                f"Backup {backup.id} is a replica from cloud {home!r}; a replica replicates "
                "only back to the cloud it came from, not onward.")
    records = session.scalars(select(ReplicationRecord).where(
        ReplicationRecord.source_backup_id == backup.id,
        ReplicationRecord.project_id == backup.project_id,
        ReplicationRecord.status.in_(ACTIVE))).all()
    for r in records:
        if r.extra_info.get("side") != "source":
            continue
        if r.destination_project_id != credential.target_account_id:
            raise errors.ProjectNotSupported(
                f"Backup {backup.id} was replicated to account {r.destination_project_id}; a "
                "backup replicates to one account only.")
        if r.destination_region == region and r.status == ReplicationStatus.REPLICATING:
            raise errors.AlreadyReplicated(
                f"Backup {backup.id} is being replicated to {region} (record {r.id}).")


def check_vault_request(session: Session, project_id: str, vault_id: str,
                        credential_id: str, region: str) -> None:
    """What a caller's vault replication must have before the target is asked."""
    vault = vaults.get_vault(session, project_id, vault_id)
    if vault.object_type == ObjectType.DISK:
        raise errors.ReplicationNotAllowedForType(
            "Disk vaults cannot replicate; only server and file-system (turbo) vaults.")
    credentials.get_credential(session, project_id, credential_id)
    if not region:
        raise errors.InvalidParameter("destination_region is required.",
                                      field="destination_region")


def vault_replicated_before(session: Session, backup: Backup, region: str) -> bool:
    """Rule 6 for vault replication: a backup that went to ``region`` once
    never goes there again by a vault replication, even after its replica
    was deleted."""
    return session.scalar(select(ReplicationRecord.id).where(
        ReplicationRecord.source_backup_id == backup.id,
        ReplicationRecord.project_id == backup.project_id,
        ReplicationRecord.destination_region == region,
        ReplicationRecord.status.in_(ACTIVE)).limit(1)) is not None


def vault_backups(session: Session, vault: Vault) -> list[Backup]:
    """The backups a vault replication considers, oldest first."""
    return list(session.scalars(select(Backup).where(
        Backup.vault_id == vault.id, Backup.parent_id.is_(None))
        .order_by(Backup.created_at, Backup.id)))


def imported_backup(session: Session, backup: Backup) -> dict[str, Any]:
    """The backup as the target's PrepareImport reads it (ImportedBackup, JSON names)."""

    def one(b: Backup, resource_id: str) -> dict[str, Any]:
        return {"sourceBackupId": b.id, "name": b.name, "description": b.description,
                "resourceId": resource_id, "resourceName": b.resource_name,
                "resourceType": b.resource_type, "resourceSizeBytes": str(b.resource_size_bytes),
                "systemDisk": bool(b.extend_info.get("system_disk")),
                "incremental": b.incremental, "protectedAt": _rfc3339(b.protected_at)}

    doc = one(backup, backup.resource_id)
    kids = backups.children(session, backup.id)
    if kids:
        doc["children"] = [one(c, str(c.extend_info.get("disk_id", c.id))) for c in kids]
    return doc


def pick_source_agent(session: Session, backup: Backup, online: set[str]) -> str:
    """The host agent that reads the source vault: the one protecting the
    resource when it is online, else any online host agent of the account."""
    owner = session.scalar(select(Protectable.agent_id).where(
        Protectable.id == backup.resource_id))
    if owner and owner in online:
        return owner
    hosts = session.scalars(select(Agent.id).where(
        Agent.project_id == backup.project_id, Agent.role == AgentRole.HOST,
        Agent.revoked.is_(False)).order_by(Agent.id)).all()
    for agent_id in hosts:
        if agent_id in online:
            return agent_id
    raise errors.AgentUnavailable(
        "No host agent of this account is online to read the source vault; start one.")


@dataclass(frozen=True)
class Plan:
    """What the target answered to PrepareImport."""

    import_id: str
    target_task_id: str
    destination_checkpoint_id: str
    destination_project_id: str
    replica_ids: dict[str, str]
    importer_endpoint: str
    importer_server_name: str
    ca_certificate_pem: str
    import_token: str
    expires_at: str


def start(session: Session, keyring: Keyring, *, record_id: str, backup: Backup,
          vault: Vault, credential: Credential, region: str, source_region: str,
          destination_vault_id: str, agent_id: str, plan: Plan, auto_trigger: bool, via: str,
          now: dt.datetime, source_cloud: str, retry_seconds: float, policy_id: str = ""
          ) -> tuple[ReplicationRecord, Task]:
    """The source record and the agent's task, once the target said yes."""
    check_replicable(session, backup, credential, region)
    kids = backups.children(session, backup.id)
    record = ReplicationRecord(
        id=record_id, project_id=backup.project_id, status=ReplicationStatus.REPLICATING,
        vault_id=vault.id,
        source_region=source_region, source_project_id=backup.project_id,
        source_backup_id=backup.id, source_checkpoint_id=backup.checkpoint_id,
        destination_region=region, destination_project_id=plan.destination_project_id,
        destination_vault_id=destination_vault_id,
        destination_backup_id=plan.replica_ids.get(backup.id, ""),
        destination_checkpoint_id=plan.destination_checkpoint_id, created_at=now,
        updated_at=now)
    record.extra_info = {
        "side": "source", "credential_id": credential.id, "import_id": plan.import_id,
        "target_task_id": plan.target_task_id, "auto_trigger": auto_trigger, "via": via,
        "target_cloud": credential.target_cloud, "progress": 0, "policy_id": policy_id,
        "token_sealed": base64.b64encode(keyring.seal(
            plan.import_token.encode(), f"replicate:{record_id}".encode())).decode()}
    session.add(record)
    session.flush()
    command = commands.replicate(
        backup, kids, replica_ids=plan.replica_ids, destination_vault_id=destination_vault_id,
        destination_checkpoint_id=plan.destination_checkpoint_id,
        importer_endpoint=plan.importer_endpoint, importer_server_name=plan.importer_server_name,
        ca_certificate_pem=plan.ca_certificate_pem, source_cloud=source_cloud,
        source_region=source_region, replication_record_id=record.id,
        retry_seconds=retry_seconds, expires_at=plan.expires_at)
    task = tasks.create_task(
        session, project_id=backup.project_id, operation_type=OperationType.REPLICATION,
        now=now,
        agent_id=agent_id, vault_id=vault.id, vault_name=vault.name,
        resource_id=backup.resource_id, resource_name=backup.resource_name,
        checkpoint_id=backup.checkpoint_id, policy_id=policy_id,
        command=command,
        extra_info={"replication_record_id": record.id, "side": "source",
                    "source_backup_id": backup.id, "destination_region": region,
                    "destination_vault_id": destination_vault_id,
                    "destination_backup_id": record.destination_backup_id,
                    "destination_project_id": plan.destination_project_id})
    record.extra_info = {**record.extra_info, "task_id": task.id}
    return record, task


def skip_record(session: Session, *, backup: Backup, vault: Vault, region: str,
                destination_vault_id: str, destination_project_id: str, source_region: str,
                code: str, reason: str, auto_trigger: bool, now: dt.datetime
                ) -> ReplicationRecord:
    """A vault replication's backup that a rule keeps from going: a ``skip``
    record saying which rule, so the history explains the gap."""
    record = ReplicationRecord(
        id=str(uuid.uuid4()), project_id=backup.project_id, status=ReplicationStatus.SKIP,
        vault_id=vault.id,
        source_region=source_region, source_project_id=backup.project_id,
        source_backup_id=backup.id, source_checkpoint_id=backup.checkpoint_id,
        destination_region=region, destination_project_id=destination_project_id,
        destination_vault_id=destination_vault_id, created_at=now, updated_at=now)
    record.extra_info = {"side": "source", "fail_code": code, "fail_reason": reason,
                         "auto_trigger": auto_trigger, "via": "vault"}
    session.add(record)
    return record


def unseal_token(keyring: Keyring, record: ReplicationRecord) -> str:
    sealed = base64.b64decode(str(record.extra_info.get("token_sealed", "")))
    return keyring.unseal(sealed, f"replicate:{record.id}".encode()).decode()


def transfer_done(session: Session, task: Task, result: agent_pb2.ReplicateResult | None,
                  now: dt.datetime) -> ReplicationRecord | None:
    """The source agent's end of a transfer. Success means the importer
    committed the replica's manifests; the record turns ``success`` only
    when the target says the replica is in its catalog (the replicator
    asks). Returns the record when the target must be asked or told."""
    record = session.get(ReplicationRecord, str(task.extra_info.get("replication_record_id")))
    if record is None or record.status != ReplicationStatus.REPLICATING:
        return None
    extra = dict(record.extra_info)
    if task.status == TaskStatus.SUCCESS:
        extra.update(stage="committed", progress=99)
        if result is not None:
            extra.update(wire_bytes=result.wire_bytes, chunks_sent=result.chunks_sent,
                         bytes_stored=result.bytes_stored, raw_bytes_sent=result.raw_bytes_sent)
    else:
        record.status = ReplicationStatus.FAIL
        extra.update(stage="aborting", fail_code=task.error_code or errors.InternalError.code,
                     fail_reason=task.error_message or "the transfer failed")
    record.extra_info = extra
    record.updated_at = now
    events.replication_finished(session, record, now)
    return record


def confirmed(session: Session, record_id: str, target: dict[str, Any],
              now: dt.datetime) -> None:
    """What the target said of a committed import: success, fail, or not yet."""
    record = session.get(ReplicationRecord, record_id)
    if record is None or record.status != ReplicationStatus.REPLICATING:
        return
    extra = dict(record.extra_info)
    status = target.get("status", "")
    if status == ReplicationStatus.SUCCESS:
        record.status = ReplicationStatus.SUCCESS
        record.destination_backup_id = target.get("destination_backup_id",
                                                  record.destination_backup_id)
        record.destination_checkpoint_id = target.get("destination_checkpoint_id",
                                                      record.destination_checkpoint_id)
        extra.update(progress=100, stage="done")
    elif status == ReplicationStatus.FAIL:
        record.status = ReplicationStatus.FAIL
        extra.update(stage="done", fail_code=target.get("fail_code", errors.InternalError.code),
                     fail_reason=target.get("fail_reason", "the target refused the replica"))
    else:
        return
    record.extra_info = extra
    record.updated_at = now
    events.replication_finished(session, record, now)


def aborted(session: Session, record_id: str, now: dt.datetime) -> None:
    record = session.get(ReplicationRecord, record_id)
    if record is not None and record.extra_info.get("stage") == "aborting":
        record.extra_info = {**record.extra_info, "stage": "done"}
        record.updated_at = now


def expired_replicas(session: Session, record: ReplicationRecord, od: dict[str, Any],
                     now: dt.datetime) -> list[tuple[str, str, str]]:
    """The replication policy's retention over the replicas it made of one
    vault in one destination vault: (record id, replica id, rule) to delete
    on the target. The rules are the backup policy's, applied to the
    replicas by the protected time of their source backups."""
    records = session.scalars(select(ReplicationRecord).where(
        ReplicationRecord.project_id == record.project_id,
        ReplicationRecord.vault_id == record.vault_id,
        ReplicationRecord.destination_vault_id == record.destination_vault_id,
        ReplicationRecord.status == ReplicationStatus.SUCCESS)).all()
    candidates: list[retention.Candidate] = []
    by_replica: dict[str, ReplicationRecord] = {}
    for r in records:
        extra = r.extra_info
        if extra.get("side") != "source" or extra.get("replica_deleted") \
                or not r.destination_backup_id:
            continue
        source = session.get(Backup, r.source_backup_id)
        protected = (source.protected_at if source is not None and source.protected_at
                     else r.created_at)
        resource = source.resource_id if source is not None else r.source_backup_id
        by_replica[r.destination_backup_id] = r
        candidates.append(retention.Candidate(
            backup_id=r.destination_backup_id, resource_id=resource, protected_at=protected,
            auto=bool(extra.get("auto_trigger"))))
    return [(by_replica[e.backup_id].id, e.backup_id, e.rule)
            for e in retention.select_expired(candidates, od, now)]


def replica_deleted(session: Session, record_id: str, rule: str, now: dt.datetime) -> None:
    record = session.get(ReplicationRecord, record_id)
    if record is not None:
        record.extra_info = {**record.extra_info, "replica_deleted": rule}
        record.updated_at = now


# -- the records as the API shows them ---------------------------------------------------


@dataclass(frozen=True)
class RecordView:
    """A record and, while it replicates, its transfer task's progress (the
    agent reports progress to the task; the record learns it at the end)."""

    record: ReplicationRecord
    task_progress: int | None


def record_views(session: Session, records: Sequence[ReplicationRecord]) -> list[RecordView]:
    task_ids = {str(r.extra_info.get("task_id")) for r in records
                if r.status == "replicating" and r.extra_info.get("task_id")}
    progress = dict(session.execute(select(Task.id, Task.progress).where(
        Task.id.in_(task_ids))).tuples().all()) if task_ids else {}
    return [RecordView(r, progress.get(str(r.extra_info.get("task_id")), 0)
                       if r.status == ReplicationStatus.REPLICATING else None) for r in records]


def get_record(session: Session, project_id: str, record_id: str) -> RecordView:
    r = session.get(ReplicationRecord, record_id) if record_id else None
    if r is None or r.project_id != project_id:
        raise errors.ResourceNotFound(f"No replication record {record_id!r}.")
    return record_views(session, [r])[0]


@dataclass(frozen=True)
class RecordFilter:
    vault_id: str = ""
    source_backup_id: str = ""
    destination_region: str = ""
    status: str = ""
    newest_first: bool = False


def list_records(session: Session, project_id: str, f: RecordFilter, page_size: int,
                 page_token: str) -> tuple[list[RecordView], str, int]:
    """A page of the account's records matching f: (views, next_page_token, total)."""
    stmt = select(ReplicationRecord).where(ReplicationRecord.project_id == project_id)
    for column, value in ((ReplicationRecord.vault_id, f.vault_id),
                          (ReplicationRecord.source_backup_id, f.source_backup_id),
                          (ReplicationRecord.destination_region, f.destination_region),
                          (ReplicationRecord.status, f.status)):
        if value:
            stmt = stmt.where(column == value)
    items, token, total = paging.paginate(session, stmt, ReplicationRecord, page_size,
                                          page_token, newest_first=f.newest_first)
    return record_views(session, items), token, total
