"""BackupService: thin translation to controller.services (backups, runs, restores,
deletions, images)."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from cbr import errors
from cbr.v1 import backup_pb2, backup_pb2_grpc, common_pb2
from controller.api import convert
from controller.api.base import Servicer
from controller.jobs import browse
from controller.services import backups, deletions, images, restores, runs


class BackupServicer(Servicer, backup_pb2_grpc.BackupServiceServicer):
    def CreateCheckpoint(self, request: backup_pb2.CreateCheckpointRequest,
                         context: grpc.ServicerContext) -> backup_pb2.CreateCheckpointResponse:
        with self.app.db.begin() as s:
            cp, dispatches = runs.create_checkpoint(
                s, self.project_id, request.vault_id, list(request.resource_ids),
                name=request.name, description=request.description, full=request.full,
                now=self.now(), online=self._online())
            s.flush()
            _, backup_ids, task_ids = backups.get_checkpoint(s, self.project_id, cp.id)
            response = backup_pb2.CreateCheckpointResponse(
                checkpoint=convert.checkpoint(cp, backup_ids, task_ids))
        self._dispatch(dispatches)
        return response

    def _online(self) -> set[str]:
        return self.app.hub.online_agent_ids() if self.app.hub is not None else set()

    def _dispatch(self, dispatches: list[runs.Dispatch]) -> None:
        if self.app.hub is None:
            return
        for d in dispatches:
            self.app.hub.dispatch(d.agent_id, d.task_id)

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
        f = backups.BackupFilter(
            vault_id=request.vault_id, resource_id=request.resource_id,
            checkpoint_id=request.checkpoint_id,
            status=convert.optional_enum(backup_pb2.BackupStatus, request.status, "status"),
            image_type=convert.optional_enum(backup_pb2.ImageType, request.image_type,
                                             "image_type"),
            resource_type=convert.optional_enum(common_pb2.ObjectType, request.resource_type,
                                                "resource_type"),
            name=request.name, show_children=request.show_children,
            newest_first=request.newest_first)
        with self.app.db.begin() as s:
            items, token, total = backups.list_backups(s, self.project_id, f,
                                                       request.page_size, request.page_token)
            kids = backups.children_of(s, [b.id for b in items])
            return backup_pb2.ListBackupsResponse(
                backups=[convert.backup(b, kids.get(b.id, [])) for b in items],
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
            task = deletions.start_delete(s, self.project_id, request.backup_id, self.now())
            task_id = task.id
        self.maintenance.submit(task_id)
        return backup_pb2.DeleteBackupResponse(task_id=task_id)

    def RestoreBackup(self, request: backup_pb2.RestoreBackupRequest,
                      context: grpc.ServicerContext) -> backup_pb2.RestoreBackupResponse:
        req = restores.RestoreRequest(
            backup_id=request.backup_id, target_resource_id=request.target_resource_id,
            target_agent_id=request.target_agent_id, target_path=request.target_path,
            mappings=dict(request.mappings), source_path=request.source_path,
            encrypted=request.encrypted)
        with self.app.db.begin() as s:
            dispatch = restores.create_restore(s, self.project_id, req, self.now(), self._online())
        self._dispatch([dispatch])
        return backup_pb2.RestoreBackupResponse(task_id=dispatch.task_id)

    def CreateImage(self, request: backup_pb2.CreateImageRequest,
                    context: grpc.ServicerContext) -> backup_pb2.CreateImageResponse:
        with self.app.db.begin() as s:
            image, dispatch = images.create_image(
                s, self.project_id, backup_id=request.backup_id, name=request.name,
                description=request.description, target_agent_id=request.target_agent_id,
                target_path=request.target_path, encrypted=request.encrypted, now=self.now(),
                online=self._online())
            response = backup_pb2.CreateImageResponse(image=convert.image(image),
                                                       task_id=dispatch.task_id)
        self._dispatch([dispatch])
        return response

    def GetImage(self, request: backup_pb2.GetImageRequest,
                 context: grpc.ServicerContext) -> backup_pb2.GetImageResponse:
        with self.app.db.begin() as s:
            return backup_pb2.GetImageResponse(image=convert.image(
                images.get_image(s, self.project_id, request.image_id)))

    def ListImages(self, request: backup_pb2.ListImagesRequest,
                   context: grpc.ServicerContext) -> backup_pb2.ListImagesResponse:
        with self.app.db.begin() as s:
            items, token, _total = images.list_images(s, self.project_id, request.backup_id,
                                                      request.page_size, request.page_token)
            return backup_pb2.ListImagesResponse(images=[convert.image(i) for i in items],
                                                 next_page_token=token)

    def DeleteImage(self, request: backup_pb2.DeleteImageRequest,
                    context: grpc.ServicerContext) -> backup_pb2.DeleteImageResponse:
        with self.app.db.begin() as s:
            images.delete_image(s, self.project_id, request.image_id)
        return backup_pb2.DeleteImageResponse()

    def ListBackupFiles(self, request: backup_pb2.ListBackupFilesRequest,
                        context: grpc.ServicerContext) -> backup_pb2.ListBackupFilesResponse:
        with self.app.db.begin() as s:
            b = backups.tree_backup(s, self.project_id, request.backup_id, "backup_id", "list")
            vault_url = backups.vault_url(s, b)
            backup_id = b.id
        files = self.maintenance.list_files(vault_url, backup_id, request.path)
        return backup_pb2.ListBackupFilesResponse(files=files)

    def DiffBackups(self, request: backup_pb2.DiffBackupsRequest,
                    context: grpc.ServicerContext) -> Iterator[backup_pb2.DiffBackupsResponse]:
        if not request.other_backup_id:
            raise errors.InvalidParameter("other_backup_id is required: the backup to compare "
                                          "backup_id with.", field="other_backup_id")
        with self.app.db.begin() as s:
            backups.tree_backup(s, self.project_id, request.backup_id, "backup_id", "compare")
            backups.tree_backup(s, self.project_id, request.other_backup_id,
                                "other_backup_id", "compare")
        yield from browse.diff_backups(self.app, request.backup_id, request.other_backup_id,
                                       request.path)

    def WalkBackupFiles(self, request: backup_pb2.WalkBackupFilesRequest,
                        context: grpc.ServicerContext
                        ) -> Iterator[backup_pb2.WalkBackupFilesResponse]:
        with self.app.db.begin() as s:
            backups.tree_backup(s, self.project_id, request.backup_id, "backup_id", "list")
        yield from browse.walk_files(self.app, request.backup_id, request.path)

