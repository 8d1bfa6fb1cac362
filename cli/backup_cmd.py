"""`cbr checkpoint` and `cbr backup`: backup runs and restore points."""

from __future__ import annotations

import argparse

from cbr.v1 import backup_pb2, common_pb2, replication_pb2
from cli import diff_cmd, replication_cmd, task_cmd
from cli._common import (
    Column,
    Context,
    UsageError,
    add_command,
    add_group,
    add_paging,
    add_wait,
    enum_arg,
    enum_names,
    key_value,
    list_pages,
)

STATUS = enum_names(backup_pb2.BackupStatus.DESCRIPTOR)
IMAGE_TYPE = enum_names(backup_pb2.ImageType.DESCRIPTOR)
OBJECT_TYPE = enum_names(common_pb2.ObjectType.DESCRIPTOR)

COLUMNS: list[Column] = [
    ("ID", "id"),
    ("NAME", "name"),
    ("RESOURCE", lambda b: b.resource_name or b.resource_id or "-"),
    ("TYPE", "resource_type"),
    ("STATUS", "status"),
    ("IMAGE", "image_type"),
    ("INCR", "incremental"),
    ("STORED", "stored_bytes"),
    ("VAULT", "vault_id"),
    ("CREATED", "created_at"),
]
SKIPPED_COLUMNS: list[Column] = [
    ("RESOURCE", "resource_id"),
    ("NAME", "resource_name"),
    ("CODE", "code"),
    ("REASON", "reason"),
]


def _checkpoint_options(p: argparse.ArgumentParser) -> None:
    """What `checkpoint create` and `backup create` both take besides the vault."""
    p.add_argument(
        "--resource", nargs="+", action="extend", metavar="ID", help="only these (default all)"
    )
    p.add_argument("--name", help="backup name (default manualbk_xxxx)")
    p.add_argument("--description")
    p.add_argument("--full", action="store_true", help="force a full backup")
    add_wait(p)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    group = add_group(sub, "checkpoint", "backup runs of a vault")
    p = add_command(
        group,
        "create",
        cmd_checkpoint_create,
        "back up a vault's resources now",
        rpc="BackupService.CreateCheckpoint",
    )
    p.add_argument("vault_id", metavar="VAULT_ID")
    _checkpoint_options(p)
    p = add_command(
        group, "show", cmd_checkpoint_show, "show a checkpoint", rpc="BackupService.GetCheckpoint"
    )
    p.add_argument("checkpoint_id", metavar="CHECKPOINT_ID")

    group = add_group(sub, "backup", "restore points of resources")
    p = add_command(
        group,
        "create",
        cmd_create,
        "back up a vault's resources now (a checkpoint with one backup per resource)",
        rpc="BackupService.CreateCheckpoint",
    )
    p.add_argument("--vault", required=True, dest="vault_id", metavar="VAULT_ID")
    _checkpoint_options(p)

    p = add_command(
        group,
        "ls",
        cmd_ls,
        "list files of a file-system backup",
        rpc="BackupService.ListBackupFiles",
    )
    p.add_argument("backup_id", metavar="BACKUP_ID")
    p.add_argument("path", nargs="?", default="", metavar="PATH")
    diff_cmd.register(group)
    p = add_command(group, "list", cmd_list, "list backups", rpc="BackupService.ListBackups")
    p.add_argument("--vault", help="only backups in this vault id")
    p.add_argument("--resource", help="only backups of this resource id")
    p.add_argument("--checkpoint", help="only backups of this checkpoint id")
    enum_arg(p, "--status", STATUS, "only this status")
    enum_arg(p, "--image-type", IMAGE_TYPE, "backups or replicas only")
    enum_arg(p, "--resource-type", OBJECT_TYPE, "only this kind of resource")
    p.add_argument("--name", help="only backups with this name")
    p.add_argument("--show-children", action="store_true", help="list server disk backups as well")
    add_paging(p)

    p = add_command(group, "show", cmd_show, "show a backup", rpc="BackupService.GetBackup")
    p.add_argument("backup_id", metavar="BACKUP_ID")

    p = add_command(
        group,
        "replicate",
        replication_cmd.cmd_replicate_backup,
        "replicate a backup to a replication vault of another cloud",
        rpc="ReplicationService.ReplicateBackup",
    )
    p.add_argument("backup_id", metavar="BACKUP_ID")
    replication_cmd.add_destination(p)
    p.add_argument("--name", help="name of the replica")
    p.add_argument("--description")
    add_wait(p)

    p = add_command(
        group, "update", cmd_update, "rename or describe a backup", rpc="BackupService.UpdateBackup"
    )
    p.add_argument("backup_id", metavar="BACKUP_ID")
    p.add_argument("--name")
    p.add_argument("--description")

    p = add_command(
        group, "delete", cmd_delete, "delete a backup", rpc="BackupService.DeleteBackup"
    )
    p.add_argument("backup_id", metavar="BACKUP_ID")
    add_wait(p)

    p = add_command(
        group,
        "restore",
        cmd_restore,
        "restore a backup to its resource or a new place",
        rpc="BackupService.RestoreBackup",
    )
    p.add_argument("backup_id", metavar="BACKUP_ID")
    p.add_argument("--target-resource", help="resource id to restore onto (default: the source)")
    p.add_argument(
        "--target-agent", help="agent id of the new place (default: the source's agent)"
    )
    p.add_argument(
        "--to",
        "--target-path",
        dest="target_path",
        metavar="PATH",
        help="restore to a new place: a disk image file, a directory for a server's disk "
        "images, or a directory for a file system",
    )
    p.add_argument("--path", dest="source_path", help="file systems: only this path of the backup")
    p.add_argument(
        "--mapping",
        type=key_value,
        nargs="+",
        action="extend",
        metavar="DISK_BACKUP_ID=PATH",
        help="servers: where each disk backup goes",
    )
    p.add_argument("--power-on", action="store_true", help="power the server off and on around it")
    p.add_argument(
        "--encrypted",
        action="store_true",
        help="the new server or file system is encrypted (needed for encrypted backups "
        "restored to a new place)",
    )
    add_wait(p)


# -- requests ------------------------------------------------------------------------


def build_checkpoint_request(args: argparse.Namespace) -> backup_pb2.CreateCheckpointRequest:
    return backup_pb2.CreateCheckpointRequest(
        vault_id=args.vault_id,
        resource_ids=args.resource or [],
        name=args.name or "",
        description=args.description or "",
        full=args.full,
    )


def build_list_request(args: argparse.Namespace) -> backup_pb2.ListBackupsRequest:
    return backup_pb2.ListBackupsRequest(
        vault_id=args.vault or "",
        resource_id=args.resource or "",
        checkpoint_id=args.checkpoint or "",
        status=STATUS.value(args.status),  # type: ignore[arg-type]
        image_type=IMAGE_TYPE.value(args.image_type),  # type: ignore[arg-type]
        resource_type=OBJECT_TYPE.value(args.resource_type),  # type: ignore[arg-type]
        name=args.name or "",
        show_children=args.show_children,
    )


def build_update_request(args: argparse.Namespace) -> backup_pb2.UpdateBackupRequest:
    # The API has no update mask here: an empty field means "unchanged", so a
    # description cannot be cleared from the CLI.
    if not args.name and not args.description:
        raise UsageError("nothing to update: give --name and/or --description")
    return backup_pb2.UpdateBackupRequest(
        backup_id=args.backup_id, name=args.name or "", description=args.description or ""
    )


def build_restore_request(args: argparse.Namespace) -> backup_pb2.RestoreBackupRequest:
    if args.target_agent and not (args.target_path or args.mapping):
        raise UsageError("--target-agent needs --to or --mapping")
    if (args.target_agent or args.target_path) and args.target_resource:
        raise UsageError("give --target-resource or --target-agent, not both")
    return backup_pb2.RestoreBackupRequest(
        backup_id=args.backup_id,
        target_resource_id=args.target_resource or "",
        target_agent_id=args.target_agent or "",
        target_path=args.target_path or "",
        mappings=dict(args.mapping or ()),
        power_on=args.power_on,
        source_path=args.source_path or "",
        encrypted=args.encrypted,
    )


# -- commands --------------------------------------------------------------------------


def cmd_checkpoint_create(ctx: Context, args: argparse.Namespace) -> int:
    resp = ctx.client.backups.CreateCheckpoint(build_checkpoint_request(args), timeout=ctx.timeout)
    cp = resp.checkpoint
    if ctx.out.json:
        code = task_cmd.report_started(ctx, resp, list(cp.task_ids), "")
    else:
        _show_checkpoint(ctx, cp)
        code = task_cmd.wait_for_tasks(ctx, list(cp.task_ids)) if args.wait else 0
    if cp.skipped_resources:
        # A resource that could not even start (its agent offline) is a
        # failed backup: a script must not read this run as a success.
        ctx.out.note(f"{len(cp.skipped_resources)} of "
                     f"{len(cp.skipped_resources) + len(cp.task_ids)} resources were not "
                     "backed up (see skipped resources)")
        return 1
    return code


def _show_checkpoint(ctx: Context, cp: backup_pb2.Checkpoint) -> None:
    ctx.out.show(cp, subtables=[("skipped resources", cp.skipped_resources, SKIPPED_COLUMNS)])


def cmd_create(ctx: Context, args: argparse.Namespace) -> int:
    return cmd_checkpoint_create(ctx, args)


FILE_COLUMNS: list[Column] = [
    ("TYPE", "type"),
    ("MODE", lambda f: oct(f.mode)),
    ("USER", lambda f: f.user or str(f.uid)),
    ("GROUP", lambda f: f.group or str(f.gid)),
    ("SIZE", "size"),
    ("MTIME", "mtime"),
    ("NAME", lambda f: f.name + (f" -> {f.target}" if f.target else "")
     + (" (changed while read)" if f.changed else "")),
]


def cmd_ls(ctx: Context, args: argparse.Namespace) -> int:
    resp = ctx.client.backups.ListBackupFiles(
        backup_pb2.ListBackupFilesRequest(backup_id=args.backup_id, path=args.path),
        timeout=ctx.timeout,
    )
    ctx.out.items(list(resp.files), FILE_COLUMNS)
    return 0


def cmd_checkpoint_show(ctx: Context, args: argparse.Namespace) -> int:
    resp = ctx.client.backups.GetCheckpoint(
        backup_pb2.GetCheckpointRequest(checkpoint_id=args.checkpoint_id), timeout=ctx.timeout
    )
    _show_checkpoint(ctx, resp.checkpoint)
    return 0


def _show_backup(ctx: Context, backup: backup_pb2.Backup) -> None:
    ctx.out.show(backup, subtables=[("children", backup.children, COLUMNS)])


def cmd_list(ctx: Context, args: argparse.Namespace) -> int:
    items = list_pages(ctx, ctx.client.backups.ListBackups, build_list_request(args), "backups")
    ctx.out.items(items, COLUMNS)
    return 0


def cmd_show(ctx: Context, args: argparse.Namespace) -> int:
    resp = ctx.client.backups.GetBackup(
        backup_pb2.GetBackupRequest(backup_id=args.backup_id), timeout=ctx.timeout
    )
    if resp.backup.replication_record_ids:
        records = ctx.client.replication.ListReplicationRecords(
            replication_pb2.ListReplicationRecordsRequest(source_backup_id=args.backup_id),
            timeout=ctx.timeout,
        ).replication_records
        ctx.out.show(resp.backup, subtables=[
            ("children", resp.backup.children, COLUMNS),
            ("replication records", records, replication_cmd.COLUMNS),
        ])
        return 0
    _show_backup(ctx, resp.backup)
    return 0


def cmd_update(ctx: Context, args: argparse.Namespace) -> int:
    resp = ctx.client.backups.UpdateBackup(build_update_request(args), timeout=ctx.timeout)
    _show_backup(ctx, resp.backup)
    return 0


def cmd_delete(ctx: Context, args: argparse.Namespace) -> int:
    resp = ctx.client.backups.DeleteBackup(
        backup_pb2.DeleteBackupRequest(backup_id=args.backup_id), timeout=ctx.timeout
    )
    return task_cmd.report_started(ctx, resp, [resp.task_id], f"deleting backup {args.backup_id}")


def cmd_restore(ctx: Context, args: argparse.Namespace) -> int:
    resp = ctx.client.backups.RestoreBackup(build_restore_request(args), timeout=ctx.timeout)
    return task_cmd.report_started(ctx, resp, [resp.task_id], f"restoring backup {args.backup_id}")
