"""Agents: who is enrolled and what each reports, enrollment tokens, deletion.

A new enrollment token is shown once, in the response of the POST that made
it: never in a URL (it would stay in history and logs), never kept by the
console, never on a later page.
"""

from __future__ import annotations

import math
from urllib.parse import quote

from aiohttp import web

from cbr.v1 import agent_pb2
from console import web as cw

MAX_TTL_HOURS = 7 * 24  # the API's own bound (agent.proto)
CONFIG = "/etc/cbr/agent.toml"


def add_routes(app: web.Application) -> None:
    app.router.add_get("/agents", list_page)
    app.router.add_post("/agents/tokens", create_token)
    app.router.add_post("/agents/{agent_id}/delete", delete)


async def list_page(request: web.Request) -> web.Response:
    api = cw.api(request)
    listed = await api(api.stubs.agents.ListAgents, agent_pb2.ListAgentsRequest(page_size=1000))
    return cw.render(request, "agents.html", agents=listed.agents, total=listed.total_count,
                     max_ttl_hours=MAX_TTL_HOURS)


async def create_token(request: web.Request) -> web.Response:
    api = cw.api(request)
    form = await request.post()
    try:
        hours = float(str(form.get("ttl_hours", "1")) or 1)
    except ValueError:
        hours = -1  # the API names the field and its range
    if not math.isfinite(hours):
        hours = -1
    hours = min(hours, 10 * MAX_TTL_HOURS)  # past the API's bound, within the field
    role = "importer" if form.get("role") == "importer" else "host"
    made = await api(api.stubs.agents.CreateEnrollmentToken,
                     agent_pb2.CreateEnrollmentTokenRequest(
                         ttl_seconds=int(hours * 3600),
                         description=str(form.get("description", ""))[:255]))
    command = f"cbr-agent --config {CONFIG}"
    if role == "importer":
        command += " --role importer"
    response = cw.render(request, "agent_token.html", token=made.token,
                         expires_at=made.expires_at, agent_endpoint=made.agent_endpoint,
                         command=f"{command} enroll --token {made.token}",
                         run=f"cbr-agent --config {CONFIG} run", role=role)
    return response


async def delete(request: web.Request) -> web.Response:
    api = cw.api(request)
    agent_id = request.match_info["agent_id"]
    await api(api.stubs.agents.DeleteAgent, agent_pb2.DeleteAgentRequest(agent_id=agent_id))
    return cw.redirect(request, "/agents?deleted=" + quote(agent_id, safe=""))
