"""A client that knows only server reflection and the documented signing
scheme (no project code, no generated stubs) can drive the API."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

import grpc
import pytest
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from tests.support.processes import ControllerProcess


def sign(ak: str, sk: str, method: str, body: bytes) -> list[tuple[str, str]]:
    """The README's signing recipe, written out by hand."""
    ts, nonce = str(int(time.time())), secrets.token_hex(16)
    digest = hashlib.sha256(body).hexdigest()
    text = "\n".join(["CBR1-HMAC-SHA256", method, ts, nonce, digest]).encode()
    sig = hmac.new(sk.encode(), text, hashlib.sha256).hexdigest()
    return [("x-cbr-access-key", ak), ("x-cbr-timestamp", ts), ("x-cbr-nonce", nonce),
            ("x-cbr-signature", sig)]


def test_a_reflection_only_client_lists_services_and_creates_a_vault(
        controller: ControllerProcess) -> None:
    creds = controller.admin_credentials
    with controller.channel() as channel:
        db = ProtoReflectionDescriptorDatabase(channel)
        services = set(db.get_services())
        for name in ("VaultService", "ProtectableService", "BackupService", "PolicyService",
                     "CredentialService", "ReplicationService", "TaskService", "IamService",
                     "AgentService"):
            assert f"cbr.v1.{name}" in services
        assert "grpc.health.v1.Health" in services
        pool = descriptor_pool.DescriptorPool(db)
        method = pool.FindServiceByName("cbr.v1.VaultService").FindMethodByName("CreateVault")
        request_cls = message_factory.GetMessageClass(method.input_type)
        response_cls = message_factory.GetMessageClass(method.output_type)
        request = json_format.ParseDict(
            {"name": "from-reflection", "object_type": "OBJECT_TYPE_TURBO", "size_gb": 5},
            request_cls())
        body = request.SerializeToString()
        path = "/cbr.v1.VaultService/CreateVault"
        call = channel.unary_unary(path)
        raw = call(body, metadata=sign(creds["access_key"], creds["secret_key"], path, body))
        vault = json_format.MessageToDict(response_cls.FromString(raw))["vault"]
        assert vault["name"] == "from-reflection"
        assert vault["objectType"] == "OBJECT_TYPE_TURBO"
        assert vault["status"] == "VAULT_STATUS_AVAILABLE"
        with pytest.raises(grpc.RpcError) as exc:
            call(body)
        assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_health_reports_serving(controller: ControllerProcess) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with controller.channel() as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "cbr.v1.VaultService"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
