"""`cbr notification` (targets and their deliveries) and `cbr event list`.

A webhook's signing secret is printed once, by `target create`; the SMTP
password is read from a file, stdin or a prompt rather than left in the
shell's history when it can be.
"""

from __future__ import annotations

import argparse
import getpass
import sys
import time
from pathlib import Path

from google.protobuf import field_mask_pb2

from cbr.v1 import notification_pb2
from cli._common import (
    Column,
    Context,
    UsageError,
    add_command,
    add_group,
    add_paging,
    list_pages,
    point_in_time,
    read_secret_line,
    timestamp,
    to_dict,
)

DELIVERY_STATUSES = ("pending", "delivered", "failed")
SMTP_SECURITY = ("starttls", "ssl", "none")
TEST_WAIT_S = 15.0


def _destination(t: notification_pb2.NotificationTarget) -> str:
    if t.HasField("webhook"):
        return t.webhook.url
    return f"smtp://{t.smtp.host}:{t.smtp.port} -> {', '.join(t.smtp.to_addresses)}"


TARGET_COLUMNS: list[Column] = [
    ("ID", "id"),
    ("NAME", "name"),
    ("KIND", "kind"),
    ("DESTINATION", _destination),
    ("EVENTS", lambda t: ", ".join(t.event_types) or "all"),
    ("ENABLED", lambda t: "yes" if t.enabled else "no"),
    ("CREATED", "created_at"),
]

DELIVERY_COLUMNS: list[Column] = [
    ("ID", "id"),
    ("EVENT TYPE", "event_type"),
    ("TARGET", "target_id"),
    ("STATUS", "status"),
    ("ATTEMPTS", "attempts"),
    ("HTTP", lambda d: str(d.last_http_status or "-")),
    ("NEXT ATTEMPT", "next_attempt_at"),
    ("LAST ERROR", lambda d: d.last_error or "-"),
    ("CREATED", "created_at"),
]

EVENT_COLUMNS: list[Column] = [
    ("ID", "id"),
    ("TYPE", "event_type"),
    ("SEVERITY", "severity"),
    ("RESOURCE", lambda e: e.resource_name or e.resource_id or "-"),
    ("SUMMARY", "summary"),
    ("OCCURRED", "occurred_at"),
]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    group = add_group(sub, "notification", "notification targets (webhooks, e-mail) and "
                      "their deliveries")
    target = group.add_parser("target", help="targets events are sent to",
                              description="targets events are sent to")
    targets = target.add_subparsers(dest="target_command", metavar="COMMAND", required=True)

    p = add_command(targets, "create", cmd_target_create,
                    "add a webhook or SMTP target (a webhook's signing secret is shown once)",
                    rpc="NotificationService.CreateNotificationTarget")
    p.add_argument("--name", required=True)
    p.add_argument("--event-type", action="append", default=[], metavar="TYPE",
                   help="an event type to send (repeatable), e.g. backup.failed; "
                   "default: every type")
    p.add_argument("--disabled", action="store_true", help="create it without sending")
    p.add_argument("--webhook-url", metavar="URL",
                   help="https://HOST/PATH events are POSTed to (plain http only to "
                   "127.0.0.1 or localhost)")
    p.add_argument("--trust-ca-file", type=Path, metavar="PEM",
                   help="a CA to trust for the target's TLS, besides the system's")
    p.add_argument("--smtp-host", metavar="HOST", help="send e-mail through this server")
    p.add_argument("--smtp-port", type=int, default=0, metavar="PORT",
                   help="default: 587 (starttls), 465 (ssl), 25 (none)")
    p.add_argument("--smtp-security", choices=SMTP_SECURITY, default="starttls")
    p.add_argument("--smtp-from", metavar="ADDRESS")
    p.add_argument("--smtp-to", action="append", default=[], metavar="ADDRESS",
                   help="a recipient (repeatable)")
    p.add_argument("--smtp-username")
    p.add_argument("--smtp-password-file", type=Path, metavar="PATH",
                   help="read the SMTP password from this file (its first line); '-' "
                   "reads stdin; omitted with --smtp-username: prompt")

    p = add_command(targets, "list", cmd_target_list, "list targets",
                    rpc="NotificationService.ListNotificationTargets")
    add_paging(p)
    p = add_command(targets, "show", cmd_target_show, "show a target",
                    rpc="NotificationService.GetNotificationTarget")
    p.add_argument("target_id", metavar="TARGET_ID")
    p = add_command(targets, "update", cmd_target_update,
                    "rename, enable or disable a target, or change its event types",
                    rpc="NotificationService.UpdateNotificationTarget")
    p.add_argument("target_id", metavar="TARGET_ID")
    p.add_argument("--name")
    on_off = p.add_mutually_exclusive_group()
    on_off.add_argument("--enable", action="store_true", help="send to it again")
    on_off.add_argument("--disable", action="store_true", help="stop sending to it")
    kinds = p.add_mutually_exclusive_group()
    kinds.add_argument("--event-type", action="append", default=[], metavar="TYPE",
                       help="the event types to send from now on (repeatable)")
    kinds.add_argument("--all-event-types", action="store_true",
                       help="send every event type from now on")
    p = add_command(targets, "delete", cmd_target_delete, "delete a target and its "
                    "deliveries", rpc="NotificationService.DeleteNotificationTarget")
    p.add_argument("target_id", metavar="TARGET_ID")
    p = add_command(targets, "test", cmd_target_test,
                    "send a test event to a target and wait for its outcome",
                    rpc=("NotificationService.TestNotificationTarget",
                         "NotificationService.ListNotificationDeliveries"))
    p.add_argument("target_id", metavar="TARGET_ID")
    p.add_argument("--wait", type=float, default=TEST_WAIT_S, metavar="SECONDS",
                   help=f"how long to wait for the outcome (default {TEST_WAIT_S:g}; 0: "
                   "do not wait)")

    p = add_command(group, "deliveries", cmd_deliveries,
                    "list deliveries: each event to each target, with its outcome",
                    rpc="NotificationService.ListNotificationDeliveries")
    p.add_argument("--target", metavar="TARGET_ID")
    p.add_argument("--status", choices=DELIVERY_STATUSES)
    p.add_argument("--event-type", metavar="TYPE")
    add_paging(p)

    events = add_group(sub, "event", "what happened: backups failed, agents offline, ...")
    p = add_command(events, "list", cmd_event_list, "list the account's events, oldest first",
                    rpc="NotificationService.ListEvents")
    p.add_argument("--type", metavar="TYPE", help="only this event type, e.g. backup.failed")
    p.add_argument("--resource", metavar="ID", help="only events about this resource id")
    p.add_argument("--since", metavar="WHEN", type=point_in_time,
                   help="only events since this time: ISO 8601 (2026-12-01T00:00Z) or an "
                   "age such as 30m, 12h, 7d")
    add_paging(p)


def _smtp_password(args: argparse.Namespace) -> str:
    if args.smtp_password_file is not None:
        return read_secret_line(args.smtp_password_file, "--smtp-password-file")
    if not args.smtp_username:
        return ""
    if not sys.stdin.isatty():
        raise UsageError("--smtp-username needs --smtp-password-file (or a terminal to ask)")
    return getpass.getpass("SMTP password: ")


def build_create_request(args: argparse.Namespace
                         ) -> notification_pb2.CreateNotificationTargetRequest:
    if bool(args.webhook_url) == bool(args.smtp_host):
        raise UsageError("give --webhook-url or --smtp-host (one of them)")
    ca = ""
    if args.trust_ca_file is not None:
        try:
            ca = args.trust_ca_file.read_text()
        except OSError as exc:
            raise UsageError(f"cannot read --trust-ca-file: {exc}") from None
    req = notification_pb2.CreateNotificationTargetRequest(
        name=args.name, event_types=args.event_type, enabled=not args.disabled)
    if args.webhook_url:
        req.webhook.CopyFrom(notification_pb2.WebhookTarget(url=args.webhook_url,
                                                            ca_certificate=ca))
    else:
        if not args.smtp_from or not args.smtp_to:
            raise UsageError("an SMTP target needs --smtp-from and at least one --smtp-to")
        req.smtp.CopyFrom(notification_pb2.SmtpTarget(
            host=args.smtp_host, port=args.smtp_port, security=args.smtp_security,
            from_address=args.smtp_from, to_addresses=args.smtp_to,
            username=args.smtp_username or "", password=_smtp_password(args),
            ca_certificate=ca))
    return req


def cmd_target_create(ctx: Context, args: argparse.Namespace) -> int:
    resp = ctx.client.notifications.CreateNotificationTarget(build_create_request(args),
                                                             timeout=ctx.timeout)
    if ctx.out.json:
        ctx.out.json_value({"target": to_dict(resp.target),
                            "signing_secret": resp.signing_secret})
        return 0
    ctx.out.show(resp.target)
    if resp.signing_secret:
        ctx.out.message(f"signing secret: {resp.signing_secret}")
        ctx.out.note("the signing secret is shown only now; receivers check X-CBR-Signature "
                     "with it (see the README, Notifications)")
    return 0


def cmd_target_list(ctx: Context, args: argparse.Namespace) -> int:
    items = list_pages(ctx, ctx.client.notifications.ListNotificationTargets,
                       notification_pb2.ListNotificationTargetsRequest(), "targets")
    ctx.out.items(items, TARGET_COLUMNS)
    return 0


def cmd_target_show(ctx: Context, args: argparse.Namespace) -> int:
    resp = ctx.client.notifications.GetNotificationTarget(
        notification_pb2.GetNotificationTargetRequest(target_id=args.target_id),
        timeout=ctx.timeout)
    ctx.out.show(resp.target)
    return 0


def cmd_target_update(ctx: Context, args: argparse.Namespace) -> int:
    target = notification_pb2.NotificationTarget()
    paths: list[str] = []
    if args.name is not None:
        target.name = args.name
        paths.append("name")
    if args.enable or args.disable:
        target.enabled = bool(args.enable)
        paths.append("enabled")
    if args.event_type or args.all_event_types:
        target.event_types.extend(args.event_type)
        paths.append("event_types")
    if not paths:
        raise UsageError("nothing to change: give --name, --enable/--disable, --event-type "
                         "or --all-event-types")
    resp = ctx.client.notifications.UpdateNotificationTarget(
        notification_pb2.UpdateNotificationTargetRequest(
            target_id=args.target_id, target=target,
            update_mask=field_mask_pb2.FieldMask(paths=paths)),
        timeout=ctx.timeout)
    ctx.out.show(resp.target)
    return 0


def cmd_target_delete(ctx: Context, args: argparse.Namespace) -> int:
    ctx.client.notifications.DeleteNotificationTarget(
        notification_pb2.DeleteNotificationTargetRequest(target_id=args.target_id),
        timeout=ctx.timeout)
    ctx.out.deleted("notification target", args.target_id)
    return 0


def _find_delivery(ctx: Context, target_id: str, delivery_id: str
                   ) -> notification_pb2.NotificationDelivery | None:
    req = notification_pb2.ListNotificationDeliveriesRequest(
        target_id=target_id, event_type="notification.test", page_size=1000)
    while True:
        resp = ctx.client.notifications.ListNotificationDeliveries(req, timeout=ctx.timeout)
        for delivery in resp.deliveries:
            if delivery.id == delivery_id:
                return delivery
        if not resp.next_page_token:
            return None
        req.page_token = resp.next_page_token


def cmd_target_test(ctx: Context, args: argparse.Namespace) -> int:
    """Exit 0 when the test event was delivered, 1 when it failed or is not
    delivered within --wait (it stays queued and is retried)."""
    delivery = ctx.client.notifications.TestNotificationTarget(
        notification_pb2.TestNotificationTargetRequest(target_id=args.target_id),
        timeout=ctx.timeout).delivery
    deadline = time.monotonic() + max(args.wait, 0.0)
    while delivery.status == "pending" and delivery.attempts == 0 \
            and time.monotonic() < deadline:
        time.sleep(0.5)
        delivery = _find_delivery(ctx, args.target_id, delivery.id) or delivery
    ctx.out.show(delivery)
    if delivery.status == "delivered":
        return 0
    if delivery.status == "pending" and not ctx.out.json:
        ctx.out.note("not delivered yet" + (f" ({delivery.last_error}); it is tried again"
                                            if delivery.last_error else "") +
                     "; see `cbr notification deliveries --target "
                     f"{args.target_id}`")
    return 1


def cmd_deliveries(ctx: Context, args: argparse.Namespace) -> int:
    req = notification_pb2.ListNotificationDeliveriesRequest(
        target_id=args.target or "", status=args.status or "",
        event_type=args.event_type or "")
    items = list_pages(ctx, ctx.client.notifications.ListNotificationDeliveries, req,
                       "deliveries")
    ctx.out.items(items, DELIVERY_COLUMNS)
    return 0


def cmd_event_list(ctx: Context, args: argparse.Namespace) -> int:
    req = notification_pb2.ListEventsRequest(event_type=args.type or "",
                                             resource_id=args.resource or "")
    if args.since is not None:
        req.since.CopyFrom(timestamp(args.since))
    items = list_pages(ctx, ctx.client.notifications.ListEvents, req, "events")
    ctx.out.items(items, EVENT_COLUMNS)
    return 0
