"""`cbr key`: customer master keys of the key service, which encrypted vaults use.

A key's material never leaves the controller. `--material-file` imports
32 bytes you keep elsewhere (bring your own key), so a fresh controller
given the same material can read the vaults the key protects.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cbr.v1 import key_pb2
from cli._common import (
    Column,
    Context,
    UsageError,
    add_command,
    add_group,
    add_paging,
    list_pages,
)

COLUMNS: list[Column] = [
    ("ID", "id"),
    ("ALIAS", "alias"),
    ("STATE", "state"),
    ("SHARED IN", "shared_in"),
    ("OWNER", "project_id"),
    ("DELETION AT", "deletion_at"),
    ("CREATED", "created_at"),
]
STATES = ("enabled", "disabled", "pending_deletion", "deleted")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    group = add_group(sub, "key", "customer master keys for encrypted vaults")

    p = add_command(group, "create", cmd_create, "create a key", rpc="KeyService.CreateKey")
    p.add_argument("--alias", required=True, help="unique name in the account")
    p.add_argument("--description")
    p.add_argument("--material-file", type=Path,
                   help="import these 32 bytes as the key material (bring your own key)")

    p = add_command(group, "list", cmd_list, "list owned and shared-in keys",
                    rpc="KeyService.ListKeys")
    p.add_argument("--state", choices=STATES)
    add_paging(p)

    p = add_command(group, "show", cmd_show, "show a key", rpc="KeyService.GetKey")
    p.add_argument("key_id", metavar="KEY_ID")

    for name, func, help_text, rpc in (
        ("disable", cmd_disable, "disable a key: its vaults cannot back up or restore",
         "KeyService.DisableKey"),
        ("enable", cmd_enable, "enable a disabled key", "KeyService.EnableKey"),
        ("cancel-deletion", cmd_cancel, "cancel a scheduled deletion (the key comes back "
         "disabled)", "KeyService.CancelKeyDeletion"),
    ):
        p = add_command(group, name, func, help_text, rpc=rpc)
        p.add_argument("key_id", metavar="KEY_ID")

    p = add_command(group, "schedule-deletion", cmd_schedule,
                    "make a key unusable now and destroy it after a waiting period",
                    rpc="KeyService.ScheduleKeyDeletion")
    p.add_argument("key_id", metavar="KEY_ID")
    p.add_argument("--pending-days", type=int, default=0,
                   help="waiting period, 7 to 30 days (default 30)")

    for name, func, help_text, rpc in (
        ("share", cmd_share, "let another account use the key", "KeyService.ShareKey"),
        ("unshare", cmd_unshare, "stop sharing the key with an account",
         "KeyService.UnshareKey"),
    ):
        p = add_command(group, name, func, help_text, rpc=rpc)
        p.add_argument("key_id", metavar="KEY_ID")
        p.add_argument("--account-id", required=True)


def build_create_request(args: argparse.Namespace) -> key_pb2.CreateKeyRequest:
    material = b""
    if args.material_file is not None:
        try:
            material = args.material_file.read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read --material-file: {exc}") from None
        if len(material) != 32:
            raise UsageError(f"--material-file must hold exactly 32 bytes, not {len(material)}")
    return key_pb2.CreateKeyRequest(alias=args.alias, description=args.description or "",
                                    key_material=material)


def cmd_create(ctx: Context, args: argparse.Namespace) -> int:
    ctx.out.show(ctx.client.keys.CreateKey(build_create_request(args),
                                           timeout=ctx.timeout).key)
    return 0


def cmd_list(ctx: Context, args: argparse.Namespace) -> int:
    req = key_pb2.ListKeysRequest()
    if args.state:
        req.state = key_pb2.KeyState.Value(f"KEY_STATE_{args.state.upper()}")  # type: ignore[assignment]
    items = list_pages(ctx, ctx.client.keys.ListKeys, req, "keys")
    ctx.out.items(items, COLUMNS)
    return 0


def cmd_show(ctx: Context, args: argparse.Namespace) -> int:
    ctx.out.show(ctx.client.keys.GetKey(key_pb2.GetKeyRequest(key_id=args.key_id),
                                        timeout=ctx.timeout).key)
    return 0


def cmd_disable(ctx: Context, args: argparse.Namespace) -> int:
    ctx.out.show(ctx.client.keys.DisableKey(key_pb2.DisableKeyRequest(key_id=args.key_id),
                                            timeout=ctx.timeout).key)
    return 0


def cmd_enable(ctx: Context, args: argparse.Namespace) -> int:
    ctx.out.show(ctx.client.keys.EnableKey(key_pb2.EnableKeyRequest(key_id=args.key_id),
                                           timeout=ctx.timeout).key)
    return 0


def cmd_schedule(ctx: Context, args: argparse.Namespace) -> int:
    req = key_pb2.ScheduleKeyDeletionRequest(key_id=args.key_id, pending_days=args.pending_days)
    ctx.out.show(ctx.client.keys.ScheduleKeyDeletion(req, timeout=ctx.timeout).key)
    return 0


def cmd_cancel(ctx: Context, args: argparse.Namespace) -> int:
    req = key_pb2.CancelKeyDeletionRequest(key_id=args.key_id)
    ctx.out.show(ctx.client.keys.CancelKeyDeletion(req, timeout=ctx.timeout).key)
    return 0


def cmd_share(ctx: Context, args: argparse.Namespace) -> int:
    req = key_pb2.ShareKeyRequest(key_id=args.key_id, account_id=args.account_id)
    ctx.out.show(ctx.client.keys.ShareKey(req, timeout=ctx.timeout).key)
    return 0


def cmd_unshare(ctx: Context, args: argparse.Namespace) -> int:
    req = key_pb2.UnshareKeyRequest(key_id=args.key_id, account_id=args.account_id)
    ctx.out.show(ctx.client.keys.UnshareKey(req, timeout=ctx.timeout).key)
    return 0
