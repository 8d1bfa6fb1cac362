"""The console's way into the controller: the ``cbr.v1`` API itself.

Every page calls the same API methods the CLI calls, through the same
interceptors (authentication, IAM, audit, metrics), so a signed-in user sees
and does exactly what the API lets that user do and every change lands in
the audit trail. The calls go over the controller's private Unix socket
(``App.console_socket``) and carry the browser's session token instead of a
signature; the API accepts a session only from that socket.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from cbr import client as cbr_client
from cbr.v1 import (
    agent_pb2_grpc,
    audit_pb2_grpc,
    backup_pb2_grpc,
    cloud_pb2_grpc,
    credential_pb2_grpc,
    iam_pb2_grpc,
    key_pb2_grpc,
    notification_pb2_grpc,
    policy_pb2_grpc,
    protectable_pb2_grpc,
    replication_pb2_grpc,
    task_pb2_grpc,
    vault_pb2_grpc,
)
from controller.services.console_sessions import API_SESSION_HEADER, API_SOURCE_HEADER

CALL_TIMEOUT = 30.0


class Rpc(Protocol):
    def __call__(self, request: Any, *, metadata: Any = ..., timeout: float | None = ...
                 ) -> Any: ...


@dataclass(frozen=True)
class ApiError(Exception):
    """A refused or failed call, as the page shows it: the gRPC status, the
    CBR error code and the API's own message (which says what to do)."""

    status: str
    code: str
    message: str
    action: str = ""  # the IAM action a PERMISSION_DENIED names

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}".replace("  ", " ")

    @classmethod
    def of(cls, exc: grpc.aio.AioRpcError) -> ApiError:
        err = cbr_client.error_from_rpc(exc)
        return cls(exc.code().name, err.code if err is not None else "",
                   exc.details() or "", err.metadata.get("action", "") if err else "")


class Stubs:
    """One stub per ``cbr.v1`` service on the console's channel."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.vaults = vault_pb2_grpc.VaultServiceStub(channel)
        self.protectables = protectable_pb2_grpc.ProtectableServiceStub(channel)
        self.backups = backup_pb2_grpc.BackupServiceStub(channel)
        self.policies = policy_pb2_grpc.PolicyServiceStub(channel)
        self.credentials = credential_pb2_grpc.CredentialServiceStub(channel)
        self.replication = replication_pb2_grpc.ReplicationServiceStub(channel)
        self.tasks = task_pb2_grpc.TaskServiceStub(channel)
        self.keys = key_pb2_grpc.KeyServiceStub(channel)
        self.notifications = notification_pb2_grpc.NotificationServiceStub(channel)
        self.iam = iam_pb2_grpc.IamServiceStub(channel)
        self.agents = agent_pb2_grpc.AgentServiceStub(channel)
        self.cloud = cloud_pb2_grpc.CloudServiceStub(channel)
        self.audit = audit_pb2_grpc.AuditServiceStub(channel)


class Api:
    """The API as one browser's session calls it: ``await api(rpc, request)``."""

    def __init__(self, stubs: Stubs, token: str, source: str) -> None:
        self.stubs = stubs
        self._metadata = ((API_SESSION_HEADER, token), (API_SOURCE_HEADER, source[:64]))

    async def __call__(self, rpc: Rpc, request: Any) -> Any:
        try:
            return await rpc(request, metadata=self._metadata, timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            raise ApiError.of(exc) from None

    async def optional(self, rpc: Rpc, request: Any) -> Any:
        """A call that only adds to a page (the policies to pick from): None
        when the user may not make it, who still sees the rest of the page
        with that control disabled."""
        try:
            return await self(rpc, request)
        except ApiError as err:
            if err.status == "PERMISSION_DENIED":
                return None
            raise
