"""Bad input gets the right status and CBR code, and the server keeps serving."""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
import pytest
from google.protobuf import field_mask_pb2

from cbr import limits
from cbr.client import error_from_rpc
from cbr.v1 import (
    common_pb2,
    policy_pb2,
    protectable_pb2,
    task_pb2,
    vault_pb2,
)
from tests.support.inproc import RunningController


def refused(call: object, request: object) -> tuple[grpc.StatusCode, str, str]:
    with pytest.raises(grpc.RpcError) as exc:
        call(request)  # type: ignore[operator]
    err = error_from_rpc(exc.value)
    return exc.value.code(), err.code if err else "", exc.value.details() or ""


def vault_request(**kw: object) -> vault_pb2.CreateVaultRequest:
    base: dict[str, object] = {"name": "v", "object_type": common_pb2.OBJECT_TYPE_SERVER,
                               "size_gb": 10}
    base.update(kw)
    return vault_pb2.CreateVaultRequest(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("kw, words", [
    ({"name": ""}, "name is required"),
    ({"name": "x" * 65}, "at most 64"),
    ({"object_type": 0}, "object_type must be one of"),
    ({"object_type": 99}, "object_type must be one of"),
    ({"protect_type": 42}, "protect_type must be one of"),
    ({"consistent_level": 7}, "consistent_level must be one of"),
    ({"size_gb": 0}, "size_gb must be 1 to 10485760"),
    ({"threshold": 101}, "threshold"),
    ({"description": "d" * 256}, "at most 255"),
    ({"tags": [common_pb2.Tag(key="", value="x")]}, "tag key"),
])
def test_invalid_vault_requests_are_invalid_argument_9900(
        sqlite_api: RunningController, kw: dict[str, object], words: str) -> None:
    client = sqlite_api.client()
    code, cbr, details = refused(client.vaults.CreateVault, vault_request(**kw))
    assert (code, cbr) == (grpc.StatusCode.INVALID_ARGUMENT, "BackupService.9900")
    assert words in details
    client.vaults.CreateVault(vault_request(name="still-serving"))


def test_unknown_ids_are_not_found(sqlite_api: RunningController) -> None:
    c = sqlite_api.client()
    cases = [
        (c.vaults.GetVault, vault_pb2.GetVaultRequest(vault_id="nope"), "BackupService.6105"),
        (c.vaults.GetVault, vault_pb2.GetVaultRequest(vault_id=""), "BackupService.6105"),
        (c.tasks.GetTask, task_pb2.GetTaskRequest(task_id="nope"), "BackupService.0404"),
        (c.protectables.GetProtectable,
         protectable_pb2.GetProtectableRequest(protectable_id="nope"), "BackupService.0404"),
        (c.policies.GetPolicy, policy_pb2.GetPolicyRequest(policy_id="x" * 5000),
         "BackupService.0404"),
    ]
    for call, request, cbr in cases:
        code, got, _ = refused(call, request)
        assert (code, got) == (grpc.StatusCode.NOT_FOUND, cbr)


def test_unknown_filter_enums_are_invalid_argument(sqlite_api: RunningController) -> None:
    c = sqlite_api.client()
    code, cbr, details = refused(c.tasks.ListTasks, task_pb2.ListTasksRequest(status=77))
    assert (code, cbr) == (grpc.StatusCode.INVALID_ARGUMENT, "BackupService.9900")
    assert "status must be one of" in details


def test_an_update_mask_naming_a_fixed_field_is_refused(sqlite_api: RunningController) -> None:
    c = sqlite_api.client()
    v = c.vaults.CreateVault(vault_request()).vault
    code, _, details = refused(c.vaults.UpdateVault, vault_pb2.UpdateVaultRequest(
        vault_id=v.id, vault=vault_pb2.Vault(object_type=common_pb2.OBJECT_TYPE_DISK),
        update_mask=field_mask_pb2.FieldMask(paths=["object_type"])))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "object_type" in details


def test_a_message_over_the_size_limit_is_resource_exhausted(
        sqlite_api: RunningController) -> None:
    c = sqlite_api.client()
    big = vault_request(description="d" * (limits.MAX_REQUEST_BYTES + 10))
    code, cbr_code, details = refused(c.vaults.CreateVault, big)
    assert (code, cbr_code) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "BackupService.9901")
    assert f"at most {limits.MAX_REQUEST_BYTES}" in details
    c.vaults.ListVaults(vault_pb2.ListVaultsRequest())


def test_garbage_bytes_do_not_crash_the_server(sqlite_api: RunningController) -> None:
    from cbr import signing

    body = b"\xff\xff\xff\xff garbage"
    method = "/cbr.v1.VaultService/CreateVault"
    md = signing.sign(sqlite_api.access_key, sqlite_api.secret_key, method, body,
                      __import__("time").time()).metadata()
    with grpc.insecure_channel(sqlite_api.endpoint) as ch, pytest.raises(grpc.RpcError) as exc:
        ch.unary_unary(method)(body, metadata=md)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    sqlite_api.client().vaults.ListVaults(vault_pb2.ListVaultsRequest())


@pytest.mark.parametrize("method", [
    "/cbr.v1.VaultService/CreateVault",           # signed methods, before authentication
    "/grpc.health.v1.Health/Check",               # unsigned ones
    "/grpc.health.v1.Health/Watch",
])
def test_malformed_bytes_are_invalid_argument_with_a_code_and_one_log_line(
        sqlite_api: RunningController, method: str, caplog: pytest.LogCaptureFixture) -> None:
    corrupt = b"\xff\xff\xff\xff garbage"
    too_deep = b"\x5b" * 120 + b"\x5c" * 120  # groups nested 120 deep
    caplog.set_level(logging.INFO)
    with grpc.insecure_channel(sqlite_api.endpoint) as ch:
        for body in [corrupt, too_deep] * 10:
            call = ch.unary_stream(method) if method.endswith("Watch") else \
                ch.unary_unary(method)
            with pytest.raises(grpc.RpcError) as exc:
                result = call(body, timeout=10)
                list(result) if method.endswith("Watch") else None
            err = error_from_rpc(exc.value)
            assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert err is not None and err.code == "BackupService.9900"
            assert "not a valid" in (exc.value.details() or "")
    lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) <= 1, [r.getMessage() for r in lines]
    assert not any(r.exc_info for r in caplog.records)
    sqlite_api.client().vaults.ListVaults(vault_pb2.ListVaultsRequest())


def test_a_bad_page_token_is_invalid_argument(sqlite_api: RunningController) -> None:
    c = sqlite_api.client()
    code, cbr, _ = refused(c.vaults.ListVaults, vault_pb2.ListVaultsRequest(page_token="zz!"))
    assert (code, cbr) == (grpc.StatusCode.INVALID_ARGUMENT, "BackupService.9900")


def test_list_pages_follow_tokens(api: RunningController) -> None:
    c = api.client()
    for i in range(5):
        c.vaults.CreateVault(vault_request(name=f"v{i}"))
    first = c.vaults.ListVaults(vault_pb2.ListVaultsRequest(page_size=2))
    assert first.total_count == 5 and len(first.vaults) == 2 and first.next_page_token
    names = [v.name for v in first.vaults]
    token = first.next_page_token
    while token:
        page = c.vaults.ListVaults(vault_pb2.ListVaultsRequest(page_size=2, page_token=token))
        names.extend(v.name for v in page.vaults)
        token = page.next_page_token
    assert names == [f"v{i}" for i in range(5)]


def test_vault_storage_outside_the_operators_roots_is_refused_and_nothing_is_written(
        api: RunningController, tmp_path: Path) -> None:
    client = api.client()
    probe = tmp_path / "probe"
    for call, request in (
            (client.vaults.CreateVault, vault_request(storage_url=str(probe / "v"))),
            (client.vaults.CreateVault, vault_request(storage_url=f"file://{probe}")),
            (client.vaults.ImportVaultStorage,
             vault_pb2.ImportVaultStorageRequest(storage_url=str(probe))),
            (client.vaults.CreateVault, vault_request(
                storage_url=str(api.app.config.data_dir / "ca" / "v")))):
        status, code, details = refused(call, request)
        assert (status, code) == (grpc.StatusCode.PERMISSION_DENIED, "BackupService.6120")
        assert "storage roots" in details or "data directory" in details
    assert not probe.exists()
    assert list(client.vaults.ListVaults(vault_pb2.ListVaultsRequest()).vaults) == []

