"""ReplicationService: replicating backups and vaults, records, and the target's side."""

from __future__ import annotations

from typing import cast

import grpc
from google.protobuf import json_format

from cbr import errors
from cbr.v1 import cloud_pb2, common_pb2, replication_pb2, replication_pb2_grpc
from controller.api import convert
from controller.api.base import Servicer, calls_other_clouds
from controller.jobs import receiver
from controller.jobs.replicator import Replicator
from controller.persistence.vocabulary import ProtectType
from controller.services import imports, replication, vaults


def _record_pb(view: replication.RecordView) -> replication_pb2.ReplicationRecord:
    return convert.replication_record(view.record, view.task_progress)

# A target account's replication vaults a source is shown at most.
MAX_DESTINATION_VAULTS = 1000


class ReplicationServicer(Servicer, replication_pb2_grpc.ReplicationServiceServicer):
    """Thin: the rules live in controller.services.replication (source side) and
    controller.services.imports (target side); the conversation between the two
    clouds in controller.jobs.replicator, the target's storage and importer in
    controller.jobs.receiver."""

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
            replication.check_vault_request(s, self.project_id, request.vault_id,
                                            request.credential_id, request.destination_region)
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
        # The caller holds cbr:vaults:get (a replication action): it may see
        # which of its account's vaults take replicas, to choose one.
        wanted = vaults.VaultFilter(protect_type=ProtectType.REPLICATION)
        with self.app.db.read() as conn:
            views, _, _ = vaults.list_vaults(conn, self.project_id, wanted,
                                             MAX_DESTINATION_VAULTS, "")
        return replication_pb2.CheckReplicationAccessResponse(
            cloud=self.app.config.cloud_name, account_id=self.project_id,
            user_id=self.caller.user_id,
            region_supported=imports.region_supported(regions, request.destination_region),
            regions=[cloud_pb2.Region(id=r, replication_supported=ok) for r, ok in regions],
            vaults=[replication_pb2.DestinationVault(
                id=v.vault.id, name=v.vault.name,
                object_type=convert.enum_number(common_pb2.ObjectType, v.vault.object_type),
                size_gb=v.vault.size_gb, used_bytes=v.vault.used_bytes) for v in views])

    def PrepareImport(self, request: replication_pb2.PrepareImportRequest,
                      context: grpc.ServicerContext) -> replication_pb2.PrepareImportResponse:
        imports.require_replication_actions(self.caller.actions)
        imports.check_chunk_keys([(k.key_id, k.key) for k in request.chunk_keys])
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
        prepared = receiver.prepare_import(
            self.app, self.project_id, req,
            {bytes(k.key_id): bytes(k.key) for k in request.chunk_keys})
        response = replication_pb2.PrepareImportResponse(
            import_id=prepared.import_id, task_id=prepared.task_id,
            destination_checkpoint_id=prepared.destination_checkpoint_id,
            replica_ids=prepared.replica_ids, importer_endpoint=prepared.importer_endpoint,
            importer_server_name=prepared.importer_server_name,
            ca_certificate_pem=prepared.ca_certificate_pem,
            import_token=prepared.import_token, destination_project_id=self.project_id)
        response.expires_at.FromDatetime(prepared.expires_at)
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
            view = replication.get_record(s, self.project_id, request.replication_record_id)
            return replication_pb2.GetReplicationRecordResponse(
                replication_record=_record_pb(view))

    def ListReplicationRecords(self, request: replication_pb2.ListReplicationRecordsRequest,
                               context: grpc.ServicerContext
                               ) -> replication_pb2.ListReplicationRecordsResponse:
        status = convert.optional_enum(replication_pb2.ReplicationStatus, request.status,
                                       "status")
        f = replication.RecordFilter(
            vault_id=request.vault_id, source_backup_id=request.source_backup_id,
            destination_region=request.destination_region, status=status,
            newest_first=request.newest_first)
        with self.app.db.begin() as s:
            views, token, total = replication.list_records(s, self.project_id, f,
                                                           request.page_size, request.page_token)
            return replication_pb2.ListReplicationRecordsResponse(
                replication_records=[_record_pb(v) for v in views],
                next_page_token=token, total_count=total)
