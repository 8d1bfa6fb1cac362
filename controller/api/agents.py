"""AgentService on the public API port, thin: requests in, one domain call, responses out.

Enroll is unsigned, authenticated by its one-time token; the other calls are
signed administrator calls. Connect is refused here: agents connect to the
TLS agent endpoint (``controller.agents.servicer``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from cbr import errors
from cbr.v1 import agent_pb2, agent_pb2_grpc
from controller import pki
from controller.agents import convert
from controller.api.caller import current_caller
from controller.app import App
from controller.persistence.vocabulary import AgentRole, OperationType
from controller.pki import certificate_authority
from controller.services import agents as service
from controller.services import commands, tasks


def register(server: grpc.aio.Server, app: App) -> None:
    """Adds AgentService (Enroll, admin calls; Connect refused) to the public server."""
    certificate_authority(app)  # create the CA at first start, before any token is made
    agent_pb2_grpc.add_AgentServiceServicer_to_server(AgentServiceServicer(app), server)


def _live(app: App) -> Callable[[str], service.LiveState | None] | None:
    return app.hub.live_state if app.hub is not None else None


class AgentServiceServicer(agent_pb2_grpc.AgentServiceServicer):  # type: ignore[misc]
    """The public-port AgentService."""

    def __init__(self, app: App) -> None:
        self._app = app

    # -- agent-facing ----------------------------------------------------------

    def Enroll(self, request: Any, context: grpc.ServicerContext) -> Any:
        app = self._app
        if not app.agent_endpoint:
            raise errors.Conflict("The controller's agent endpoint is not up yet; retry in a "
                                  "few seconds. The token was not spent.")
        if request.role not in convert.PB_TO_ROLE and request.role:
            raise errors.InvalidParameter("role must be AGENT_ROLE_HOST or AGENT_ROLE_IMPORTER.")
        ca = certificate_authority(app)
        with app.db.begin() as session:
            enrollment = service.enroll(
                session, ca,
                token=request.token,
                csr_pem=request.csr_pem,
                name=request.name,
                hostname=request.hostname,
                role=convert.PB_TO_ROLE.get(request.role, AgentRole.HOST),
                version=request.version,
                now=app.clock.now(),
            )
        return agent_pb2.EnrollResponse(
            agent_id=enrollment.agent_id,
            certificate_pem=enrollment.certificate_pem.decode(),
            ca_certificate_pem=ca.certificate_pem.decode(),
            agent_endpoint=app.agent_endpoint,
            server_name=pki.SERVER_NAME,
        )

    async def Connect(self, request_iterator: Any,
                      context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        endpoint = self._app.agent_endpoint or "the address given at enrollment"
        raise errors.Conflict(
            f"Connect is served on the TLS agent endpoint ({endpoint}) with the client "
            "certificate from enrollment, not on the public API port."
        )
        yield  # pragma: no cover - makes this a generator like the real Connect

    # -- administrator calls (signed; the auth interceptor checked the action) --

    def CreateEnrollmentToken(self, request: Any, context: grpc.ServicerContext) -> Any:
        app = self._app
        caller = current_caller()
        ca = certificate_authority(app)
        with app.db.begin() as session:
            new = service.create_token(
                session,
                project_id=caller.account_id,
                ca_fingerprint=ca.ca_fingerprint(),
                now=app.clock.now(),
                ttl_seconds=int(request.ttl_seconds),
                description=request.description,
            )
        return agent_pb2.CreateEnrollmentTokenResponse(
            token=new.token, expires_at=convert.timestamp(new.expires_at),
            agent_endpoint=app.agent_endpoint,
        )

    def GetAgent(self, request: Any, context: grpc.ServicerContext) -> Any:
        app = self._app
        with app.db.begin() as session:
            view = service.get_agent(
                session, current_caller().account_id, request.agent_id, now=app.clock.now(),
                offline_after=app.config.agent_offline_after, live=_live(app),
            )
        return agent_pb2.GetAgentResponse(agent=convert.agent_to_pb(view))

    def ListAgents(self, request: Any, context: grpc.ServicerContext) -> Any:
        app = self._app
        online = {agent_pb2.AGENT_STATUS_ONLINE: True,
                  agent_pb2.AGENT_STATUS_OFFLINE: False}.get(request.status)
        role = convert.PB_TO_ROLE.get(request.role, "")
        with app.db.begin() as session:
            page, next_token, total = service.list_agents(
                session, current_caller().account_id, now=app.clock.now(),
                offline_after=app.config.agent_offline_after, live=_live(app),
                online=online, role=role, page_size=request.page_size,
                page_token=request.page_token,
            )
        return agent_pb2.ListAgentsResponse(
            agents=[convert.agent_to_pb(v) for v in page], next_page_token=next_token,
            total_count=total,
        )

    def DeleteAgent(self, request: Any, context: grpc.ServicerContext) -> Any:
        app = self._app
        with app.db.begin() as session:
            service.delete_agent(session, current_caller().account_id, request.agent_id,
                                 app.clock.now())
        if app.hub is not None:
            app.hub.disconnect(request.agent_id)
        return agent_pb2.DeleteAgentResponse()

    def SyncAgent(self, request: Any, context: grpc.ServicerContext) -> Any:
        app = self._app
        project_id = current_caller().account_id
        now = app.clock.now()
        with app.db.begin() as session:
            view = service.get_agent(session, project_id, request.agent_id, now=now,
                                     offline_after=app.config.agent_offline_after)
            task = tasks.create_task(
                session, project_id=project_id, operation_type=OperationType.SYNC, now=now,
                agent_id=view.id, resource_name=view.name, command=commands.sync(),
            )
            task_id = task.id
        if app.hub is not None:
            app.hub.dispatch(view.id, task_id)
        return agent_pb2.SyncAgentResponse(task_id=task_id)
