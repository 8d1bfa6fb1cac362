"""`cbr replication`: replicate backups and vaults to another cloud, and the records."""

from __future__ import annotations

import argparse

from cbr.v1 import replication_pb2
from cli import task_cmd
from cli._common import (
    Column,
    Context,
    add_command,
    add_group,
    add_paging,
    add_wait,
    enum_arg,
    enum_names,
    list_pages,
)

STATUS = enum_names(replication_pb2.ReplicationStatus.DESCRIPTOR)

COLUMNS: list[Column] = [
    ("ID", "id"),
    ("STATUS", "status"),
    ("PROGRESS", lambda r: f"{r.progress}%"),
    ("SOURCE BACKUP", "source_backup_id"),
    ("DEST REGION", "destination_region"),
    ("DEST VAULT", "destination_vault_id"),
    ("DEST BACKUP", "destination_backup_id"),
    ("FAIL", lambda r: r.fail_code or "-"),
    ("CREATED", "created_at"),
]


def add_destination(p: argparse.ArgumentParser) -> None:
    """Where a replication goes; ``--region`` and ``--vault`` are short forms."""
    p.add_argument("--credential", required=True, help="credential id for the target cloud")
    p.add_argument("--destination-region", "--region", dest="destination_region", required=True)
    p.add_argument("--destination-project-id", help="target account (default: the credential's)")
    p.add_argument("--destination-vault-id", "--vault", dest="destination_vault_id",
                   required=True, help="the replication vault of the target that receives it")


def _record_filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vault", help="only records of this vault id")
    p.add_argument("--backup", help="only records of this source backup id")
    p.add_argument("--destination-region")
    enum_arg(p, "--status", STATUS, "only this status")
    add_paging(p)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    group = add_group(sub, "replication", "cross-cloud replication", aliases=["repl"])

    p = add_command(
        group,
        "replicate-backup",
        cmd_replicate_backup,
        "replicate one backup to a destination region",
        rpc="ReplicationService.ReplicateBackup",
    )
    p.add_argument("backup_id", metavar="BACKUP_ID")
    add_destination(p)
    p.add_argument("--name", help="name of the replica")
    p.add_argument("--description")
    add_wait(p)

    p = add_command(
        group,
        "replicate-vault",
        cmd_replicate_vault,
        "replicate every eligible backup of a vault",
        rpc="ReplicationService.ReplicateVault",
    )
    p.add_argument("vault_id", metavar="VAULT_ID")
    add_destination(p)
    add_wait(p)

    p = add_command(
        group,
        "list",
        cmd_record_list,
        "list replication records (the same as `replication record list`)",
        rpc="ReplicationService.ListReplicationRecords",
    )
    _record_filters(p)

    records = add_group(group, "record", "replication history")
    p = add_command(
        records,
        "list",
        cmd_record_list,
        "list replication records",
        rpc="ReplicationService.ListReplicationRecords",
    )
    _record_filters(p)

    p = add_command(
        records,
        "show",
        cmd_record_show,
        "show a replication record",
        rpc="ReplicationService.GetReplicationRecord",
    )
    p.add_argument("record_id", metavar="RECORD_ID")

    add_command(
        group,
        "capabilities",
        cmd_capabilities,
        "this cloud's name and regions, and which accept replicas",
        rpc="ReplicationService.GetReplicationCapabilities",
    )

    p = add_command(
        group,
        "check-access",
        cmd_check_access,
        "on a target cloud: may these keys receive replicas? (what a source's credential checks)",
        rpc="ReplicationService.CheckReplicationAccess",
    )
    p.add_argument("--destination-region", help="also say whether this region accepts replicas")


def build_replicate_backup_request(
    args: argparse.Namespace,
) -> replication_pb2.ReplicateBackupRequest:
    return replication_pb2.ReplicateBackupRequest(
        backup_id=args.backup_id,
        credential_id=args.credential,
        destination_region=args.destination_region,
        destination_project_id=args.destination_project_id or "",
        destination_vault_id=args.destination_vault_id or "",
        name=args.name or "",
        description=args.description or "",
    )


def build_replicate_vault_request(
    args: argparse.Namespace,
) -> replication_pb2.ReplicateVaultRequest:
    return replication_pb2.ReplicateVaultRequest(
        vault_id=args.vault_id,
        credential_id=args.credential,
        destination_region=args.destination_region,
        destination_project_id=args.destination_project_id or "",
        destination_vault_id=args.destination_vault_id or "",
    )


def build_record_list_request(
    args: argparse.Namespace,
) -> replication_pb2.ListReplicationRecordsRequest:
    return replication_pb2.ListReplicationRecordsRequest(
        vault_id=args.vault or "",
        source_backup_id=args.backup or "",
        destination_region=args.destination_region or "",
        status=STATUS.value(args.status),  # type: ignore[arg-type]
    )


def cmd_replicate_backup(ctx: Context, args: argparse.Namespace) -> int:
    resp = ctx.client.replication.ReplicateBackup(
        build_replicate_backup_request(args), timeout=ctx.timeout
    )
    what = f"replicating backup {args.backup_id} (record {resp.replication_record_id or '-'})"
    return task_cmd.report_started(ctx, resp, [resp.task_id], what)


def cmd_replicate_vault(ctx: Context, args: argparse.Namespace) -> int:
    resp = ctx.client.replication.ReplicateVault(
        build_replicate_vault_request(args), timeout=ctx.timeout
    )
    return task_cmd.report_started(
        ctx, resp, list(resp.task_ids), f"replicating vault {args.vault_id}"
    )


def cmd_record_list(ctx: Context, args: argparse.Namespace) -> int:
    items = list_pages(
        ctx,
        ctx.client.replication.ListReplicationRecords,
        build_record_list_request(args),
        "replication_records",
    )
    ctx.out.items(items, COLUMNS)
    return 0


def cmd_record_show(ctx: Context, args: argparse.Namespace) -> int:
    resp = ctx.client.replication.GetReplicationRecord(
        replication_pb2.GetReplicationRecordRequest(replication_record_id=args.record_id),
        timeout=ctx.timeout,
    )
    ctx.out.show(resp.replication_record)
    return 0


def cmd_check_access(ctx: Context, args: argparse.Namespace) -> int:
    resp = ctx.client.replication.CheckReplicationAccess(
        replication_pb2.CheckReplicationAccessRequest(
            destination_region=args.destination_region or ""),
        timeout=ctx.timeout,
    )
    ctx.out.show(resp)
    return 0


def cmd_capabilities(ctx: Context, args: argparse.Namespace) -> int:
    resp = ctx.client.replication.GetReplicationCapabilities(
        replication_pb2.GetReplicationCapabilitiesRequest(), timeout=ctx.timeout
    )
    ctx.out.show(resp)
    return 0
