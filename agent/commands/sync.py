"""The ``sync`` command: rescan what this host protects and report it now.

The Inventory goes out on the stream before the command's result, so when
the controller marks the sync task done the protectables are already updated.
"""

from __future__ import annotations

from agent.commands import CommandContext, Outcome
from cbr.v1 import agent_pb2


def run(context: CommandContext, command: agent_pb2.SyncCommand) -> Outcome:
    count = context.report_inventory()
    return Outcome.done(agent_pb2.SyncResult(protectable_count=count))
