"""A signed client of the cbr.v1 API, for the CLI, the tests and other clouds.

``Client(endpoint, access_key, secret_key)`` opens one channel whose
interceptor signs every call (see ``cbr.signing``); ``client.vaults``,
``client.tasks``, ... are the generated stubs on it. A failed call raises the
same ``cbr.errors`` class the controller raised, rebuilt from the status
details, so code reads the same whether it runs in or out of the controller.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from cbr import errors, signing, tls
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


class _CallDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: Any
    compression: Any


class SigningInterceptor(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
):
    """Adds the AK/SK signature of the serialized request to the call's metadata."""

    def __init__(
        self, access_key: str, secret_key: str, clock: Callable[[], float] = time.time
    ) -> None:
        self._ak = access_key
        self._sk = secret_key
        self._clock = clock

    def _signed(self, details: Any, request: Any) -> _CallDetails:
        headers = signing.sign(
            self._ak, self._sk, details.method, request.SerializeToString(), self._clock()
        )
        metadata = list(details.metadata or ()) + list(headers.metadata())
        return _CallDetails(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._signed(details, request), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._signed(details, request), request)


def error_from_rpc(exc: grpc.RpcError) -> errors.CbrError | None:
    """The CbrError a failed call carries in its details, or None."""
    try:
        status = rpc_status.from_call(exc) if isinstance(exc, grpc.Call) else None
    except ValueError:  # the transport replaced the status (e.g. trailers too large)
        return None
    if status is None:
        return None
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info) and info.domain == errors.ERROR_DOMAIN:
            return errors.error_class_for(info.reason).from_wire(
                status.message, dict(info.metadata)
            )
    return None


def describe(exc: grpc.RpcError) -> str:
    """One line for a person: status, CBR code and message."""
    err = error_from_rpc(exc)
    code = exc.code().name if isinstance(exc, grpc.Call) else "UNKNOWN"
    text = exc.details() if isinstance(exc, grpc.Call) else str(exc)
    if err is not None:
        return f"{code} {err.code}: {text}"
    return f"{code}: {text}"


def channel(endpoint: str, *, root_certificates: bytes | None = None, insecure: bool = False,
            server_name: str = tls.SERVER_NAME) -> grpc.Channel:
    """A channel to a controller's API: TLS verified against the pinned CA
    (``root_certificates``) by ``server_name``, or plaintext only when asked
    for by name (a development controller with insecure_listen)."""
    options: list[tuple[str, Any]] = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    if root_certificates is not None:
        return grpc.secure_channel(endpoint, tls.credentials(root_certificates),
                                   options=options + tls.channel_options(server_name))
    if not insecure:
        raise ValueError(f"no CA pinned for {endpoint}: give its CA certificate, or insecure=True "
                         "for a plaintext development controller")
    return grpc.insecure_channel(endpoint, options=options)


class Client:
    """Stubs of every public service on one signed channel."""

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        *,
        root_certificates: bytes | None = None,
        insecure: bool = False,
        server_name: str = tls.SERVER_NAME,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.endpoint = endpoint
        self._raw = channel(endpoint, root_certificates=root_certificates, insecure=insecure,
                            server_name=server_name)
        ch = grpc.intercept_channel(self._raw, SigningInterceptor(access_key, secret_key, clock))
        self.channel = ch
        self.vaults = vault_pb2_grpc.VaultServiceStub(ch)
        self.protectables = protectable_pb2_grpc.ProtectableServiceStub(ch)
        self.backups = backup_pb2_grpc.BackupServiceStub(ch)
        self.policies = policy_pb2_grpc.PolicyServiceStub(ch)
        self.credentials = credential_pb2_grpc.CredentialServiceStub(ch)
        self.replication = replication_pb2_grpc.ReplicationServiceStub(ch)
        self.tasks = task_pb2_grpc.TaskServiceStub(ch)
        self.iam = iam_pb2_grpc.IamServiceStub(ch)
        self.agents = agent_pb2_grpc.AgentServiceStub(ch)
        self.cloud = cloud_pb2_grpc.CloudServiceStub(ch)
        self.keys = key_pb2_grpc.KeyServiceStub(ch)
        self.audit = audit_pb2_grpc.AuditServiceStub(ch)
        self.notifications = notification_pb2_grpc.NotificationServiceStub(ch)

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def iterate_pages(call: Callable[..., Any], request: Any, field: str) -> Iterator[Any]:
    """Every item of a paged List call, following next_page_token."""
    while True:
        response = call(request)
        yield from getattr(response, field)
        if not response.next_page_token:
            return
        request.page_token = response.next_page_token
