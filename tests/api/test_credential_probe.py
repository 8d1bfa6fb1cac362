"""A credential check is no network probe: what it may dial, and what it says."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2_grpc

from cbr import tls
from cbr.client import error_from_rpc
from cbr.v1 import credential_pb2
from controller.pki import CertificateAuthority
from tests.support.inproc import RunningController, running_controller


def _create(api: RunningController, endpoint: str, **ca: str
            ) -> tuple[grpc.StatusCode, str, str]:
    with pytest.raises(grpc.RpcError) as exc:
        api.client().credentials.CreateCredential(credential_pb2.CreateCredentialRequest(
            name="c", target_cloud="cloud-b", target_endpoint=endpoint,
            target_account_id="a", access_key_id="AK", secret_access_key="SK",
            **(ca or {"target_ca_sha256": "ab" * 32})))
    err = error_from_rpc(exc.value)
    return exc.value.code(), err.code if err else "", exc.value.details() or ""


@pytest.mark.parametrize("endpoint", ["unix:///run/postgresql/.s.PGSQL.5432:1",
                                      "unix:/tmp/x", "dns:///x:1", "http://x:80", "x",
                                      "host:0", "host:99999", "a b:1"])
def test_only_host_and_port_are_dialed(sqlite_api: RunningController, endpoint: str) -> None:
    code, cbr_code, _ = _create(sqlite_api, endpoint)
    assert (code, cbr_code) == (grpc.StatusCode.INVALID_ARGUMENT, "BackupService.9900")


@pytest.mark.parametrize("endpoint", ["127.0.0.1:5432", "localhost:22", "[::1]:6379",
                                      "169.254.169.254:80", "0.0.0.0:7400"])
def test_local_addresses_are_refused_unless_the_operator_allows_them(
        sqlite_api: RunningController, endpoint: str) -> None:
    code, cbr_code, details = _create(sqlite_api, endpoint)
    assert (code, cbr_code) == (grpc.StatusCode.INVALID_ARGUMENT, "BackupService.9900")
    assert "target_allow_local" in details


@pytest.fixture
def local_api(tmp_path: Path) -> Iterator[RunningController]:
    with running_controller(tmp_path, f"sqlite:///{tmp_path}/c.db",
                            "--target-allow-local", "true") as rc:
        yield rc


def test_a_closed_port_is_unreachable_without_the_socket_error(
        local_api: RunningController) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, not listening: connections are refused
        code, cbr_code, details = _create(local_api, f"127.0.0.1:{port}")
    assert (code, cbr_code) == (grpc.StatusCode.UNAVAILABLE, "BackupService.8001")
    assert details.endswith(": unreachable.")
    assert "refused" not in details.lower() and "connect" not in details.lower()


def test_a_silent_endpoint_is_unreachable_within_seconds(local_api: RunningController) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes the handshake; nobody ever answers
        started = time.monotonic()
        code, cbr_code, details = _create(local_api, f"127.0.0.1:{silent.getsockname()[1]}")
        took = time.monotonic() - started
    assert (code, cbr_code) == (grpc.StatusCode.UNAVAILABLE, "BackupService.8001")
    assert "unreachable" in details
    assert took < 15  # the check's own deadline is 5 s, far below the old 30 s


@pytest.fixture
def other_server(tmp_path: Path) -> Iterator[tuple[int, CertificateAuthority]]:
    """A gRPC server over TLS from its own CA that serves only health."""
    ca = CertificateAuthority.load_or_create(tmp_path / "other-ca")
    identity = ca.server_identity()
    server = grpc.server(futures.ThreadPoolExecutor(2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials(
        [(identity.key_pem, identity.certificate_pem + ca.certificate_pem)]))
    server.start()
    yield port, ca
    server.stop(None)


def test_a_grpc_server_that_is_not_a_controller_is_named_so(
        local_api: RunningController, other_server: tuple[int, CertificateAuthority]) -> None:
    port, ca = other_server
    code, cbr_code, details = _create(local_api, f"127.0.0.1:{port}",
                                      target_ca_sha256=tls.fingerprint(ca.certificate_pem))
    assert (code, cbr_code) == (grpc.StatusCode.UNAVAILABLE, "BackupService.8001")
    assert details.endswith(": not a CBR controller.")


def test_a_server_without_the_pinned_ca_fails_tls_before_the_key_is_sent(
        local_api: RunningController, other_server: tuple[int, CertificateAuthority]) -> None:
    port, _ = other_server
    code, cbr_code, details = _create(local_api, f"127.0.0.1:{port}")
    assert (code, cbr_code) == (grpc.StatusCode.UNAVAILABLE, "BackupService.8001")
    assert "TLS failed" in details
    plain = grpc.server(futures.ThreadPoolExecutor(1))
    plain_port = plain.add_insecure_port("127.0.0.1:0")
    plain.start()
    try:
        code, _, details = _create(local_api, f"127.0.0.1:{plain_port}")
    finally:
        plain.stop(None)
    assert code == grpc.StatusCode.UNAVAILABLE and "TLS failed" in details


def test_a_credential_needs_the_targets_ca(local_api: RunningController) -> None:
    for ca in ({"target_ca_sha256": ""}, {"target_ca_sha256": "xyz"},
               {"target_ca_certificate": "not pem"}):
        code, cbr_code, details = _create(local_api, "127.0.0.1:9", **ca)
        assert (code, cbr_code) == (grpc.StatusCode.INVALID_ARGUMENT, "BackupService.9900")
        assert "target_ca" in details
