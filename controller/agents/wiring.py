"""The TLS agent endpoint of a controller process.

``start_agent_endpoint`` creates it (client certificates required, the
controller CA as the only root) for the started hub, and tells the app where
agents should dial. Shutdown is ``endpoint.stop()`` (ends the streams), then
``app.hub.stop()``.
"""

from __future__ import annotations

import logging

import grpc

from cbr import limits
from cbr.listen import NO_PORT_SHARING, bind
from cbr.v1 import agent_pb2_grpc
from controller.agents.servicer import AgentEndpointServicer
from controller.aioserver import LoopServer
from controller.app import App
from controller.pki import certificate_authority

log = logging.getLogger("cbr.controller.agents")

# Streams one controller holds at most; each is a coroutine on the endpoint's loop.
MAX_AGENT_STREAMS = 10_000

SERVER_OPTIONS = [
    NO_PORT_SHARING,
    # Find dead agents (a host that lost power sends no FIN) within a minute.
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", limits.AGENT_MESSAGE_BYTES),
]


def _host_port(address: str) -> tuple[str, str]:
    host, _, port = address.rpartition(":")
    return host, port


class AgentEndpoint:
    """The TLS agent endpoint: a grpc.aio server on an event loop of its own thread."""

    def __init__(self, app: App) -> None:
        self._app = app
        self._server: LoopServer | None = None
        self.port = 0

    def start(self) -> int:
        self._server = LoopServer(self._build, name="agent-endpoint")
        self._server.start()
        self.port = self._server.port
        return self.port

    async def _build(self) -> tuple[grpc.aio.Server, int]:
        ca = certificate_authority(self._app)
        identity = ca.server_identity()
        credentials = grpc.ssl_server_credentials(
            [(identity.key_pem, identity.certificate_pem)],
            root_certificates=ca.certificate_pem,
            require_client_auth=True,
        )
        server = grpc.aio.server(options=SERVER_OPTIONS,
                                 maximum_concurrent_rpcs=MAX_AGENT_STREAMS)
        agent_pb2_grpc.add_AgentServiceServicer_to_server(AgentEndpointServicer(self._app),
                                                          server)
        return server, bind(server, self._app.config.agent_listen, credentials, what="agents")

    def stop(self, grace: float = 2.0) -> None:
        """Ends every stream (agents reconnect to the next controller) and the loop."""
        server, self._server = self._server, None
        if server is not None:
            try:
                server.stop(grace)
            except Exception:
                log.exception("agent endpoint did not stop cleanly")


def start_agent_endpoint(app: App) -> tuple[AgentEndpoint, int]:
    """Starts the hub and the TLS agent endpoint on config.agent_listen; (endpoint, port).

    The hub (``app.hub``, with the jobs' handlers installed) must be started
    first. Shut down with ``endpoint.stop()`` first (ends the streams), then
    ``app.hub.stop()``.
    """
    if app.hub is None:
        raise RuntimeError("start the agent hub before its endpoint")
    endpoint = AgentEndpoint(app)
    port = endpoint.start()
    listen = app.config.agent_listen
    host, _ = _host_port(listen)
    app.agent_endpoint = app.config.agent_advertise or f"{host}:{port}"
    log.info("agent endpoint listening on %s:%d (TLS, client certificates); agents dial %s",
             host, port, app.agent_endpoint)
    return endpoint, port
