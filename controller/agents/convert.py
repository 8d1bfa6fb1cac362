"""Between the wire (cbr.v1 agent messages) and the agent domain's plain data.

Only translation lives here: enum names, timestamps, reported protectables in
and agent views out. Rules stay in ``service``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from google.protobuf import timestamp_pb2

from cbr.v1 import agent_pb2
from controller.persistence.vocabulary import AgentRole
from controller.services import commands
from controller.services.agents import AgentView, ReportedProtectable

ROLE_TO_PB: dict[str, agent_pb2.AgentRole] = {
    AgentRole.HOST: agent_pb2.AGENT_ROLE_HOST, AgentRole.IMPORTER: agent_pb2.AGENT_ROLE_IMPORTER}
PB_TO_ROLE = {v: k for k, v in ROLE_TO_PB.items()}
PB_TO_TYPE = {v: k for k, v in commands.OBJECT_TYPES.items()}


def timestamp(value: dt.datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def reported_from_pb(msg: Any) -> ReportedProtectable:
    return ReportedProtectable(
        local_id=msg.local_id,
        name=msg.name,
        object_type=PB_TO_TYPE.get(msg.type, ""),
        size_bytes=int(msg.size_bytes),
        disks=[
            {
                "id": d.id,
                "name": d.name,
                "path": d.path,
                "size_bytes": int(d.size_bytes),
                "system_disk": bool(d.system_disk),
                "device_type": d.device_type,
            }
            for d in msg.disks
        ],
        path=msg.path,
        tags=[{"key": t.key, "value": t.value} for t in msg.tags],
        error=msg.error,
    )


def agent_to_pb(view: AgentView) -> Any:
    msg = agent_pb2.Agent(
        id=view.id,
        name=view.name,
        hostname=view.hostname,
        role=ROLE_TO_PB.get(view.role, agent_pb2.AGENT_ROLE_UNSPECIFIED),
        status=agent_pb2.AGENT_STATUS_ONLINE if view.online else agent_pb2.AGENT_STATUS_OFFLINE,
        version=view.version,
        project_id=view.project_id,
        certificate_fingerprint=view.certificate_fingerprint,
        protectable_count=view.protectable_count,
    )
    for name in ("enrolled_at", "last_seen_at", "connected_at"):
        ts = timestamp(getattr(view, name))
        if ts is not None:
            getattr(msg, name).CopyFrom(ts)
    return msg
