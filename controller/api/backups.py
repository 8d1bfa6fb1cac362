"""BackupService: the catalog, and backup runs once the data path exists."""

from __future__ import annotations

import grpc

from cbr import errors
from cbr.v1 import backup_pb2, backup_pb2_grpc, common_pb2
from controller.api import convert
from controller.api.base import Servicer
from controller.persistence.models import Backup
from controller.services import backups, paging


class BackupServicer(Servicer, backup_pb2_grpc.BackupServiceServicer):
    def CreateCheckpoint(self, request: backup_pb2.CreateCheckpointRequest,
                         context: grpc.ServicerContext) -> backup_pb2.CreateCheckpointResponse:
        with self.app.db.begin() as s:
            backups.check_checkpoint_request(s, self.project_id, request.vault_id,
                                             list(request.resource_ids))
        raise errors.NotImplementedYet(backups.DATA_PATH_PENDING)

    def GetCheckpoint(self, request: backup_pb2.GetCheckpointRequest,
                      context: grpc.ServicerContext) -> backup_pb2.GetCheckpointResponse:
        with self.app.db.begin() as s:
            cp, backup_ids, task_ids = backups.get_checkpoint(s, self.project_id,
                                                              request.checkpoint_id)
            return backup_pb2.GetCheckpointResponse(
                checkpoint=convert.checkpoint(cp, backup_ids, task_ids))

    def GetBackup(self, request: backup_pb2.GetBackupRequest,
                  context: grpc.ServicerContext) -> backup_pb2.GetBackupResponse:
        with self.app.db.begin() as s:
            b = backups.get_backup(s, self.project_id, request.backup_id)
            return backup_pb2.GetBackupResponse(backup=convert.backup(
                b, backups.children(s, b.id), backups.record_ids(s, b.id)))

    def ListBackups(self, request: backup_pb2.ListBackupsRequest,
                    context: grpc.ServicerContext) -> backup_pb2.ListBackupsResponse:
        stmt = backups.backup_query(
            self.project_id, vault_id=request.vault_id, resource_id=request.resource_id,
            checkpoint_id=request.checkpoint_id,
            status=convert.optional_enum(backup_pb2.BackupStatus, request.status, "status"),
            image_type=convert.optional_enum(backup_pb2.ImageType, request.image_type,
                                             "image_type"),
            resource_type=convert.optional_enum(common_pb2.ObjectType, request.resource_type,
                                                "resource_type"),
            name=request.name, show_children=request.show_children)
        with self.app.db.begin() as s:
            items, token, total = paging.paginate(s, stmt, Backup, request.page_size,
                                                  request.page_token)
            return backup_pb2.ListBackupsResponse(
                backups=[convert.backup(b, backups.children(s, b.id)) for b in items],
                next_page_token=token, total_count=total)

    def UpdateBackup(self, request: backup_pb2.UpdateBackupRequest,
                     context: grpc.ServicerContext) -> backup_pb2.UpdateBackupResponse:
        with self.app.db.begin() as s:
            b = backups.update_backup(s, self.project_id, request.backup_id, request.name,
                                      request.description, self.now())
            return backup_pb2.UpdateBackupResponse(backup=convert.backup(b))

    def DeleteBackup(self, request: backup_pb2.DeleteBackupRequest,
                     context: grpc.ServicerContext) -> backup_pb2.DeleteBackupResponse:
        with self.app.db.begin() as s:
            backups.get_backup(s, self.project_id, request.backup_id)
        raise errors.NotImplementedYet(backups.DATA_PATH_PENDING)

    def RestoreBackup(self, request: backup_pb2.RestoreBackupRequest,
                      context: grpc.ServicerContext) -> backup_pb2.RestoreBackupResponse:
        with self.app.db.begin() as s:
            backups.get_backup(s, self.project_id, request.backup_id)
        raise errors.NotImplementedYet(backups.DATA_PATH_PENDING)
