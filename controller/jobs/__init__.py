"""The controller's work over time, above the agent hub and below the API.

The policy loop (``scheduler``), cross-cloud replication (``replicator`` on
the source, ``receiver`` on the target), vault maintenance that needs no host
(``maintenance``), sending notifications (``notifier``), reading backups'
trees for the API (``browse``), what the hub adds to a command when it sends
it (``delivery``) and what the end of a command changes in the catalog
(``outcomes``). Jobs call the services for
every rule and the hub to reach agents; the hub knows nothing of them but
the handlers ``install`` registers, keyed by the command's action.
"""

from __future__ import annotations

from controller.agents.hub import AgentHub
from controller.app import App


def install(hub: AgentHub, app: App) -> None:
    """Registers, on a new hub, what each command carries and what its end changes."""
    from controller.jobs import delivery, outcomes

    delivery.register(hub, app)
    outcomes.register(hub, app)
