"""`cbr policy`: backup, replication, verify and prune schedules, with
retention rules (backup) and start and completion windows."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from google.protobuf import field_mask_pb2

from cbr.v1 import policy_pb2
from cli._common import (
    Column,
    Context,
    UsageError,
    add_command,
    add_group,
    add_paging,
    enum_arg,
    enum_names,
    list_pages,
)

OPERATION_TYPE = enum_names(policy_pb2.PolicyOperationType.DESCRIPTOR)


def _retention(p: policy_pb2.Policy) -> str:
    d = p.operation_definition
    parts = []
    if d.max_backups:
        parts.append(f"{d.max_backups} backups")
    if d.retention_duration_days:
        parts.append(f"{d.retention_duration_days} days")
    return ", ".join(parts) or "forever"


COLUMNS: list[Column] = [
    ("ID", "id"),
    ("NAME", "name"),
    ("TYPE", "operation_type"),
    ("ENABLED", "enabled"),
    ("SCHEDULE", lambda p: " | ".join(p.trigger.pattern) or "-"),
    ("RETENTION", _retention),
    ("VAULTS", "vault_ids"),
    ("CREATED", "created_at"),
]

def _yes_no(text: str) -> bool:
    if text.lower() in ("yes", "true", "1"):
        return True
    if text.lower() in ("no", "false", "0"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not yes or no")


# (flag, field of OperationDefinition, type, help)
_DEFINITION_FLAGS: list[tuple[str, str, Callable[[str], object], str]] = [
    ("--max-backups", "max_backups", int, "-1 (no count rule) or 0..99999"),
    ("--retention-days", "retention_duration_days", int, "-1 or 1..99999"),
    ("--day-backups", "day_backups", int, "long-term: latest of each of N days (needs --timezone)"),
    ("--week-backups", "week_backups", int, "long-term: N weeks"),
    ("--month-backups", "month_backups", int, "long-term: N months"),
    ("--year-backups", "year_backups", int, "long-term: N years"),
    ("--timezone", "timezone", str, "for long-term retention, e.g. UTC+08:00"),
    ("--destination-region", "destination_region", str, "replication: target region"),
    ("--destination-project-id", "destination_project_id", str, "replication: target account"),
    ("--credential", "credential_id", str, "replication: credential id for the target"),
    ("--full-backup-interval", "full_backup_interval", int, "-1 (never) to 100"),
    ("--include-manual-backups", "include_manual_backups", _yes_no,
     "yes: retention may delete manual backups too (default no)"),
    ("--read-data", "read_data", _yes_no, "verify: yes to read and check the data too"),
    ("--read-data-subset", "read_data_subset", str,
     "verify: n/t reads part n of t (each run reads the next part, so t runs read all "
     "the data) or P%% a random P percent of it; implies --read-data"),
]


def _add_window_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--start-window", dest="start_window_minutes", type=int, metavar="MINUTES",
                   help="a scheduled run not started this long after its time is missed "
                        "(60 to 1440, at most the time between runs; default 60)")
    p.add_argument("--completion-window", dest="completion_window_minutes", type=int,
                   metavar="MINUTES",
                   help="a backup still running this long after its run's time is stopped "
                        "(more than the start window, up to 43200; default 10080, 7 days)")


def _add_definition_flags(p: argparse.ArgumentParser) -> None:
    for flag, field, kind, help in _DEFINITION_FLAGS:
        p.add_argument(flag, dest=f"def_{field}", type=kind, help=help)


def _definition_given(args: argparse.Namespace) -> dict[str, object]:
    return {
        field: getattr(args, f"def_{field}")
        for _, field, _, _ in _DEFINITION_FLAGS
        if getattr(args, f"def_{field}") is not None
    }


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    group = add_group(sub, "policy", "backup and replication policies")

    p = add_command(
        group, "create", cmd_create, "create a policy", rpc="PolicyService.CreatePolicy"
    )
    p.add_argument("--name", required=True)
    enum_arg(p, "--type", OPERATION_TYPE, "what the policy runs", required=True)
    p.add_argument(
        "--pattern",
        nargs="+",
        action="extend",
        required=True,
        metavar="RRULE",
        help="e.g. 'FREQ=DAILY;INTERVAL=1;BYHOUR=6;BYMINUTE=00' (up to 24)",
    )
    _add_definition_flags(p)
    _add_window_flags(p)
    p.add_argument("--disabled", action="store_true", help="create it switched off")

    p = add_command(group, "list", cmd_list, "list policies", rpc="PolicyService.ListPolicies")
    enum_arg(p, "--type", OPERATION_TYPE, "only this kind")
    p.add_argument("--vault", help="only policies of this vault id")
    add_paging(p)

    p = add_command(group, "show", cmd_show, "show a policy", rpc="PolicyService.GetPolicy")
    p.add_argument("policy_id", metavar="POLICY_ID")

    p = add_command(
        group,
        "update",
        cmd_update,
        "change a policy (retention flags change only the rules given)",
        rpc=("PolicyService.UpdatePolicy", "PolicyService.GetPolicy"),
    )
    p.add_argument("policy_id", metavar="POLICY_ID")
    p.add_argument("--name")
    onoff = p.add_mutually_exclusive_group()
    onoff.add_argument("--enable", dest="enabled", action="store_const", const=True)
    onoff.add_argument("--disable", dest="enabled", action="store_const", const=False)
    p.add_argument(
        "--pattern", nargs="+", action="extend", metavar="RRULE", help="replace the schedule"
    )
    _add_definition_flags(p)
    _add_window_flags(p)

    p = add_command(
        group, "delete", cmd_delete, "delete a policy", rpc="PolicyService.DeletePolicy"
    )
    p.add_argument("policy_id", metavar="POLICY_ID")

    p = add_command(group, "run-now", cmd_run_now,
                    "run a policy now on each of its vaults",
                    rpc="PolicyService.RunPolicyNow")
    p.add_argument("policy_id", metavar="POLICY_ID")

    p = add_command(group, "runs", cmd_runs,
                    "the runs of a policy: dispatched, skipped or missed",
                    rpc="PolicyService.ListPolicyRuns")
    p.add_argument("policy_id", metavar="POLICY_ID")
    add_paging(p)


def build_create_request(args: argparse.Namespace) -> policy_pb2.CreatePolicyRequest:
    return policy_pb2.CreatePolicyRequest(
        name=args.name,
        operation_type=OPERATION_TYPE.value(args.type),  # type: ignore[arg-type]
        enabled=not args.disabled,
        operation_definition=policy_pb2.OperationDefinition(**_definition_given(args)),  # type: ignore[arg-type]
        trigger=policy_pb2.Trigger(pattern=args.pattern),
        start_window_minutes=args.start_window_minutes or 0,
        completion_window_minutes=args.completion_window_minutes or 0,
    )


def build_list_request(args: argparse.Namespace) -> policy_pb2.ListPoliciesRequest:
    return policy_pb2.ListPoliciesRequest(
        operation_type=OPERATION_TYPE.value(args.type),  # type: ignore[arg-type]
        vault_id=args.vault or "",
    )


def needs_current(args: argparse.Namespace) -> bool:
    return bool(_definition_given(args))


def build_update_request(
    args: argparse.Namespace, current: policy_pb2.Policy | None = None
) -> policy_pb2.UpdatePolicyRequest:
    """The mask's unit is the whole operation_definition, so changing one
    retention rule sends the current definition with that rule changed;
    otherwise the rules not named would be reset."""
    policy = policy_pb2.Policy()
    paths: list[str] = []
    if args.name is not None:
        policy.name = args.name
        paths.append("name")
    if args.enabled is not None:
        policy.enabled = args.enabled
        paths.append("enabled")
    if args.pattern is not None:
        policy.trigger.pattern.extend(args.pattern)
        paths.append("trigger")
    for window in ("start_window_minutes", "completion_window_minutes"):
        if getattr(args, window) is not None:
            setattr(policy, window, getattr(args, window))
            paths.append(window)
    given = _definition_given(args)
    if given:
        if current is None:
            raise ValueError("changing retention rules needs the current policy")
        policy.operation_definition.CopyFrom(current.operation_definition)
        for name, value in given.items():
            setattr(policy.operation_definition, name, value)
        paths.append("operation_definition")
    if not paths:
        raise UsageError("nothing to update: give at least one option (see --help)")
    return policy_pb2.UpdatePolicyRequest(
        policy_id=args.policy_id, policy=policy, update_mask=field_mask_pb2.FieldMask(paths=paths)
    )


def cmd_create(ctx: Context, args: argparse.Namespace) -> int:
    resp = ctx.client.policies.CreatePolicy(build_create_request(args), timeout=ctx.timeout)
    ctx.out.show(resp.policy)
    return 0


def cmd_list(ctx: Context, args: argparse.Namespace) -> int:
    items = list_pages(ctx, ctx.client.policies.ListPolicies, build_list_request(args), "policies")
    ctx.out.items(items, COLUMNS)
    return 0


def _get(ctx: Context, policy_id: str) -> policy_pb2.Policy:
    resp = ctx.client.policies.GetPolicy(
        policy_pb2.GetPolicyRequest(policy_id=policy_id), timeout=ctx.timeout
    )
    return resp.policy


def cmd_show(ctx: Context, args: argparse.Namespace) -> int:
    ctx.out.show(_get(ctx, args.policy_id))
    return 0


def cmd_update(ctx: Context, args: argparse.Namespace) -> int:
    current = _get(ctx, args.policy_id) if needs_current(args) else None
    resp = ctx.client.policies.UpdatePolicy(
        build_update_request(args, current), timeout=ctx.timeout
    )
    ctx.out.show(resp.policy)
    return 0


def cmd_delete(ctx: Context, args: argparse.Namespace) -> int:
    ctx.client.policies.DeletePolicy(
        policy_pb2.DeletePolicyRequest(policy_id=args.policy_id), timeout=ctx.timeout
    )
    ctx.out.deleted("policy", args.policy_id)
    return 0


RUN_COLUMNS: list[Column] = [
    ("SCHEDULED", "scheduled_at"),
    ("VAULT", "vault_id"),
    ("STATUS", "status"),
    ("MANUAL", "manual"),
    ("FULL", "full"),
    ("CHECKPOINT", lambda r: r.checkpoint_id or "-"),
    ("TASK", lambda r: r.task_id or "-"),
    ("DETAIL", lambda r: r.detail or "-"),
]


def cmd_run_now(ctx: Context, args: argparse.Namespace) -> int:
    resp = ctx.client.policies.RunPolicyNow(
        policy_pb2.RunPolicyNowRequest(policy_id=args.policy_id), timeout=ctx.timeout
    )
    if ctx.out.json:
        ctx.out.show(resp)
        return 0
    for checkpoint_id in resp.checkpoint_ids:
        ctx.out.message(f"policy {args.policy_id}: backup checkpoint {checkpoint_id}")
    for task_id in resp.task_ids:
        ctx.out.message(f"policy {args.policy_id}: task {task_id}")
    if not resp.checkpoint_ids and not resp.task_ids:
        ctx.out.message(f"policy {args.policy_id}: nothing started (no vault is bound to "
                        "it); `cbr policy runs` lists its runs")
    return 0


def cmd_runs(ctx: Context, args: argparse.Namespace) -> int:
    request = policy_pb2.ListPolicyRunsRequest(policy_id=args.policy_id)
    items = list_pages(ctx, ctx.client.policies.ListPolicyRuns, request, "runs")
    ctx.out.items(items, RUN_COLUMNS)
    return 0
