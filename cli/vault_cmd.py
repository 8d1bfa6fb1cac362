"""`cbr vault`: vaults, the resources they protect and their policies."""

from __future__ import annotations

import argparse
from typing import Any

from google.protobuf import field_mask_pb2

from cbr.v1 import common_pb2, vault_pb2
from cli import replication_cmd, task_cmd
from cli._common import (
    Column,
    Context,
    EnumNames,
    UsageError,
    add_command,
    add_group,
    add_paging,
    add_wait,
    enum_arg,
    enum_names,
    key_value,
    list_pages,
    positive_int,
    to_dict,
)

OBJECT_TYPE = enum_names(common_pb2.ObjectType.DESCRIPTOR)
PROTECT_TYPE = enum_names(vault_pb2.ProtectType.DESCRIPTOR)
# The reference spells the levels crash_consistent/app_consistent; `crash`
# and `app` are what people type.
CONSISTENT_LEVEL = EnumNames(
    vault_pb2.ConsistentLevel.DESCRIPTOR,
    aliases={"crash": "crash_consistent", "app": "app_consistent"},
)
STATUS = enum_names(vault_pb2.VaultStatus.DESCRIPTOR)
# UpdateVault accepts only these; deleting and error are the controller's to set.
SETTABLE_STATUS = ("available", "lock", "frozen")

COLUMNS: list[Column] = [
    ("ID", "id"),
    ("NAME", "name"),
    ("TYPE", "object_type"),
    ("PROTECT", "protect_type"),
    ("STATUS", "status"),
    ("SIZE", "size_gb"),
    ("USED", "used_bytes"),
    ("ENCRYPTED", "encrypted"),
    ("RESOURCES", "resources"),
    ("POLICY", "backup_policy_id"),
    ("CREATED", "created_at"),
]
RESOURCE_COLUMNS: list[Column] = [
    ("ID", "id"),
    ("NAME", "name"),
    ("TYPE", "type"),
    ("PROTECT STATUS", "protect_status"),
    ("SIZE", "size_bytes"),
    ("BACKUP SIZE", "backup_size_bytes"),
    ("BACKUPS", "backup_count"),
    ("EXCLUDED", "exclude_volumes"),
]


def _tags(pairs: list[tuple[str, str]] | None) -> list[common_pb2.Tag]:
    return [common_pb2.Tag(key=k, value=v) for k, v in pairs or ()]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    group = add_group(sub, "vault", "vaults and the resources they protect")

    p = add_command(group, "create", cmd_create, "create a vault", rpc="VaultService.CreateVault")
    p.add_argument("--name", required=True)
    enum_arg(p, "--type", OBJECT_TYPE, "kind of resource the vault holds", required=True)
    enum_arg(p, "--protect-type", PROTECT_TYPE, "backup (default) or replication target")
    enum_arg(p, "--consistent-level", CONSISTENT_LEVEL, "server vaults only")
    p.add_argument("--size-gb", type=positive_int, required=True, help="capacity in GB")
    p.add_argument("--auto-expand", action="store_true",
                   help="grow the vault (10%% steps) when usage passes its threshold, "
                        "within the account's vault quota")
    p.add_argument("--threshold", type=positive_int, help="capacity warning percent (default 80)")
    p.add_argument("--description")
    p.add_argument("--tag", type=key_value, nargs="+", action="extend", metavar="KEY=VALUE")
    p.add_argument("--auto-bind", action="store_true", help="add new resources matching rules")
    p.add_argument("--bind-rule", type=key_value, nargs="+", action="extend", metavar="KEY=VALUE")
    p.add_argument(
        "--resource", nargs="+", action="extend", metavar="ID", help="protectable ids to add"
    )
    p.add_argument("--policy", help="backup policy id to associate")
    p.add_argument("--backup-name-prefix")
    p.add_argument(
        "--storage-url",
        help="where the vault keeps its data (default: the controller's storage_url + vault id)",
    )
    p.add_argument(
        "--kms-key",
        metavar="KEY_ID",
        help="encrypt the vault with this key (see `cbr key list`); fixed for the vault's life",
    )

    p = add_command(
        group,
        "verify",
        cmd_verify,
        "check that every backup's chunks exist (and, with --read-data, are intact)",
        rpc="VaultService.VerifyVault",
    )
    p.add_argument("vault_id", metavar="VAULT_ID")
    p.add_argument("--read-data", action="store_true", help="read and check every chunk")
    p.add_argument("--read-data-subset", default="", metavar="n/t|P%",
                   help="read only part n of t of the packs (parts are disjoint and cover "
                        "them all) or a random P%% of them; implies --read-data")
    add_wait(p)

    p = add_command(
        group,
        "prune",
        cmd_prune,
        "free the space of deleted backups now",
        rpc="VaultService.PruneVault",
    )
    p.add_argument("vault_id", metavar="VAULT_ID")
    add_wait(p)

    p = add_command(
        group,
        "repair",
        cmd_repair,
        "make a damaged vault consistent: keep what still reads, rebuild the index, "
        "mark the backups whose data is gone as damaged",
        rpc="VaultService.RepairVault",
    )
    p.add_argument("vault_id", metavar="VAULT_ID")
    p.add_argument("--dry-run", action="store_true",
                   help="report what repair would do, changing nothing")
    add_wait(p)

    p = add_command(
        group,
        "import-storage",
        cmd_import_storage,
        "rebuild a vault and its backups from its storage alone",
        rpc="VaultService.ImportVaultStorage",
    )
    p.add_argument("storage_url", metavar="STORAGE_URL")
    p.add_argument("--name", help="vault name here (default imported-<id>)")
    p.add_argument("--size-gb", type=positive_int, help="capacity in GB (default 1024)")
    p.add_argument("--kms-key", metavar="KEY_ID",
                   help="encrypted storage: the key here whose material protects it")

    p = add_command(group, "list", cmd_list, "list vaults", rpc="VaultService.ListVaults")
    p.add_argument("--name", help="only vaults with this name")
    enum_arg(p, "--type", OBJECT_TYPE, "only this object type")
    enum_arg(p, "--protect-type", PROTECT_TYPE, "only this protect type")
    enum_arg(p, "--status", STATUS, "only this status")
    p.add_argument("--policy", help="only vaults associated with this policy id")
    p.add_argument("--resource", help="only the vault holding this resource id")
    add_paging(p)

    p = add_command(
        group,
        "replicate",
        replication_cmd.cmd_replicate_vault,
        "replicate every backup of a vault not yet in the destination region",
        rpc="ReplicationService.ReplicateVault",
    )
    p.add_argument("vault_id", metavar="VAULT_ID")
    replication_cmd.add_destination(p)
    add_wait(p)

    p = add_command(group, "show", cmd_show, "show a vault", rpc="VaultService.GetVault")
    p.add_argument("vault_id", metavar="VAULT_ID")

    p = add_command(
        group, "update", cmd_update, "change a vault's settings", rpc="VaultService.UpdateVault"
    )
    p.add_argument("vault_id", metavar="VAULT_ID")
    p.add_argument("--name")
    p.add_argument("--description")
    p.add_argument("--size-gb", type=positive_int)
    p.add_argument("--auto-expand", action=argparse.BooleanOptionalAction)
    p.add_argument("--threshold", type=positive_int)
    p.add_argument(
        "--tag",
        type=key_value,
        nargs="*",
        action="extend",
        metavar="KEY=VALUE",
        help="replace the tags (no value: remove all)",
    )
    p.add_argument("--auto-bind", action=argparse.BooleanOptionalAction)
    p.add_argument(
        "--bind-rule",
        type=key_value,
        nargs="*",
        action="extend",
        metavar="KEY=VALUE",
        help="replace the bind rules (no value: remove all)",
    )
    enum_arg(p, "--status", STATUS, "lock or unlock the vault", choices=SETTABLE_STATUS)
    p.add_argument("--backup-name-prefix")

    p = add_command(
        group,
        "delete",
        cmd_delete,
        "delete a vault and its backups, erasing its storage",
        rpc="VaultService.DeleteVault",
    )
    p.add_argument("vault_id", metavar="VAULT_ID")
    add_wait(p)

    p = add_command(
        group,
        "add-resources",
        cmd_add_resources,
        "associate protectables with a vault",
        rpc="VaultService.AddVaultResources",
    )
    p.add_argument("vault_id", metavar="VAULT_ID")
    p.add_argument("resource_ids", metavar="RESOURCE_ID", nargs="+")
    p.add_argument(
        "--exclude-volume",
        nargs="+",
        action="extend",
        metavar="[RESOURCE_ID:]DISK_ID",
        help="server disk to leave out (prefix the server id when adding several)",
    )
    p.add_argument(
        "--include-volume",
        nargs="+",
        action="extend",
        metavar="[RESOURCE_ID:]DISK_ID",
        help="server disk to back up alone (prefix the server id when adding several)",
    )

    p = add_command(
        group,
        "remove-resources",
        cmd_remove_resources,
        "remove resources from a vault, deleting their backups there",
        rpc="VaultService.RemoveVaultResources",
    )
    p.add_argument("vault_id", metavar="VAULT_ID")
    p.add_argument("resource_ids", metavar="RESOURCE_ID", nargs="+")
    add_wait(p)

    p = add_command(
        group,
        "associate-policy",
        cmd_associate_policy,
        "apply a backup or replication policy to a vault",
        rpc="VaultService.AssociateVaultPolicy",
    )
    p.add_argument("vault_id", metavar="VAULT_ID")
    p.add_argument("policy_id", metavar="POLICY_ID")
    p.add_argument("--destination-vault-id", help="replication policies: the receiving vault")

    p = add_command(
        group,
        "dissociate-policy",
        cmd_dissociate_policy,
        "remove a policy from a vault",
        rpc="VaultService.DissociateVaultPolicy",
    )
    p.add_argument("vault_id", metavar="VAULT_ID")
    p.add_argument("policy_id", metavar="POLICY_ID")


# -- requests --------------------------------------------------------------------------


def build_create_request(args: argparse.Namespace) -> vault_pb2.CreateVaultRequest:
    return vault_pb2.CreateVaultRequest(
        name=args.name,
        description=args.description or "",
        object_type=OBJECT_TYPE.value(args.type),  # type: ignore[arg-type]
        protect_type=PROTECT_TYPE.value(args.protect_type or "backup"),  # type: ignore[arg-type]
        consistent_level=CONSISTENT_LEVEL.value(args.consistent_level),  # type: ignore[arg-type]
        size_gb=args.size_gb,
        auto_expand=args.auto_expand,
        threshold=args.threshold or 0,
        backup_name_prefix=args.backup_name_prefix or "",
        tags=_tags(args.tag),
        auto_bind=args.auto_bind,
        bind_rules=_tags(args.bind_rule),
        resources=[vault_pb2.ResourceSpec(id=r) for r in args.resource or ()],
        backup_policy_id=args.policy or "",
        storage_url=args.storage_url or "",
        encrypted=bool(args.kms_key),
        kms_key_id=args.kms_key or "",
    )


def build_list_request(args: argparse.Namespace) -> vault_pb2.ListVaultsRequest:
    return vault_pb2.ListVaultsRequest(
        name=args.name or "",
        object_type=OBJECT_TYPE.value(args.type),  # type: ignore[arg-type]
        protect_type=PROTECT_TYPE.value(args.protect_type),  # type: ignore[arg-type]
        status=STATUS.value(args.status),  # type: ignore[arg-type]
        policy_id=args.policy or "",
        resource_id=args.resource or "",
    )


def build_update_request(args: argparse.Namespace) -> vault_pb2.UpdateVaultRequest:
    """Only the flags given go into update_mask, so unnamed fields keep their values."""
    vault = vault_pb2.Vault()
    paths: list[str] = []
    if args.name is not None:
        vault.name = args.name
        paths.append("name")
    if args.description is not None:
        vault.description = args.description
        paths.append("description")
    if args.size_gb is not None:
        vault.size_gb = args.size_gb
        paths.append("size_gb")
    if args.auto_expand is not None:
        vault.auto_expand = args.auto_expand
        paths.append("auto_expand")
    if args.threshold is not None:
        vault.threshold = args.threshold
        paths.append("threshold")
    if args.tag is not None:
        vault.tags.extend(_tags(args.tag))
        paths.append("tags")
    if args.auto_bind is not None:
        vault.auto_bind = args.auto_bind
        paths.append("auto_bind")
    if args.bind_rule is not None:
        vault.bind_rules.extend(_tags(args.bind_rule))
        paths.append("bind_rules")
    if args.status is not None:
        vault.status = STATUS.value(args.status)  # type: ignore[assignment]
        paths.append("status")
    if args.backup_name_prefix is not None:
        vault.backup_name_prefix = args.backup_name_prefix
        paths.append("backup_name_prefix")
    if not paths:
        raise UsageError("nothing to update: give at least one option (see --help)")
    return vault_pb2.UpdateVaultRequest(
        vault_id=args.vault_id, vault=vault, update_mask=field_mask_pb2.FieldMask(paths=paths)
    )


def _volumes(values: list[str] | None, resource_ids: list[str], flag: str) -> dict[str, list[str]]:
    """Disk ids per resource; an unprefixed id is allowed only with one resource,
    so a disk is never sent with a server it does not belong to."""
    out: dict[str, list[str]] = {r: [] for r in resource_ids}
    for value in values or ():
        resource, sep, disk = value.rpartition(":")
        if not sep:
            if len(resource_ids) != 1:
                raise UsageError(f"{flag} {value}: say which resource, as RESOURCE_ID:DISK_ID")
            resource = resource_ids[0]
        if resource not in out:
            raise UsageError(f"{flag} {value}: {resource} is not among the resources added")
        out[resource].append(disk)
    return out


def build_add_resources_request(args: argparse.Namespace) -> vault_pb2.AddVaultResourcesRequest:
    excluded = _volumes(args.exclude_volume, args.resource_ids, "--exclude-volume")
    included = _volumes(args.include_volume, args.resource_ids, "--include-volume")
    return vault_pb2.AddVaultResourcesRequest(
        vault_id=args.vault_id,
        resources=[
            vault_pb2.ResourceSpec(id=r, exclude_volumes=excluded[r], include_volumes=included[r])
            for r in args.resource_ids
        ],
    )


# -- commands ---------------------------------------------------------------------------


def usage_line(vault: vault_pb2.Vault) -> str:
    """How full the vault is, against its threshold, in one line."""
    percent = 100.0 * vault.used_bytes / (vault.size_gb * 1024**3) if vault.size_gb else 0.0
    line = f"usage {percent:.0f}% of {vault.size_gb} GB"
    if vault.threshold_exceeded:
        line += f", past the {vault.threshold}% threshold"
        if vault.auto_expand:
            line += " (auto_expand could not grow it further: see the vault's events)"
    else:
        line += f" (threshold {vault.threshold}%)"
    return line


def show_vault(ctx: Context, vault: vault_pb2.Vault) -> None:
    ctx.out.show(vault, subtables=[("resources", vault.resources, RESOURCE_COLUMNS)])
    if not ctx.out.json:
        ctx.out.message(usage_line(vault))


def cmd_create(ctx: Context, args: argparse.Namespace) -> int:
    resp = ctx.client.vaults.CreateVault(build_create_request(args), timeout=ctx.timeout)
    show_vault(ctx, resp.vault)
    return 0


def cmd_list(ctx: Context, args: argparse.Namespace) -> int:
    items = list_pages(ctx, ctx.client.vaults.ListVaults, build_list_request(args), "vaults")
    ctx.out.items(items, COLUMNS)
    return 0


def cmd_show(ctx: Context, args: argparse.Namespace) -> int:
    resp = ctx.client.vaults.GetVault(
        vault_pb2.GetVaultRequest(vault_id=args.vault_id), timeout=ctx.timeout
    )
    show_vault(ctx, resp.vault)
    return 0


def cmd_update(ctx: Context, args: argparse.Namespace) -> int:
    resp = ctx.client.vaults.UpdateVault(build_update_request(args), timeout=ctx.timeout)
    show_vault(ctx, resp.vault)
    return 0


def cmd_delete(ctx: Context, args: argparse.Namespace) -> int:
    resp = ctx.client.vaults.DeleteVault(
        vault_pb2.DeleteVaultRequest(vault_id=args.vault_id), timeout=ctx.timeout
    )
    return task_cmd.report_started(ctx, resp, [resp.task_id], f"deleting vault {args.vault_id}")


def cmd_verify(ctx: Context, args: argparse.Namespace) -> int:
    resp = ctx.client.vaults.VerifyVault(
        vault_pb2.VerifyVaultRequest(vault_id=args.vault_id, read_data=args.read_data,
                                     read_data_subset=args.read_data_subset),
        timeout=ctx.timeout,
    )
    return _started_and_shown(ctx, args, resp, f"verifying vault {args.vault_id}")


def cmd_prune(ctx: Context, args: argparse.Namespace) -> int:
    resp = ctx.client.vaults.PruneVault(
        vault_pb2.PruneVaultRequest(vault_id=args.vault_id), timeout=ctx.timeout
    )
    return task_cmd.report_started(ctx, resp, [resp.task_id], f"pruning vault {args.vault_id}")


def cmd_repair(ctx: Context, args: argparse.Namespace) -> int:
    resp = ctx.client.vaults.RepairVault(
        vault_pb2.RepairVaultRequest(vault_id=args.vault_id, dry_run=args.dry_run),
        timeout=ctx.timeout,
    )
    doing = "checking what repair would do to" if args.dry_run else "repairing"
    return _started_and_shown(ctx, args, resp, f"{doing} vault {args.vault_id}")


def _started_and_shown(ctx: Context, args: argparse.Namespace, resp: Any, what: str) -> int:
    """A maintenance task whose result is its report: with --wait, the task
    is shown whole at the end (its figures and the backups it names)."""
    code = task_cmd.report_started(ctx, resp, [resp.task_id], what)
    if args.wait and not ctx.out.json:
        task_cmd.show_task(ctx, resp.task_id)
    return code


def cmd_import_storage(ctx: Context, args: argparse.Namespace) -> int:
    resp = ctx.client.vaults.ImportVaultStorage(
        vault_pb2.ImportVaultStorageRequest(
            storage_url=args.storage_url, name=args.name or "", size_gb=args.size_gb or 0,
            kms_key_id=args.kms_key or "",
        ),
        timeout=ctx.stream_timeout,
    )
    if ctx.out.json:
        ctx.out.json_value(to_dict(resp))
        return 0
    ctx.out.message(f"imported {resp.imported_backups} backups")
    for warning in resp.warnings:
        ctx.out.note(f"warning: {warning}")
    show_vault(ctx, resp.vault)
    return 0


def cmd_add_resources(ctx: Context, args: argparse.Namespace) -> int:
    resp = ctx.client.vaults.AddVaultResources(
        build_add_resources_request(args), timeout=ctx.timeout
    )
    if ctx.out.json:
        ctx.out.json_value(to_dict(resp))
    else:
        ctx.out.message(f"added: {', '.join(resp.add_resource_ids) or 'none'}")
        show_vault(ctx, resp.vault)
    return 0


def cmd_remove_resources(ctx: Context, args: argparse.Namespace) -> int:
    resp = ctx.client.vaults.RemoveVaultResources(
        vault_pb2.RemoveVaultResourcesRequest(
            vault_id=args.vault_id, resource_ids=args.resource_ids
        ),
        timeout=ctx.timeout,
    )
    return task_cmd.report_started(
        ctx,
        resp,
        list(resp.task_ids),
        f"removing {', '.join(resp.remove_resource_ids) or 'nothing'}",
    )


def cmd_associate_policy(ctx: Context, args: argparse.Namespace) -> int:
    resp = ctx.client.vaults.AssociateVaultPolicy(
        vault_pb2.AssociateVaultPolicyRequest(
            vault_id=args.vault_id,
            policy_id=args.policy_id,
            destination_vault_id=args.destination_vault_id or "",
        ),
        timeout=ctx.timeout,
    )
    show_vault(ctx, resp.vault)
    return 0


def cmd_dissociate_policy(ctx: Context, args: argparse.Namespace) -> int:
    resp = ctx.client.vaults.DissociateVaultPolicy(
        vault_pb2.DissociateVaultPolicyRequest(vault_id=args.vault_id, policy_id=args.policy_id),
        timeout=ctx.timeout,
    )
    show_vault(ctx, resp.vault)
    return 0
