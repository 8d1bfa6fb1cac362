"""`cbr cloud show`: the controller's cloud name, region and replication regions."""

from __future__ import annotations

import argparse

from cbr.v1 import cloud_pb2
from cli._common import Column, Context, add_command, add_group

REGION_COLUMNS: list[Column] = [("REGION", "id"), ("REPLICATION", "replication_supported")]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    group = add_group(sub, "cloud", "the cloud this controller serves")
    add_command(
        group, "show", cmd_show, "show the cloud and its regions", rpc="CloudService.GetCloud"
    )


def cmd_show(ctx: Context, args: argparse.Namespace) -> int:
    resp = ctx.client.cloud.GetCloud(cloud_pb2.GetCloudRequest(), timeout=ctx.timeout)
    ctx.out.show(resp.cloud, subtables=[("regions", resp.cloud.regions, REGION_COLUMNS)])
    return 0
