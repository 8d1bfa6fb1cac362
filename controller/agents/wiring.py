"""How the agent parts plug into a controller process: two functions.

``register_public`` adds AgentService to the public API server (Enroll and
the signed administrator calls). ``start_agent_endpoint`` creates the TLS
agent endpoint (client certificates required, the controller CA as the only
root), starts the agent hub, and tells the app where agents should dial.
Shutdown is ``endpoint.stop()`` (ends the streams), then ``app.hub.stop()``.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
from sqlalchemy import event
from sqlalchemy.orm import Session

from cbr.listen import NO_PORT_SHARING, bind
from cbr.v1 import agent_pb2_grpc
from controller.agents.hub import AgentHub
from controller.agents.servicer import (
    AgentEndpointServicer,
    AgentServiceServicer,
    certificate_authority,
)
from controller.aioserver import LoopServer
from controller.app import App
from controller.persistence.models import Checkpoint, Task
from controller.services import images, imports, policy_runs, replication, restores, runs

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
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
]


def register_public(server: grpc.aio.Server, app: App) -> None:
    """Adds AgentService (Enroll, admin calls; Connect refused) to the public server."""
    certificate_authority(app)  # create the CA at first start, before any token is made
    agent_pb2_grpc.add_AgentServiceServicer_to_server(AgentServiceServicer(app), server)


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


def register_result_handlers(hub: AgentHub, app: App) -> None:
    """What the end of each kind of agent task changes in the catalog."""

    def backup_done(session: Session, task: Task, _result: Any) -> None:
        now = app.clock.now()
        runs.finish_backup(session, task, task.status == "success", dict(task.extra_info), now)
        if task.status != "success":
            return
        # Retention after each successful automatic backup; the deletions
        # start once this transaction (which marks them) is committed.
        deletions = policy_runs.apply_retention(session, task, now)
        if deletions and app.maintenance is not None:
            maintenance = app.maintenance
            event.listen(session, "after_commit",
                         lambda _s: [maintenance.submit(t) for t in deletions], once=True)
        checkpoint = session.get(Checkpoint, task.checkpoint_id)
        follow = policy_runs.replication_policy_of(session, task.vault_id) \
            if checkpoint is not None and checkpoint.auto_trigger else None
        if follow is not None and app.replicator is not None:
            replicator, project_id, vault_id, policy_id = \
                app.replicator, task.project_id, task.vault_id, follow.id
            event.listen(session, "after_commit",
                         lambda _s: replicator.follow_backup(project_id, vault_id, policy_id),
                         once=True)

    def restore_done(session: Session, task: Task, _result: Any) -> None:
        restores.finish_restore(session, task, task.status == "success", app.clock.now())
        images.finish_image(session, task, app.clock.now())

    def replication_done(session: Session, task: Task, _result: Any) -> None:
        now = app.clock.now()
        if "import" in task.command:  # this cloud is the target: the importer's end
            imports.finish_import(session, task, now)
            return
        record = replication.transfer_done(session, task, now)
        if record is not None and app.replicator is not None:
            replicator = app.replicator
            event.listen(session, "after_commit", lambda _s: replicator.wake(), once=True)

    hub.register_result_handler("backup", backup_done)
    hub.register_result_handler("replication", replication_done)
    hub.register_result_handler("restore", restore_done)


def start_agent_endpoint(app: App) -> tuple[AgentEndpoint, int]:
    """Starts the hub and the TLS agent endpoint on config.agent_listen; (endpoint, port).

    Shut down with ``endpoint.stop()`` first (ends the streams), then ``app.hub.stop()``.
    """
    if app.hub is None:
        app.hub = AgentHub(app)
        register_result_handlers(app.hub, app)
        app.hub.start()
    endpoint = AgentEndpoint(app)
    port = endpoint.start()
    listen = app.config.agent_listen
    host, _ = _host_port(listen)
    app.agent_endpoint = app.config.agent_advertise or f"{host}:{port}"
    log.info("agent endpoint listening on %s:%d (TLS, client certificates); agents dial %s",
             host, port, app.agent_endpoint)
    return endpoint, port
