"""AgentService over gRPC, thin: requests in, one domain call, responses out.

Two servicers share the service definition. ``AgentServiceServicer`` is on the
public API port: Enroll (unsigned, authenticated by its one-time token) and
the signed administrator calls; Connect there is refused, since agents connect
to the TLS agent endpoint. ``AgentEndpointServicer`` is on the agent endpoint:
only Connect, authenticated by the client certificate (the agent id is its
URI SAN or CN; the certificate's SHA-256 must be the one recorded at
enrollment, and the agent must not be deleted).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from cbr import errors
from cbr.status import status_of
from cbr.v1 import agent_pb2, agent_pb2_grpc
from controller.agents import convert, pki, service
from controller.api.caller import current_caller
from controller.app import App
from controller.services import paging, tasks

log = logging.getLogger("cbr.controller.agents")

_CA_KEY = "agents.ca"
_ca_lock = threading.Lock()


def certificate_authority(app: App) -> pki.CertificateAuthority:
    """The controller CA under <data-dir>/ca, created at first use and cached on the app."""
    with _ca_lock:
        ca = app.extras.get(_CA_KEY)
        if ca is None:
            ca = pki.CertificateAuthority.load_or_create(app.data_dir / pki.CA_DIR, app.clock)
            app.extras[_CA_KEY] = ca
        return ca  # type: ignore[no-any-return]


def _live(app: App) -> Callable[[str], service.LiveState | None] | None:
    return app.hub.live_state if app.hub is not None else None


def _page(page_size: int, page_token: str) -> tuple[int, int]:
    size = paging.page_size(page_size)
    try:
        offset = int(page_token) if page_token else 0
    except ValueError:
        raise errors.InvalidParameter("page_token is not one this controller gave.") from None
    if offset < 0:
        raise errors.InvalidParameter("page_token is not one this controller gave.")
    return size, offset


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
                role=convert.PB_TO_ROLE.get(request.role, "host"),
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
        size, offset = _page(request.page_size, request.page_token)
        online = {agent_pb2.AGENT_STATUS_ONLINE: True,
                  agent_pb2.AGENT_STATUS_OFFLINE: False}.get(request.status)
        role = convert.PB_TO_ROLE.get(request.role, "")
        with app.db.begin() as session:
            page, total = service.list_agents(
                session, current_caller().account_id, now=app.clock.now(),
                offline_after=app.config.agent_offline_after, live=_live(app),
                online=online, role=role, offset=offset, limit=size,
            )
        next_token = str(offset + size) if offset + size < total else ""
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
                session, project_id=project_id, operation_type="sync", now=now,
                agent_id=view.id, resource_name=view.name, command={"sync": {}},
            )
            task_id = task.id
        if app.hub is not None:
            app.hub.dispatch(view.id, task_id)
        return agent_pb2.SyncAgentResponse(task_id=task_id)


def peer_identity(context: grpc.ServicerContext | grpc.aio.ServicerContext) -> tuple[str, str]:
    """(agent id, certificate SHA-256) of the TLS peer; Unauthenticated without one."""
    auth = context.auth_context()
    pems: Any = auth.get("x509_pem_cert") or []
    if not pems or not isinstance(pems[0], bytes):
        raise errors.Unauthenticated("Connect needs the client certificate issued at "
                                     "enrollment.")
    pem = pems[0]
    cert = x509.load_pem_x509_certificate(pem)
    fingerprint = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    return pki.agent_id_of(pem), fingerprint


class AgentEndpointServicer(agent_pb2_grpc.AgentServiceServicer):  # type: ignore[misc]
    """The agent endpoint's AgentService (grpc.aio): Connect only; the rest is UNIMPLEMENTED.

    Asynchronous so that one event loop holds every agent stream: an idle
    agent costs a coroutine, not a thread.
    """

    def __init__(self, app: App) -> None:
        self._app = app

    def _authenticate(self, agent_id: str, fingerprint: str) -> str:
        with self._app.db.begin() as session:
            return service.authenticate_stream(session, agent_id, fingerprint).project_id

    async def Connect(self, request_iterator: Any,
                      context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        app = self._app
        try:
            agent_id, fingerprint = peer_identity(context)
            loop = asyncio.get_running_loop()
            project_id = await loop.run_in_executor(None, self._authenticate, agent_id,
                                                    fingerprint)
            if app.hub is None:
                raise errors.AgentUnavailable("The controller is starting; reconnect shortly.")
        except errors.CbrError as err:
            status = status_of(err)
            await context.abort(status.code, status.details, status.trailing_metadata)
            return
        async for message in app.hub.serve(agent_id, project_id, request_iterator):
            yield message
