"""The ``sync`` command: rescan what this host protects and report it now.

The Inventory goes out on the stream before the command's result, so when
the controller marks the sync task done the protectables are already updated.
"""

from __future__ import annotations

from typing import Any

from agent.commands import CommandContext, Outcome


def run(context: CommandContext, command: Any) -> Outcome:
    count = context.report_inventory()
    return Outcome(success=True, extra_info={"protectable_count": str(count)})
