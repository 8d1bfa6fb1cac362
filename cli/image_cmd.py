"""`cbr image`: images made from server backups (their system disk), replicas included."""

from __future__ import annotations

import argparse

from cbr.v1 import backup_pb2
from cli import task_cmd
from cli._common import (
    Column,
    Context,
    add_command,
    add_group,
    add_paging,
    add_wait,
    list_pages,
)

COLUMNS: list[Column] = [
    ("ID", "id"),
    ("NAME", "name"),
    ("STATUS", "status"),
    ("BACKUP", "backup_id"),
    ("AGENT", "agent_id"),
    ("PATH", "path"),
    ("SIZE", "size_bytes"),
    ("CREATED", "created_at"),
]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    group = add_group(sub, "image", "images made from server backups")
    p = add_command(group, "create", cmd_create,
                    "write a server backup's system disk to a new image file, and register it",
                    rpc="BackupService.CreateImage")
    p.add_argument("--backup", dest="backup_id", required=True, help="server backup id")
    p.add_argument("--name", required=True)
    p.add_argument("--description")
    p.add_argument("--target-agent", required=True, help="agent id of the host to write on")
    p.add_argument("--to", dest="target_path", required=True, metavar="PATH",
                   help="absolute path of the image file")
    p.add_argument("--encrypted", action="store_true",
                   help="the image is on encrypted storage (needed for encrypted backups)")
    add_wait(p)
    p = add_command(group, "list", cmd_list, "list images", rpc="BackupService.ListImages")
    p.add_argument("--backup", dest="backup_id", help="only images of this backup")
    add_paging(p)
    p = add_command(group, "show", cmd_show, "show an image", rpc="BackupService.GetImage")
    p.add_argument("image_id", metavar="IMAGE_ID")
    p = add_command(group, "delete", cmd_delete, "forget an image (its file stays)",
                    rpc="BackupService.DeleteImage")
    p.add_argument("image_id", metavar="IMAGE_ID")


def build_create_request(args: argparse.Namespace) -> backup_pb2.CreateImageRequest:
    return backup_pb2.CreateImageRequest(
        backup_id=args.backup_id, name=args.name, description=args.description or "",
        target_agent_id=args.target_agent, target_path=args.target_path,
        encrypted=bool(args.encrypted))


def cmd_create(ctx: Context, args: argparse.Namespace) -> int:
    resp = ctx.client.backups.CreateImage(build_create_request(args), timeout=ctx.timeout)
    return task_cmd.report_started(ctx, resp, [resp.task_id],
                                   f"writing image {resp.image.id} ({args.name})")


def cmd_list(ctx: Context, args: argparse.Namespace) -> int:
    items = list_pages(ctx, ctx.client.backups.ListImages,
                       backup_pb2.ListImagesRequest(backup_id=args.backup_id or ""), "images")
    ctx.out.items(items, COLUMNS)
    return 0


def cmd_show(ctx: Context, args: argparse.Namespace) -> int:
    resp = ctx.client.backups.GetImage(backup_pb2.GetImageRequest(image_id=args.image_id),
                                       timeout=ctx.timeout)
    ctx.out.show(resp.image)
    return 0


def cmd_delete(ctx: Context, args: argparse.Namespace) -> int:
    ctx.client.backups.DeleteImage(backup_pb2.DeleteImageRequest(image_id=args.image_id),
                                   timeout=ctx.timeout)
    ctx.out.deleted("image", args.image_id)
    return 0
