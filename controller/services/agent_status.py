"""Whether an agent is online: connected and heard from recently.

The hub knows best (it holds the live streams and the last heartbeat in
memory); without a hub (tests of the services alone) the database's
connected flag and last_seen_at decide.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Connection, select
from sqlalchemy.orm import Session

from controller.persistence.models import Agent


def is_online(app: Any, agent: Agent | None) -> bool:
    if agent is None or agent.revoked:
        return False
    hub = getattr(app, "hub", None)
    if hub is not None:
        return bool(hub.is_online(agent.id))
    if not agent.connected or agent.last_seen_at is None:
        return False
    limit = dt.timedelta(seconds=app.config.agent_offline_after)
    return bool(app.clock.now() - agent.last_seen_at <= limit)


def online_agent_ids(app: Any, session: Session | Connection) -> set[str]:
    """Ids of all online agents (ids are global, so callers test membership)."""
    hub = getattr(app, "hub", None)
    if hub is not None:
        return set(hub.online_agent_ids())
    since = app.clock.now() - dt.timedelta(seconds=app.config.agent_offline_after)
    return set(session.scalars(select(Agent.id).where(
        Agent.connected.is_(True), Agent.revoked.is_(False), Agent.last_seen_at >= since)))


def online_among(app: Any, session: Session | Connection, agent_ids: set[str]) -> set[str]:
    """Which of ``agent_ids`` are online: a page of results asks about its
    own few agents, not every stream the controller holds."""
    hub = getattr(app, "hub", None)
    if hub is not None:
        return {a for a in agent_ids if hub.is_online(a)}
    return online_agent_ids(app, session) & agent_ids
