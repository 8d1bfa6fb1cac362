"""Whether an agent is online: connected and heard from recently.

The hub knows best (it holds the live streams and the last heartbeat in
memory); without a hub (tests of the services alone) the database's
connected flag and last_seen_at decide.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Connection, or_, select, update
from sqlalchemy.orm import Session

from controller.persistence.models import Agent
from controller.persistence.vocabulary import EventType
from controller.services import events


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


def report_offline(session: Session, now: dt.datetime, after: dt.timedelta) -> int:
    """Records an ``agent.offline`` event for each agent unheard for longer
    than ``after`` whose current silence is not reported yet; returns how many.

    Works from the database's last_seen_at, which the controller holding an
    agent's stream keeps fresh, so every controller sharing the database sees
    the same; the conditional update lets one of them report each silence,
    and a later last_seen_at (the agent came back) opens the next one."""
    cutoff = now - after
    unreported = or_(Agent.offline_reported_at.is_(None),
                     Agent.offline_reported_at < Agent.last_seen_at)
    silent = session.execute(select(Agent.id, Agent.project_id, Agent.name, Agent.hostname,
                                    Agent.last_seen_at).where(
        Agent.revoked.is_(False), Agent.last_seen_at < cutoff, unreported)).all()
    reported = 0
    for agent_id, project_id, name, hostname, last_seen in silent:
        taken = session.execute(update(Agent).where(
            Agent.id == agent_id, Agent.last_seen_at < cutoff, unreported)
            .values(offline_reported_at=now).execution_options(synchronize_session=False))
        if getattr(taken, "rowcount", 0) != 1 or last_seen is None:
            continue  # another controller reported it
        minutes = int((now - last_seen).total_seconds() // 60)
        events.record(
            session, project_id=project_id, event_type=EventType.AGENT_OFFLINE, now=now,
            summary=f"Agent {name} ({hostname or agent_id}) has not been heard from for "
                    f"{minutes} minutes (last seen {last_seen.isoformat()}); its backups "
                    "and restores cannot run.",
            resource_type="agent", resource_id=agent_id, resource_name=name,
            details={"agent_id": agent_id, "hostname": hostname,
                     "last_seen_at": last_seen.isoformat(), "offline_minutes": minutes})
        reported += 1
    return reported
