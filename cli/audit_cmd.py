"""`cbr audit`: who did what, from where, and how it ended."""

from __future__ import annotations

import argparse

from cbr.v1 import audit_pb2
from cli._common import (
    Column,
    Context,
    add_command,
    add_group,
    add_paging,
    enum_arg,
    enum_names,
    list_pages,
    point_in_time,
    timestamp,
)

RESULT = enum_names(audit_pb2.AuditResult.DESCRIPTOR)

COLUMNS: list[Column] = [
    ("TIME", "created_at"),
    ("ACTION", lambda r: r.action or r.method.rpartition("/")[2]),
    ("RESULT", "result"),
    ("USER", lambda r: r.user_id or "-"),
    ("ACCESS KEY", lambda r: r.access_key_id or "-"),
    ("SOURCE", lambda r: r.source or "-"),
    ("RESOURCES", lambda r: ",".join(r.resource_ids) or "-"),
    ("ERROR", lambda r: r.error_code or ("" if r.status_code == "OK" else r.status_code) or "-"),
]

def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    group = add_group(sub, "audit", "the audit trail: calls that changed something or "
                      "were refused")
    p = add_command(group, "list", cmd_list, "list audit records, oldest first",
                    rpc="AuditService.ListAuditRecords")
    p.add_argument("--action", help="only this IAM action, e.g. cbr:vaults:delete")
    p.add_argument("--user", help="only calls of this user id")
    p.add_argument("--key-id", dest="key_id", help="only calls made with this access key id")
    p.add_argument("--resource", help="only calls that named or returned this id")
    enum_arg(p, "--result", RESULT, "only this result")
    p.add_argument("--since", type=point_in_time,
                   help="from this time (ISO 8601, or an age: 2h, 7d)")
    p.add_argument("--until", type=point_in_time, help="before this time (ISO 8601, or an age)")
    add_paging(p)


def build_list_request(args: argparse.Namespace) -> audit_pb2.ListAuditRecordsRequest:
    request = audit_pb2.ListAuditRecordsRequest(
        action=args.action or "", user_id=args.user or "",
        access_key_id=args.key_id or "", resource_id=args.resource or "",
        result=RESULT.value(args.result),  # type: ignore[arg-type]
    )
    if args.since is not None:
        request.since.CopyFrom(timestamp(args.since))
    if args.until is not None:
        request.until.CopyFrom(timestamp(args.until))
    return request


def cmd_list(ctx: Context, args: argparse.Namespace) -> int:
    items = list_pages(ctx, ctx.client.audit.ListAuditRecords, build_list_request(args),
                       "records")
    ctx.out.items(items, COLUMNS)
    return 0
