"""Signed calls: unsigned, wrong key, stale, replayed and tampered calls are
refused with UNAUTHENTICATED; missing actions with PERMISSION_DENIED naming
the action."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest

from cbr import signing
from cbr.client import Client, error_from_rpc
from cbr.v1 import common_pb2, iam_pb2, vault_pb2, vault_pb2_grpc
from tests.support.inproc import RunningController, running_controller
from tests.support.pg import fresh_database

LIST = "/cbr.v1.VaultService/ListVaults"


def raw_call(rc: RunningController, metadata: list[tuple[str, str]],
             body: bytes = b"") -> grpc.RpcError:
    with grpc.insecure_channel(rc.endpoint) as ch:
        call = ch.unary_unary(LIST)
        with pytest.raises(grpc.RpcError) as exc:
            call(body, metadata=metadata)
        return exc.value


def signed(rc: RunningController, *, secret: str | None = None, when: float | None = None,
           method: str = LIST, body: bytes = b"") -> list[tuple[str, str]]:
    headers = signing.sign(rc.access_key, secret or rc.secret_key, method, body,
                           time.time() if when is None else when)
    return list(headers.metadata())


def assert_unauthenticated(err: grpc.RpcError, words: str) -> None:
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED, err
    assert words in (err.details() or "")
    cbr = error_from_rpc(err)
    assert cbr is not None and cbr.code == "BackupService.0401"


def test_a_signed_call_succeeds(sqlite_api: RunningController) -> None:
    with grpc.insecure_channel(sqlite_api.endpoint) as ch:
        raw = ch.unary_unary(LIST)(b"", metadata=signed(sqlite_api))
    assert vault_pb2.ListVaultsResponse.FromString(raw).total_count == 0


def test_an_unsigned_call_is_unauthenticated(sqlite_api: RunningController) -> None:
    assert_unauthenticated(raw_call(sqlite_api, []), "not signed")


def test_a_wrong_secret_key_is_unauthenticated(sqlite_api: RunningController) -> None:
    assert_unauthenticated(raw_call(sqlite_api, signed(sqlite_api, secret="wrong")),
                           "does not match")


def test_an_unknown_access_key_is_unauthenticated(sqlite_api: RunningController) -> None:
    md = [(k, "AKNOSUCHKEY" if k == signing.HEADER_ACCESS_KEY else v)
          for k, v in signed(sqlite_api)]
    assert_unauthenticated(raw_call(sqlite_api, md), "does not match")


@pytest.mark.parametrize("offset", [-16 * 60, 16 * 60])
def test_a_signature_outside_15_minutes_is_unauthenticated(sqlite_api: RunningController,
                                                           offset: int) -> None:
    md = signed(sqlite_api, when=time.time() + offset)
    assert_unauthenticated(raw_call(sqlite_api, md), "within 15 minutes")


def test_a_signature_inside_the_window_is_accepted(sqlite_api: RunningController) -> None:
    with grpc.insecure_channel(sqlite_api.endpoint) as ch:
        ch.unary_unary(LIST)(b"", metadata=signed(sqlite_api, when=time.time() - 14 * 60))


def test_a_replayed_call_is_unauthenticated(sqlite_api: RunningController) -> None:
    md = signed(sqlite_api)
    with grpc.insecure_channel(sqlite_api.endpoint) as ch:
        ch.unary_unary(LIST)(b"", metadata=md)
    assert_unauthenticated(raw_call(sqlite_api, md), "already used")


def test_a_body_changed_after_signing_is_unauthenticated(sqlite_api: RunningController) -> None:
    body = vault_pb2.ListVaultsRequest(name="a").SerializeToString()
    other = vault_pb2.ListVaultsRequest(name="b").SerializeToString()
    assert_unauthenticated(raw_call(sqlite_api, signed(sqlite_api, body=body), other),
                           "does not match")


def test_a_signature_for_another_method_is_unauthenticated(
        sqlite_api: RunningController) -> None:
    md = signed(sqlite_api, method="/cbr.v1.VaultService/GetVault")
    assert_unauthenticated(raw_call(sqlite_api, md), "does not match")


def test_a_user_without_the_action_is_denied_naming_it(api: RunningController) -> None:
    admin = api.client()
    user = admin.iam.CreateUser(iam_pb2.CreateUserRequest(name="reader")).user
    admin.iam.CreateGrant(iam_pb2.CreateGrantRequest(user_id=user.id, action="cbr:vaults:list"))
    key = admin.iam.CreateAccessKey(iam_pb2.CreateAccessKeyRequest(user_id=user.id)).access_key
    assert key.secret_access_key
    listed = admin.iam.ListAccessKeys(iam_pb2.ListAccessKeysRequest(user_id=user.id))
    assert [k.secret_access_key for k in listed.access_keys] == [""]
    reader = Client(api.endpoint, key.access_key_id, key.secret_access_key, insecure=True)
    reader.vaults.ListVaults(vault_pb2.ListVaultsRequest())
    with pytest.raises(grpc.RpcError) as exc:
        reader.vaults.CreateVault(vault_pb2.CreateVaultRequest(
            name="v", object_type=common_pb2.OBJECT_TYPE_DISK, size_gb=1))
    assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "cbr:vaults:create" in (exc.value.details() or "")
    err = error_from_rpc(exc.value)
    assert err is not None and err.code == "BackupService.0403"
    assert err.metadata["action"] == "cbr:vaults:create"


def test_cbr_full_access_covers_cbr_actions_but_not_iam(api: RunningController) -> None:
    admin = api.client()
    user = admin.iam.CreateUser(iam_pb2.CreateUserRequest(name="operator")).user
    admin.iam.CreateGrant(iam_pb2.CreateGrantRequest(user_id=user.id, action="CBRFullAccess"))
    key = admin.iam.CreateAccessKey(iam_pb2.CreateAccessKeyRequest(user_id=user.id)).access_key
    op = Client(api.endpoint, key.access_key_id, key.secret_access_key, insecure=True)
    op.vaults.CreateVault(vault_pb2.CreateVaultRequest(
        name="v", object_type=common_pb2.OBJECT_TYPE_DISK, size_gb=1))
    with pytest.raises(grpc.RpcError) as exc:
        op.iam.CreateUser(iam_pb2.CreateUserRequest(name="x"))
    assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "iam:users:create" in (exc.value.details() or "")


def test_a_deleted_access_key_is_refused_at_once(api: RunningController) -> None:
    admin = api.client()
    user = admin.iam.CreateUser(iam_pb2.CreateUserRequest(name="temp")).user
    admin.iam.CreateGrant(iam_pb2.CreateGrantRequest(user_id=user.id, action="CBRFullAccess"))
    key = admin.iam.CreateAccessKey(iam_pb2.CreateAccessKeyRequest(user_id=user.id)).access_key
    temp = Client(api.endpoint, key.access_key_id, key.secret_access_key, insecure=True)
    temp.vaults.ListVaults(vault_pb2.ListVaultsRequest())  # the key is in the cache now
    admin.iam.DeleteAccessKey(iam_pb2.DeleteAccessKeyRequest(access_key_id=key.access_key_id))
    with pytest.raises(grpc.RpcError) as exc:
        temp.vaults.ListVaults(vault_pb2.ListVaultsRequest())
    assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_call_is_admitted_once_by_all_controllers_of_a_cloud(tmp_path: Path) -> None:
    """Two controllers on one PostgreSQL database: a signed call captured on
    its way to one is refused by the other, and a key deleted through one is
    refused by the other at once."""
    with fresh_database() as url, running_controller(tmp_path, url) as first, \
            running_controller(tmp_path, url) as second:
        method = "/cbr.v1.VaultService/ListVaults"
        body = vault_pb2.ListVaultsRequest().SerializeToString()
        metadata = signing.sign(first.access_key, first.secret_key, method, body,
                                time.time()).metadata()
        with grpc.insecure_channel(first.endpoint) as a, \
                grpc.insecure_channel(second.endpoint) as b:
            a.unary_unary(method)(body, metadata=metadata)
            with pytest.raises(grpc.RpcError) as exc:
                b.unary_unary(method)(body, metadata=metadata)
            assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "replay refused" in (exc.value.details() or "")
        admin = first.client()
        user = admin.iam.CreateUser(iam_pb2.CreateUserRequest(name="temp")).user
        admin.iam.CreateGrant(iam_pb2.CreateGrantRequest(user_id=user.id,
                                                         action="CBRFullAccess"))
        key = admin.iam.CreateAccessKey(iam_pb2.CreateAccessKeyRequest(
            user_id=user.id)).access_key
        temp = Client(second.endpoint, key.access_key_id, key.secret_access_key, insecure=True)
        temp.vaults.ListVaults(vault_pb2.ListVaultsRequest())
        admin.iam.DeleteAccessKey(iam_pb2.DeleteAccessKeyRequest(
            access_key_id=key.access_key_id))
        with pytest.raises(grpc.RpcError) as exc:
            temp.vaults.ListVaults(vault_pb2.ListVaultsRequest())
        assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_the_generated_stub_without_signing_is_refused(sqlite_api: RunningController) -> None:
    with grpc.insecure_channel(sqlite_api.endpoint) as ch, pytest.raises(grpc.RpcError) as exc:
        vault_pb2_grpc.VaultServiceStub(ch).ListVaults(vault_pb2.ListVaultsRequest())
    assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_nonces_are_remembered_exactly_as_long_as_their_signature_is_valid() -> None:
    from controller.services.replay import NonceCache

    cache = NonceCache(window=900)
    assert cache.first_use("AK", "n1", signed_at=1000, now=1000)
    assert not cache.first_use("AK", "n1", signed_at=1000, now=1899)
    assert cache.first_use("AK", "n2", signed_at=1902, now=1902)
    assert len(cache) == 1  # n1's signature left the window at 1900: forgotten
    assert not cache.first_use("AK", "n2", signed_at=1902, now=2801)


def test_a_second_accounts_admin_creating_an_account_is_told_the_real_action(
        api: RunningController) -> None:
    """Issue 20: the refusal named an action `iam:accounts` that does not exist."""
    admin = api.client()
    made = admin.iam.CreateAccount(iam_pb2.CreateAccountRequest(
        name="second", admin_user_name="second-admin"))
    second = Client(api.endpoint, made.access_key.access_key_id,
                    made.access_key.secret_access_key, insecure=True)
    with pytest.raises(grpc.RpcError) as exc:
        second.iam.CreateAccount(iam_pb2.CreateAccountRequest(name="third",
                                                              admin_user_name="x"))
    assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
    err = error_from_rpc(exc.value)
    assert err is not None and err.metadata["action"] == "iam:accounts:create"
    assert "iam:accounts:create" in (exc.value.details() or "")


def test_another_accounts_vault_is_not_found_by_repair_delete_and_its_backup_list(
        api: RunningController) -> None:
    """The vault calls of this session check the caller's account: another
    account's vault is NOT_FOUND for repair, delete, resource removal and the
    backup list, and nothing is started."""
    from cbr.v1 import backup_pb2, task_pb2

    admin = api.client()
    vault = admin.vaults.CreateVault(vault_pb2.CreateVaultRequest(
        name="mine", object_type=common_pb2.OBJECT_TYPE_DISK, size_gb=1)).vault
    made = admin.iam.CreateAccount(iam_pb2.CreateAccountRequest(
        name="other", admin_user_name="other-admin"))
    other = Client(api.endpoint, made.access_key.access_key_id,
                   made.access_key.secret_access_key, insecure=True)
    calls = [
        lambda: other.vaults.RepairVault(vault_pb2.RepairVaultRequest(vault_id=vault.id)),
        lambda: other.vaults.RepairVault(vault_pb2.RepairVaultRequest(vault_id=vault.id,
                                                                      dry_run=True)),
        lambda: other.vaults.DeleteVault(vault_pb2.DeleteVaultRequest(vault_id=vault.id)),
        lambda: other.vaults.RemoveVaultResources(vault_pb2.RemoveVaultResourcesRequest(
            vault_id=vault.id, resource_ids=["r"])),
        lambda: other.backups.ListBackups(backup_pb2.ListBackupsRequest(vault_id=vault.id)),
    ]
    for call in calls:
        with pytest.raises(grpc.RpcError) as exc:
            call()
        assert exc.value.code() == grpc.StatusCode.NOT_FOUND
        err = error_from_rpc(exc.value)
        assert err is not None and err.code == "BackupService.6105"
    assert admin.vaults.GetVault(vault_pb2.GetVaultRequest(
        vault_id=vault.id)).vault.status == vault_pb2.VAULT_STATUS_AVAILABLE
    assert list(admin.tasks.ListTasks(task_pb2.ListTasksRequest()).tasks) == []
