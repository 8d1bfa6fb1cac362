"""Whether an agent is online: connected and heard from recently.

The hub knows best (it holds the live streams and the last heartbeat in
memory); without a hub (tests of the services alone) the database's
connected flag and last_seen_at decide.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select

from controller.persistence.models import Agent


def is_online(app: Any, agent: Agent | None) -> bool:
    if agent is None or agent.revoked:
        return False
    hub = getattr(app, "hub", None)
    if hub is not None and hasattr(hub, "is_online"):
        return bool(hub.is_online(agent.id))
    if not agent.connected or agent.last_seen_at is None:
        return False
    limit = dt.timedelta(seconds=app.config.agent_offline_after)
    return bool(app.clock.now() - agent.last_seen_at <= limit)


def online_agent_ids(app: Any, project_id: str) -> list[str]:
    with app.db.begin() as s:
        agents = s.scalars(select(Agent).where(Agent.project_id == project_id,
                                               Agent.revoked.is_(False))).all()
        return [a.id for a in agents if is_online(app, a)]
