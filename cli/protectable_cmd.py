"""`cbr protectable`: what agents report they can protect."""

from __future__ import annotations

import argparse

from cbr.v1 import common_pb2, protectable_pb2
from cli._common import (
    Column,
    Context,
    add_command,
    add_group,
    add_paging,
    enum_arg,
    enum_names,
    list_pages,
)

OBJECT_TYPE = enum_names(common_pb2.ObjectType.DESCRIPTOR)
STATUS = enum_names(protectable_pb2.ProtectableStatus.DESCRIPTOR)

COLUMNS: list[Column] = [
    ("ID", "id"),
    ("NAME", "name"),
    ("TYPE", "type"),
    ("STATUS", "status"),
    ("SIZE", "size_bytes"),
    ("DISKS", "disks"),
    ("AGENT", lambda p: p.agent_name or p.agent_id or "-"),
    ("VAULT", "vault_id"),
]
DISK_COLUMNS: list[Column] = [
    ("ID", "id"),
    ("NAME", "name"),
    ("PATH", "path"),
    ("SIZE", "size_bytes"),
    ("SYSTEM", "system_disk"),
    ("DEVICE", "device_type"),
]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    group = add_group(
        sub, "protectable", "servers, disks and file systems agents report", aliases=["resource"]
    )

    p = add_command(
        group, "list", cmd_list, "list protectables", rpc="ProtectableService.ListProtectables"
    )
    enum_arg(p, "--type", OBJECT_TYPE, "only this kind")
    p.add_argument("--agent", help="only those of this agent id")
    p.add_argument("--name", help="only those with this name")
    enum_arg(p, "--status", STATUS, "only this status")
    p.add_argument(
        "--protection",
        choices=["protected", "unprotected"],
        help="only those in a vault, or only those in none",
    )
    add_paging(p)

    p = add_command(
        group, "show", cmd_show, "show a protectable", rpc="ProtectableService.GetProtectable"
    )
    p.add_argument("protectable_id", metavar="PROTECTABLE_ID")


def build_list_request(args: argparse.Namespace) -> protectable_pb2.ListProtectablesRequest:
    return protectable_pb2.ListProtectablesRequest(
        type=OBJECT_TYPE.value(args.type),  # type: ignore[arg-type]
        agent_id=args.agent or "",
        name=args.name or "",
        status=STATUS.value(args.status),  # type: ignore[arg-type]
        protection=args.protection or "",
    )


def cmd_list(ctx: Context, args: argparse.Namespace) -> int:
    items = list_pages(
        ctx, ctx.client.protectables.ListProtectables, build_list_request(args), "protectables"
    )
    ctx.out.items(items, COLUMNS)
    return 0


def cmd_show(ctx: Context, args: argparse.Namespace) -> int:
    resp = ctx.client.protectables.GetProtectable(
        protectable_pb2.GetProtectableRequest(protectable_id=args.protectable_id),
        timeout=ctx.timeout,
    )
    ctx.out.show(resp.protectable, subtables=[("disks", resp.protectable.disks, DISK_COLUMNS)])
    return 0
