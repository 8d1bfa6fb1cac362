"""ReplicationService: replicating backups and vaults, records, and the target's side."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import cast

import grpc
from google.protobuf import json_format
from sqlalchemy import select
from sqlalchemy.orm import Session

from cbr import errors
from cbr.v1 import cloud_pb2, replication_pb2, replication_pb2_grpc
from controller.agents import pki
from controller.agents.servicer import certificate_authority
from controller.api import convert
from controller.api.base import Servicer, calls_other_clouds
from controller.jobs.replicator import Replicator
from controller.persistence.models import ReplicationRecord, Task, Vault
from controller.persistence.vocabulary import ObjectType, ReplicationStatus
from controller.services import (
    agent_status,
    credentials,
    imports,
    keys,
    paging,
    vaults,
)


def _with_progress(session: Session, records: Sequence[ReplicationRecord]
                   ) -> list[replication_pb2.ReplicationRecord]:
    """Records as messages; one still replicating shows its transfer task's progress."""
    task_ids = {str(r.extra_info.get("task_id")) for r in records
                if r.status == ReplicationStatus.REPLICATING and r.extra_info.get("task_id")}
    progress = dict(session.execute(select(Task.id, Task.progress).where(
        Task.id.in_(task_ids))).tuples().all()) if task_ids else {}
    out = []
    for r in records:
        msg = convert.replication_record(r)
        if r.status == ReplicationStatus.REPLICATING:
            msg.progress = max(msg.progress, progress.get(str(r.extra_info.get("task_id")), 0))
        out.append(msg)
    return out


class ReplicationServicer(Servicer, replication_pb2_grpc.ReplicationServiceServicer):
    """Thin: the rules live in controller.services.replication (source side) and
    controller.services.imports (target side); the conversation between the two
    clouds in controller.jobs.replicator."""

    @property
    def replicator(self) -> Replicator:
        if self.app.replicator is None:
            raise errors.NotImplementedYet("This controller runs without replication.")
        return cast(Replicator, self.app.replicator)

    @calls_other_clouds
    def ReplicateBackup(self, request: replication_pb2.ReplicateBackupRequest,
                        context: grpc.ServicerContext
                        ) -> replication_pb2.ReplicateBackupResponse:
        started = self.replicator.replicate_backup(
            self.project_id, request.backup_id, request.credential_id,
            request.destination_region, request.destination_vault_id,
            request.destination_project_id)
        return replication_pb2.ReplicateBackupResponse(
            task_id=started.task_id, replication_record_id=started.record_id)

    @calls_other_clouds
    def ReplicateVault(self, request: replication_pb2.ReplicateVaultRequest,
                       context: grpc.ServicerContext) -> replication_pb2.ReplicateVaultResponse:
        with self.app.db.begin() as s:
            vault = vaults.get_vault(s, self.project_id, request.vault_id)
            if vault.object_type == ObjectType.DISK:
                raise errors.ReplicationNotAllowedForType(
                    "Disk vaults cannot replicate; only server and file-system (turbo) vaults.")
            credentials.get_credential(s, self.project_id, request.credential_id)
            if not request.destination_region:
                raise errors.InvalidParameter("destination_region is required.",
                                              field="destination_region")
        done = self.replicator.replicate_vault(
            self.project_id, request.vault_id, request.credential_id,
            request.destination_region, request.destination_vault_id,
            request.destination_project_id)
        return replication_pb2.ReplicateVaultResponse(task_ids=done.task_ids)

    # -- the target's side ---------------------------------------------------------------

    def GetReplicationCapabilities(
            self, request: replication_pb2.GetReplicationCapabilitiesRequest,
            context: grpc.ServicerContext) -> replication_pb2.GetReplicationCapabilitiesResponse:
        return replication_pb2.GetReplicationCapabilitiesResponse(
            cloud=self.app.config.cloud_name,
            regions=[cloud_pb2.Region(id=r, replication_supported=ok)
                     for r, ok in self.app.config.all_regions])

    def CheckReplicationAccess(self, request: replication_pb2.CheckReplicationAccessRequest,
                               context: grpc.ServicerContext
                               ) -> replication_pb2.CheckReplicationAccessResponse:
        imports.require_replication_actions(self.caller.actions)
        regions = self.app.config.all_regions
        return replication_pb2.CheckReplicationAccessResponse(
            cloud=self.app.config.cloud_name, account_id=self.project_id,
            user_id=self.caller.user_id,
            region_supported=imports.region_supported(regions, request.destination_region))

    def PrepareImport(self, request: replication_pb2.PrepareImportRequest,
                      context: grpc.ServicerContext) -> replication_pb2.PrepareImportResponse:
        imports.require_replication_actions(self.caller.actions)
        if not request.chunk_keys or len(request.chunk_keys) > 16 or any(
                len(k.key_id) != 16 or len(k.key) != 32 for k in request.chunk_keys):
            raise errors.InvalidParameter("chunk_keys: one to 16 keys, each a 16-byte id and "
                                          "a 32-byte key.", field="chunk_keys")
        if not request.source_record_id or not request.HasField("backup"):
            raise errors.InvalidParameter("source_record_id and backup are required.",
                                          field="backup")
        req = imports.ImportRequest(
            source_record_id=request.source_record_id, source_cloud=request.source_cloud,
            source_region=request.source_region, source_project_id=request.source_project_id,
            source_vault_id=request.source_vault_id,
            source_checkpoint_id=request.source_checkpoint_id,
            destination_region=request.destination_region,
            destination_vault_id=request.destination_vault_id,
            backup=json_format.MessageToDict(request.backup), encrypted=request.encrypted,
            auto_trigger=request.auto_trigger)
        with self.app.db.begin() as s:
            plan = imports.prepare_import(
                s, self.app.keyring, self.project_id, req,
                regions=self.app.config.all_regions,
                online=agent_status.online_agent_ids(self.app, s), now=self.now(),
                ttl=dt.timedelta(hours=self.app.config.import_ttl))
            record, task_id = plan.record, plan.task.id
            vault = s.get(Vault, record.destination_vault_id)
            assert vault is not None
            # The lineage's chunk-id keys go into the vault before any chunk
            # does, wrapped by the vault's own master key when it is encrypted.
            self.app.storage.add_chunk_keys(
                vault.storage_url, {bytes(k.key_id): bytes(k.key) for k in request.chunk_keys},
                request.source_vault_id,
                keys.vault_key(s, self.app.root_key, vault, self.now()))
            response = replication_pb2.PrepareImportResponse(
                import_id=record.id, task_id=task_id,
                destination_checkpoint_id=record.destination_checkpoint_id,
                replica_ids=dict(record.extra_info["replica_ids"]),
                importer_endpoint=plan.importer.endpoint,
                importer_server_name=pki.importer_server_name(plan.importer.id),
                ca_certificate_pem=certificate_authority(self.app).certificate_pem.decode(),
                import_token=plan.token, destination_project_id=self.project_id)
            response.expires_at.FromDatetime(
                dt.datetime.fromisoformat(str(record.extra_info["expires_at"])))
            importer_id = plan.importer.id
        if self.app.hub is not None:
            self.app.hub.dispatch(importer_id, task_id)
        return response

    def GetImport(self, request: replication_pb2.GetImportRequest,
                  context: grpc.ServicerContext) -> replication_pb2.GetImportResponse:
        imports.require_replication_actions(self.caller.actions)
        with self.app.db.begin() as s:
            record = imports.get_import(s, self.project_id, request.import_id)
            return replication_pb2.GetImportResponse(
                replication_record=convert.replication_record(record))

    def AbortImport(self, request: replication_pb2.AbortImportRequest,
                    context: grpc.ServicerContext) -> replication_pb2.AbortImportResponse:
        imports.require_replication_actions(self.caller.actions)
        with self.app.db.begin() as s:
            task = imports.abort_import(s, self.project_id, request.import_id,
                                        request.reason, self.now())
            importer_id = task.agent_id if task is not None else ""
        if importer_id and self.app.hub is not None:
            self.app.hub.abort_import(importer_id, request.import_id)
        return replication_pb2.AbortImportResponse()

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
                replication_record=_with_progress(s, [r])[0])

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
                replication_records=_with_progress(s, items),
                next_page_token=token, total_count=total)
