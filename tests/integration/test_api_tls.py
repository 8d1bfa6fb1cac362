"""The management API speaks TLS by default, and every client path pins its CA."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import grpc
import pytest

from agent.config import parse
from agent.enroll import EnrollError, enroll
from cbr import signing, tls
from cbr.client import Client
from cbr.v1 import agent_pb2, cloud_pb2, common_pb2, vault_pb2
from controller.pki import CertificateAuthority
from tests.support.environment import unavailable
from tests.support.processes import ControllerFactory, ControllerProcess, console_script


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(console_script("cbr")), *args], capture_output=True, text=True,
                          env=env, timeout=60)


def _clean_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CBR_")}
    env["CBR_CONFIG_DIR"] = str(tmp_path / "cli")
    return env


def test_plaintext_and_wrongly_pinned_clients_get_nothing_through(
        controller: ControllerProcess, tmp_path: Path) -> None:
    creds = controller.admin_credentials
    plain = Client(controller.api_endpoint, creds["access_key"], creds["secret_key"],
                   insecure=True)
    with pytest.raises(grpc.RpcError) as exc:
        plain.vaults.ListVaults(vault_pb2.ListVaultsRequest(), timeout=10)
    assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
    other_ca = CertificateAuthority.load_or_create(tmp_path / "other-ca").certificate_pem
    wrong = Client(controller.api_endpoint, creds["access_key"], creds["secret_key"],
                   root_certificates=other_ca)
    with pytest.raises(grpc.RpcError) as exc:
        wrong.vaults.ListVaults(vault_pb2.ListVaultsRequest(), timeout=10)
    assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
    # The pinned CA works, and the cloud publishes its fingerprint for others to pin.
    cloud = controller.client().cloud.GetCloud(cloud_pb2.GetCloudRequest()).cloud
    assert cloud.ca_sha256 == tls.fingerprint(controller.ca_pem) \
        == controller.endpoints["ca_sha256"]
    assert f"TLS, CA sha256 {cloud.ca_sha256}" in controller.log_text()
    with pytest.raises(ValueError, match="no CA pinned"):
        Client(controller.api_endpoint, "AK", "SK")


def test_the_cli_pins_the_ca_by_file_by_fingerprint_or_from_the_admin_credentials(
        controller: ControllerProcess, tmp_path: Path) -> None:
    env = _clean_env(tmp_path)
    creds = controller.admin_credentials
    keys = ["--endpoint", controller.api_endpoint, "--access-key", creds["access_key"],
            "--secret-key", creds["secret_key"]]
    sha = controller.endpoints["ca_sha256"]
    done = _cli(env, "configure", "--profile", "imported", "--import-admin-credentials",
                str(controller.credentials_path))
    assert done.returncode == 0, done.stderr
    assert f"CA SHA-256 {sha}" in done.stdout
    done = _cli(env, "configure", "--profile", "by-sha", *keys, "--ca-sha256", sha)
    assert done.returncode == 0, done.stderr
    done = _cli(env, "configure", "--profile", "by-file", *keys, "--ca-file",
                str(controller.data_dir / "ca" / "ca.crt"))
    assert done.returncode == 0, done.stderr
    for profile in ("imported", "by-sha", "by-file"):
        listed = _cli(env, "--profile", profile, "vault", "list", "-o", "json")
        assert listed.returncode == 0, (profile, listed.stderr)
    refused = _cli(env, "configure", "--profile", "bad", *keys, "--ca-sha256", "ab" * 32)
    assert refused.returncode == 2 and "presented no CA with SHA-256" in refused.stderr
    unpinned = _cli(env, *keys, "vault", "list")
    assert unpinned.returncode == 2 and "no CA pinned" in unpinned.stderr


def test_an_agent_sends_its_token_only_to_the_controller_its_token_pins(
        controller_factory: ControllerFactory, tmp_path: Path) -> None:
    first, second = controller_factory("first"), controller_factory("second")
    token = first.client().agents.CreateEnrollmentToken(
        agent_pb2.CreateEnrollmentTokenRequest()).token
    config = parse({"agent": {"name": "h", "state_dir": str(tmp_path / "state")}})
    with pytest.raises(EnrollError, match="Cannot trust the controller"):
        enroll(config, token, second.api_endpoint)
    identity = enroll(config, token, first.api_endpoint)
    assert identity.agent_id


def test_plaintext_is_served_only_on_loopback_and_only_when_asked(
        controller_factory: ControllerFactory) -> None:
    dev = controller_factory("dev", extra_args=["--insecure-listen"])
    creds = dev.admin_credentials
    with Client(dev.api_endpoint, creds["access_key"], creds["secret_key"],
                insecure=True) as plain:
        plain.vaults.ListVaults(vault_pb2.ListVaultsRequest())
    assert "WITHOUT TLS" in dev.log_text()
    assert json.loads(dev.endpoints_path.read_text())["tls"] is False
    wide = controller_factory("wide", start=False, extra_args=["--insecure-listen"])
    wide.command = lambda: [  # type: ignore[method-assign]
        str(console_script("cbr-controller")), "--data-dir", str(wide.data_dir),
        "--listen", "0.0.0.0:0", "--agent-listen", "127.0.0.1:0", "--metrics-listen", "off",
        "--console-listen", "off",
        "--insecure-listen"]
    with pytest.raises(RuntimeError, match="exited with code 2"):
        wide.start()
    assert "insecure_listen serves plaintext only on a loopback address" in wide.log_text()


def test_the_documented_buf_curl_path_works_over_tls(controller: ControllerProcess,
                                                     tmp_path: Path) -> None:
    """README: `buf curl --cacert ca.crt --servername cbr-controller`, reflection
    for the schema, and the four signing headers for a signed call."""
    from tests.unit.test_buf_lint import _buf

    buf = _buf()
    if buf is None:
        unavailable("buf not installed: run scripts/test (installs it into .cache/buf)")
    ca = controller.data_dir / "ca" / "ca.crt"
    base = [buf, "curl", "--protocol", "grpc", "--cacert", str(ca), "--servername",
            tls.SERVER_NAME]
    url = f"https://{controller.api_endpoint}"
    health = subprocess.run([*base, f"{url}/grpc.health.v1.Health/Check"],
                            capture_output=True, text=True, timeout=60)
    assert health.returncode == 0, health.stderr
    assert json.loads(health.stdout)["status"] == "SERVING"
    controller.client().vaults.CreateVault(vault_pb2.CreateVaultRequest(
        name="via-buf", object_type=common_pb2.OBJECT_TYPE_DISK, size_gb=1))
    creds = controller.admin_credentials
    method = "/cbr.v1.VaultService/ListVaults"
    headers = signing.sign(creds["access_key"], creds["secret_key"], method, b"",
                           time.time()).metadata()
    listed = subprocess.run([*base, *(a for k, v in headers for a in ("-H", f"{k}: {v}")),
                             "-d", "{}", f"{url}{method}"],
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)["vaults"][0]["name"] == "via-buf"
    wrong = subprocess.run([buf, "curl", "--protocol", "grpc",
                            f"{url}/grpc.health.v1.Health/Check"],
                           capture_output=True, text=True, timeout=60)
    assert wrong.returncode != 0  # without the pinned CA the certificate is not trusted
