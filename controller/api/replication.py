"""ReplicationService: replication records, and replication once the data path exists."""

from __future__ import annotations

import grpc
from sqlalchemy import select

from cbr import errors
from cbr.v1 import replication_pb2, replication_pb2_grpc
from controller.api import convert
from controller.api.base import Servicer
from controller.persistence.models import Backup, ReplicationRecord
from controller.services import backups, credentials, paging, tasks, vaults


class ReplicationServicer(Servicer, replication_pb2_grpc.ReplicationServiceServicer):
    def ReplicateBackup(self, request: replication_pb2.ReplicateBackupRequest,
                        context: grpc.ServicerContext
                        ) -> replication_pb2.ReplicateBackupResponse:
        with self.app.db.begin() as s:
            backups.get_backup(s, self.project_id, request.backup_id)
            credentials.get_credential(s, self.project_id, request.credential_id)
        raise errors.NotImplementedYet(backups.REPLICATION_PENDING)

    def ReplicateVault(self, request: replication_pb2.ReplicateVaultRequest,
                       context: grpc.ServicerContext) -> replication_pb2.ReplicateVaultResponse:
        with self.app.db.begin() as s:
            vault = vaults.get_vault(s, self.project_id, request.vault_id)
            if vault.object_type == "disk":
                raise errors.ReplicationNotAllowedForType(
                    "Disk vaults cannot replicate; only server and file-system (turbo) vaults.")
            credentials.get_credential(s, self.project_id, request.credential_id)
            if not request.destination_region:
                raise errors.InvalidParameter("destination_region is required.",
                                              field="destination_region")
            has_backups = s.scalar(select(Backup.id).where(Backup.vault_id == vault.id)
                                   .limit(1)) is not None
            if not has_backups:
                # Reference rule 3: an empty vault is skipped, not failed.
                task = tasks.create_task(
                    s, project_id=self.project_id, operation_type="replication",
                    status="skipped", vault_id=vault.id, vault_name=vault.name, now=self.now(),
                    extra_info={"destination_region": request.destination_region,
                                "reason": "the vault has no backups to replicate"})
                return replication_pb2.ReplicateVaultResponse(task_ids=[task.id])
        raise errors.NotImplementedYet(backups.REPLICATION_PENDING)

    def GetReplicationRecord(self, request: replication_pb2.GetReplicationRecordRequest,
                             context: grpc.ServicerContext
                             ) -> replication_pb2.GetReplicationRecordResponse:
        with self.app.db.begin() as s:
            r = s.get(ReplicationRecord, request.replication_record_id) \
                if request.replication_record_id else None
            if r is None or r.project_id != self.project_id:
                raise errors.ResourceNotFound(
                    f"No replication record {request.replication_record_id!r}.")
            return replication_pb2.GetReplicationRecordResponse(
                replication_record=convert.replication_record(r))

    def ListReplicationRecords(self, request: replication_pb2.ListReplicationRecordsRequest,
                               context: grpc.ServicerContext
                               ) -> replication_pb2.ListReplicationRecordsResponse:
        status = convert.optional_enum(replication_pb2.ReplicationStatus, request.status,
                                       "status")
        stmt = select(ReplicationRecord).where(ReplicationRecord.project_id == self.project_id)
        for column, value in ((ReplicationRecord.vault_id, request.vault_id),
                              (ReplicationRecord.source_backup_id, request.source_backup_id),
                              (ReplicationRecord.destination_region,
                               request.destination_region),
                              (ReplicationRecord.status, status)):
            if value:
                stmt = stmt.where(column == value)
        with self.app.db.begin() as s:
            items, token, total = paging.paginate(s, stmt, ReplicationRecord,
                                                  request.page_size, request.page_token)
            return replication_pb2.ListReplicationRecordsResponse(
                replication_records=[convert.replication_record(r) for r in items],
                next_page_token=token, total_count=total)
