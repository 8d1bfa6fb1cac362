"""Images: a server backup's system disk written to an image file and registered.

An image is made the way a disk restore to a new place is (the same checks,
the same restore task on the target agent), from the server backup's
system-disk backup; it becomes ``available`` when that task succeeds. A
replica makes an image on its target cloud like any backup, which is how a
cloud that lost its servers boots them again elsewhere.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from cbr import errors
from controller.persistence.models import Image, Task
from controller.persistence.vocabulary import (
    BackupStatus,
    ImageStatus,
    ObjectType,
    TaskStatus,
)
from controller.services import backups, paging, restores, runs, validation


def get_image(session: Session, project_id: str, image_id: str) -> Image:
    image = session.get(Image, image_id) if image_id else None
    if image is None or image.project_id != project_id:
        raise errors.ResourceNotFound(f"No image with id {image_id!r}.", image_id=image_id)
    return image


def list_images(session: Session, project_id: str, backup_id: str, page_size: int,
                page_token: str) -> tuple[Sequence[Image], str, int]:
    """A page of the account's images, of one backup when ``backup_id`` is given."""
    stmt = select(Image).where(Image.project_id == project_id)
    if backup_id:
        stmt = stmt.where(Image.backup_id == backup_id)
    return paging.paginate(session, stmt, Image, page_size, page_token)


def delete_image(session: Session, project_id: str, image_id: str) -> None:
    """Forgets an image; one still being written waits for its task."""
    image = get_image(session, project_id, image_id)
    if image.status == ImageStatus.CREATING:
        raise errors.Conflict(f"Image {image.id} is being written; delete it after "
                              f"task {image.task_id} ends.")
    session.delete(image)


def create_image(session: Session, project_id: str, *, backup_id: str, name: str,
                 description: str, target_agent_id: str, target_path: str, encrypted: bool,
                 now: dt.datetime, online: set[str]) -> tuple[Image, runs.Dispatch]:
    validation.name(name)
    validation.description(description)
    backup = backups.get_backup(session, project_id, backup_id)
    if backup.resource_type != ObjectType.SERVER or backup.parent_id is not None:
        raise errors.InvalidParameter(
            f"Backup {backup.id} is a {backup.resource_type} backup; images are made from "
            "server backups (their system disk).", field="backup_id")
    system = next((c for c in backups.children(session, backup.id)
                   if c.extend_info.get("system_disk")), None)
    if system is None:
        raise errors.NotEcsBackup(f"Server backup {backup.id} has no system disk backup.")
    if not target_agent_id or not target_path:
        raise errors.InvalidParameter("An image needs target_agent_id and target_path (the "
                                      "image file to write).", field="target_path")
    if backup.status != BackupStatus.AVAILABLE:
        raise errors.BackupStatusIllegal(
            f"Backup {backup.id} is {backup.status}; only available backups make images.",
            backup_id=backup.id)
    try:
        dispatch = restores.create_restore(session, project_id, restores.RestoreRequest(
            backup_id=system.id, target_agent_id=target_agent_id, target_path=target_path,
            encrypted=encrypted), now, online)
    except errors.EncryptedRestoreTarget:
        # Said of the backup the caller named, not of its system disk's child.
        raise errors.EncryptedRestoreTarget(
            f"Backup {backup.id} is in an encrypted vault; make its image as an encrypted "
            "one (encrypted, `--encrypted` in the CLI), on encrypted storage.",
            backup_id=backup.id) from None
    image = Image(project_id=project_id, name=name, description=description,
                  status=ImageStatus.CREATING, backup_id=backup.id, disk_backup_id=system.id,
                  agent_id=target_agent_id, path=target_path,
                  size_bytes=system.resource_size_bytes, task_id=dispatch.task_id,
                  source_backup_id=str(backup.extend_info.get("source_backup_id", "")),
                  source_cloud=str(backup.extend_info.get("source_cloud", "")),
                  created_at=now, updated_at=now)
    session.add(image)
    session.flush()
    task = session.get(Task, dispatch.task_id)
    if task is not None:
        task.extra_info = {**task.extra_info, "image_id": image.id}
    return image, dispatch


def finish_image(session: Session, task: Task, now: dt.datetime) -> None:
    """The end of an image's restore task: the image is usable, or not."""
    image_id = str(task.extra_info.get("image_id", ""))
    image = session.get(Image, image_id) if image_id else None
    if image is None or image.status != ImageStatus.CREATING:
        return
    image.status = (ImageStatus.AVAILABLE if task.status == TaskStatus.SUCCESS
                    else ImageStatus.ERROR)
    image.updated_at = now
