"""The public gRPC server: every cbr.v1 service, reflection and health.

``build_public_server(app)`` returns the server and its bound port (port 0
picks a free one, as the tests do); ``controller.main`` only wires
configuration to it.
"""

from __future__ import annotations

import ipaddress
import logging
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from cbr import limits
from cbr.listen import NO_PORT_SHARING, bind
from cbr.v1 import (
    agent_pb2,
    audit_pb2,
    audit_pb2_grpc,
    backup_pb2,
    backup_pb2_grpc,
    cloud_pb2,
    cloud_pb2_grpc,
    credential_pb2,
    credential_pb2_grpc,
    iam_pb2,
    iam_pb2_grpc,
    key_pb2,
    key_pb2_grpc,
    notification_pb2,
    notification_pb2_grpc,
    policy_pb2,
    policy_pb2_grpc,
    protectable_pb2,
    protectable_pb2_grpc,
    replication_pb2,
    replication_pb2_grpc,
    task_pb2,
    task_pb2_grpc,
    vault_pb2,
    vault_pb2_grpc,
)
from controller.aioserver import LoopServer
from controller.api.audit import AuditServicer
from controller.api.backups import BackupServicer
from controller.api.cloud import CloudServicer
from controller.api.credentials import CredentialServicer
from controller.api.health import HealthWatch
from controller.api.iam import IamServicer
from controller.api.interceptors import server_interceptors
from controller.api.keys import KeyServicer
from controller.api.metering import MetricsInterceptor
from controller.api.notifications import NotificationServicer
from controller.api.policies import PolicyServicer
from controller.api.protectables import ProtectableServicer
from controller.api.replication import ReplicationServicer
from controller.api.tasks import TaskServicer
from controller.api.vaults import VaultServicer
from controller.app import App

log = logging.getLogger("cbr.controller")

SERVICE_MODULES = (vault_pb2, protectable_pb2, backup_pb2, policy_pb2, credential_pb2,
                   replication_pb2, task_pb2, iam_pb2, agent_pb2, cloud_pb2, key_pb2, audit_pb2,
                   notification_pb2)

SERVER_OPTIONS = [
    # Twice the limit, so that a request over it reaches the deserializer and
    # is refused with a CBR code (BackupService.9901); past this gRPC itself
    # refuses it, RESOURCE_EXHAUSTED without one, before buffering more.
    ("grpc.max_receive_message_length", 2 * limits.MAX_REQUEST_BYTES),
    NO_PORT_SHARING,
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
]


def service_names() -> list[str]:
    names: list[str] = []
    for module in SERVICE_MODULES:
        names.extend(s.full_name for s in module.DESCRIPTOR.services_by_name.values())
    return names


def build_public_server(app: App) -> tuple[LoopServer, int]:
    """The API: ``cbr.v1`` services on a bounded pool of ``api_threads``,
    streams (watches, reflection) as coroutines that hold no thread."""

    watches: list[HealthWatch] = []

    async def build() -> tuple[grpc.aio.Server, int]:
        server = grpc.aio.server(
            futures.ThreadPoolExecutor(max_workers=app.config.api_threads,
                                       thread_name_prefix="api"),
            interceptors=[MetricsInterceptor(), *server_interceptors(app)],
            options=SERVER_OPTIONS)
        vault_pb2_grpc.add_VaultServiceServicer_to_server(VaultServicer(app), server)
        protectable_pb2_grpc.add_ProtectableServiceServicer_to_server(
            ProtectableServicer(app), server)
        backup_pb2_grpc.add_BackupServiceServicer_to_server(BackupServicer(app), server)
        policy_pb2_grpc.add_PolicyServiceServicer_to_server(PolicyServicer(app), server)
        credential_pb2_grpc.add_CredentialServiceServicer_to_server(
            CredentialServicer(app), server)
        replication_pb2_grpc.add_ReplicationServiceServicer_to_server(
            ReplicationServicer(app), server)
        task_pb2_grpc.add_TaskServiceServicer_to_server(TaskServicer(app), server)
        key_pb2_grpc.add_KeyServiceServicer_to_server(KeyServicer(app), server)
        notification_pb2_grpc.add_NotificationServiceServicer_to_server(
            NotificationServicer(app), server)
        iam_pb2_grpc.add_IamServiceServicer_to_server(IamServicer(app), server)
        cloud_pb2_grpc.add_CloudServiceServicer_to_server(CloudServicer(app), server)
        audit_pb2_grpc.add_AuditServiceServicer_to_server(AuditServicer(app), server)
        from controller.api import agents

        agents.register(server, app)
        health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(
            [*service_names(), health.SERVICE_NAME, reflection.SERVICE_NAME], server)
        port = bind(server, app.config.listen, api_credentials(app), what="the cbr.v1 API")
        if app.console_socket:
            # The console's calls: a socket in a directory only this process's
            # user reads, so no one else can present a console session.
            server.add_insecure_port(f"unix:{app.console_socket}")
        # Probing starts once the port is ours: a controller that cannot
        # listen leaves nothing running.
        watch = HealthWatch(app, health_servicer, [*service_names(), ""])
        await watch.start()
        watches.append(watch)
        return server, port

    server = LoopServer(build)
    server.before_stop.extend(w.shutdown for w in watches)
    return server, server.port


def api_credentials(app: App) -> grpc.ServerCredentials | None:
    """TLS for the API, or None for the development-only plaintext listener.

    The chain sent ends with the controller's CA, so a client that knows
    only its fingerprint can pin it at first contact (cbr.tls.fetch_ca)."""
    cfg = app.config
    if cfg.insecure_listen:
        host = cfg.listen.rpartition(":")[0].strip("[]")
        if host != "localhost" and not _loopback(host):
            raise OSError(f"insecure_listen serves plaintext only on a loopback address, not "
                          f"{cfg.listen}; drop insecure_listen to serve TLS")
        log.warning("serving the API WITHOUT TLS on %s (insecure_listen): secret keys and "
                    "tokens cross it in clear; for development only", cfg.listen)
        return None
    if cfg.tls_cert or cfg.tls_key:
        try:
            key, chain = Path(cfg.tls_key).read_bytes(), Path(cfg.tls_cert).read_bytes()
        except OSError as exc:
            raise OSError(f"cannot read tls_cert/tls_key: {exc}") from None
        return grpc.ssl_server_credentials([(key, chain)])
    from controller.pki import certificate_authority

    ca = certificate_authority(app)
    identity = ca.server_identity()
    return grpc.ssl_server_credentials(
        [(identity.key_pem, identity.certificate_pem + ca.certificate_pem)])


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
