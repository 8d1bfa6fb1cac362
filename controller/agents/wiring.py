"""How the agent parts plug into a controller process: two functions.

``register_public`` adds AgentService to the public API server (Enroll and
the signed administrator calls). ``start_agent_endpoint`` creates the TLS
agent endpoint (client certificates required, the controller CA as the only
root), starts the agent hub, and tells the app where agents should dial.
Shutdown is ``app.hub.stop()`` then ``server.stop(grace)``.
"""

from __future__ import annotations

import logging
from concurrent import futures

import grpc

from cbr.v1 import agent_pb2_grpc
from controller.agents.hub import AgentHub
from controller.agents.servicer import (
    AgentEndpointServicer,
    AgentServiceServicer,
    certificate_authority,
)
from controller.api.interceptors import ErrorInterceptor
from controller.app import App

log = logging.getLogger("cbr.controller.agents")

# Each open agent stream holds one server thread for its responses (plus a
# reader thread of the hub); threads are made on demand up to this bound.
MAX_AGENT_STREAMS = 4096

SERVER_OPTIONS = [
    # Find dead agents (a host that lost power sends no FIN) within a minute.
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
]


def register_public(server: grpc.Server, app: App) -> None:
    """Adds AgentService (Enroll, admin calls; Connect refused) to the public server."""
    certificate_authority(app)  # create the CA at first start, before any token is made
    agent_pb2_grpc.add_AgentServiceServicer_to_server(AgentServiceServicer(app), server)


def _host_port(address: str) -> tuple[str, str]:
    host, _, port = address.rpartition(":")
    return host, port


def start_agent_endpoint(app: App) -> tuple[grpc.Server, int]:
    """Binds config.agent_listen with TLS, starts the hub and the server; (server, port)."""
    ca = certificate_authority(app)
    identity = ca.server_identity()
    credentials = grpc.ssl_server_credentials(
        [(identity.key_pem, identity.certificate_pem)],
        root_certificates=ca.certificate_pem,
        require_client_auth=True,
    )
    if app.hub is None:
        app.hub = AgentHub(app)
        app.hub.start()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=MAX_AGENT_STREAMS,
                                   thread_name_prefix="agent-endpoint"),
        interceptors=[ErrorInterceptor()],
        options=SERVER_OPTIONS,
    )
    agent_pb2_grpc.add_AgentServiceServicer_to_server(AgentEndpointServicer(app), server)
    listen = app.config.agent_listen
    port = server.add_secure_port(listen, credentials)
    if port == 0:
        raise RuntimeError(f"cannot listen on {listen} for agents")
    server.start()
    host, _ = _host_port(listen)
    app.agent_endpoint = app.config.agent_advertise or f"{host}:{port}"
    log.info("agent endpoint listening on %s:%d (TLS, client certificates); agents dial %s",
             host, port, app.agent_endpoint)
    return server, port
