"""`cbr agent`: enrollment tokens and the agents on protected hosts.

`Connect` (the agent's own long-lived stream) has no command: only an agent
holding its enrolled certificate may open it, which is `cbr-agent`'s job.
`enroll` exists for enrolling by hand (for example a host whose key is made
by another tool); it is authenticated by the token, so it needs no AK/SK.
"""

from __future__ import annotations

import argparse
import os
import socket
from pathlib import Path

from cbr import client as cbr_client
from cbr.v1 import agent_pb2, agent_pb2_grpc
from cli import task_cmd
from cli._common import (
    Column,
    ConfigError,
    Context,
    add_command,
    add_group,
    add_paging,
    add_wait,
    enum_arg,
    enum_names,
    list_pages,
    positive_int,
)

ROLE = enum_names(agent_pb2.AgentRole.DESCRIPTOR)
STATUS = enum_names(agent_pb2.AgentStatus.DESCRIPTOR)

COLUMNS: list[Column] = [
    ("ID", "id"),
    ("NAME", "name"),
    ("HOST", "hostname"),
    ("ROLE", "role"),
    ("STATUS", "status"),
    ("VERSION", "version"),
    ("PROTECTABLES", "protectable_count"),
    ("LAST SEEN", "last_seen_at"),
]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    group = add_group(sub, "agent", "agents on protected hosts")

    p = add_command(
        group,
        "enroll-token",
        cmd_enroll_token,
        "make a one-time token an agent enrolls with",
        rpc="AgentService.CreateEnrollmentToken",
    )
    p.add_argument(
        "--ttl", type=positive_int, metavar="SECONDS", help="validity (default 3600, max 7 days)"
    )
    p.add_argument("--description")

    p = add_command(group, "list", cmd_list, "list agents", rpc="AgentService.ListAgents")
    enum_arg(p, "--status", STATUS, "only online or offline agents")
    enum_arg(p, "--role", ROLE, "only this role")
    add_paging(p)

    p = add_command(group, "show", cmd_show, "show an agent", rpc="AgentService.GetAgent")
    p.add_argument("agent_id", metavar="AGENT_ID")

    p = add_command(
        group,
        "delete",
        cmd_delete,
        "forget an agent and revoke its certificate",
        rpc="AgentService.DeleteAgent",
    )
    p.add_argument("agent_id", metavar="AGENT_ID")

    p = add_command(
        group,
        "sync",
        cmd_sync,
        "ask an agent to report its protectables",
        rpc="AgentService.SyncAgent",
    )
    p.add_argument("agent_id", metavar="AGENT_ID")
    add_wait(p)

    p = add_command(
        group,
        "enroll",
        cmd_enroll,
        "exchange a token and a CSR for an agent certificate (normally done by cbr-agent)",
        rpc="AgentService.Enroll",
    )
    p.add_argument("token", metavar="TOKEN")
    p.add_argument("--csr", required=True, type=Path, help="PEM certificate signing request")
    p.add_argument("--name", help="agent name (default: the host name)")
    p.add_argument("--hostname", help="default: this host's name")
    enum_arg(p, "--role", ROLE, "host (default) or importer", default="host")
    p.add_argument("--agent-version", default="", help="version the agent reports")
    p.add_argument("--cert-out", type=Path, help="write the agent certificate here")
    p.add_argument("--ca-out", type=Path, help="write the controller CA here")


def build_enroll_token_request(
    args: argparse.Namespace,
) -> agent_pb2.CreateEnrollmentTokenRequest:
    return agent_pb2.CreateEnrollmentTokenRequest(
        ttl_seconds=args.ttl or 0, description=args.description or ""
    )


def build_list_request(args: argparse.Namespace) -> agent_pb2.ListAgentsRequest:
    return agent_pb2.ListAgentsRequest(
        status=STATUS.value(args.status),  # type: ignore[arg-type]
        role=ROLE.value(args.role),  # type: ignore[arg-type]
    )


def build_enroll_request(args: argparse.Namespace) -> agent_pb2.EnrollRequest:
    try:
        csr = args.csr.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {args.csr}: {exc}") from exc
    hostname = args.hostname or socket.gethostname()
    return agent_pb2.EnrollRequest(
        token=args.token,
        csr_pem=csr,
        name=args.name or hostname,
        hostname=hostname,
        role=ROLE.value(args.role),  # type: ignore[arg-type]
        version=args.agent_version,
    )


def cmd_enroll_token(ctx: Context, args: argparse.Namespace) -> int:
    resp = ctx.client.agents.CreateEnrollmentToken(
        build_enroll_token_request(args), timeout=ctx.timeout
    )
    ctx.out.show(resp)
    if not ctx.out.json:
        ctx.out.note(f"enroll an agent with: cbr-agent enroll --token {resp.token}")
    return 0


def cmd_list(ctx: Context, args: argparse.Namespace) -> int:
    items = list_pages(ctx, ctx.client.agents.ListAgents, build_list_request(args), "agents")
    ctx.out.items(items, COLUMNS)
    return 0


def cmd_show(ctx: Context, args: argparse.Namespace) -> int:
    resp = ctx.client.agents.GetAgent(
        agent_pb2.GetAgentRequest(agent_id=args.agent_id), timeout=ctx.timeout
    )
    ctx.out.show(resp.agent)
    return 0


def cmd_delete(ctx: Context, args: argparse.Namespace) -> int:
    ctx.client.agents.DeleteAgent(
        agent_pb2.DeleteAgentRequest(agent_id=args.agent_id), timeout=ctx.timeout
    )
    ctx.out.deleted("agent", args.agent_id)
    return 0


def cmd_sync(ctx: Context, args: argparse.Namespace) -> int:
    resp = ctx.client.agents.SyncAgent(
        agent_pb2.SyncAgentRequest(agent_id=args.agent_id), timeout=ctx.timeout
    )
    return task_cmd.report_started(ctx, resp, [resp.task_id], f"syncing agent {args.agent_id}")


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def cmd_enroll(ctx: Context, args: argparse.Namespace) -> int:
    request = build_enroll_request(args)
    if not ctx.endpoint:
        raise ConfigError("no endpoint configured; pass --endpoint or run `cbr configure`")
    # Enroll is authenticated by the token: an unsigned channel, no keys needed.
    channel = cbr_client.channel(ctx.endpoint, **ctx.channel_settings())
    try:
        resp = agent_pb2_grpc.AgentServiceStub(channel).Enroll(request, timeout=ctx.timeout)
    finally:
        channel.close()
    if args.cert_out:
        _write_private(args.cert_out, resp.certificate_pem)
    if args.ca_out:
        _write_private(args.ca_out, resp.ca_certificate_pem)
    ctx.out.show(resp)
    return 0
