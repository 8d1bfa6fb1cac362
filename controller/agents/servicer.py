"""The agent endpoint's AgentService: Connect.

``AgentEndpointServicer`` serves only Connect, authenticated by the client
certificate (the agent id is its URI SAN or CN; the certificate's SHA-256
must be the one recorded at enrollment, and the agent must not be deleted).
The public port's AgentService (Enroll and the administrator calls) is
``controller.api.agents``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from cbr import errors
from cbr.status import status_of
from cbr.v1 import agent_pb2_grpc
from controller import pki
from controller.app import App
from controller.services import agents as service

log = logging.getLogger("cbr.controller.agents")

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
