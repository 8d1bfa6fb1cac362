"""KeyService and encrypted vaults on the wire: statuses, CBR codes, and a
scheduled deletion that takes effect when the injected clock passes its date."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import field_mask_pb2

from cbr import errors
from cbr.client import Client, error_from_rpc
from cbr.clock import FakeClock
from cbr.v1 import common_pb2, iam_pb2, key_pb2, vault_pb2
from tests.support.inproc import RunningController

DAY = 86400.0


def test_a_key_pending_deletion_is_deleted_after_its_wait_on_the_injected_clock(
        sqlite_api: RunningController) -> None:
    clock = FakeClock()
    sqlite_api.app.clock = clock
    client = sqlite_api.client(clock=clock.time)
    key = client.keys.CreateKey(key_pb2.CreateKeyRequest(alias="k")).key
    assert key.state == key_pb2.KEY_STATE_ENABLED and key.origin == "cbr"
    vault = client.vaults.CreateVault(vault_pb2.CreateVaultRequest(
        name="v", object_type=common_pb2.OBJECT_TYPE_DISK, size_gb=10, encrypted=True,
        kms_key_id=key.id)).vault
    assert vault.encrypted and vault.kms_key_id == key.id
    with pytest.raises(grpc.RpcError) as err:
        client.keys.ScheduleKeyDeletion(key_pb2.ScheduleKeyDeletionRequest(key_id=key.id,
                                                                           pending_days=3))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    pending = client.keys.ScheduleKeyDeletion(key_pb2.ScheduleKeyDeletionRequest(
        key_id=key.id, pending_days=7)).key
    assert pending.state == key_pb2.KEY_STATE_PENDING_DELETION
    assert pending.deletion_at.seconds == int(clock.time() + 7 * DAY)
    clock.advance(7 * DAY - 1)
    assert client.keys.GetKey(key_pb2.GetKeyRequest(key_id=key.id)).key.state == \
        key_pb2.KEY_STATE_PENDING_DELETION
    clock.advance(2)
    assert client.keys.GetKey(key_pb2.GetKeyRequest(key_id=key.id)).key.state == \
        key_pb2.KEY_STATE_DELETED
    listed = client.keys.ListKeys(key_pb2.ListKeysRequest(state=key_pb2.KEY_STATE_DELETED))
    assert [k.id for k in listed.keys] == [key.id]
    with pytest.raises(grpc.RpcError) as err:
        client.keys.CancelKeyDeletion(key_pb2.CancelKeyDeletionRequest(key_id=key.id))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as err:
        client.vaults.CreateVault(vault_pb2.CreateVaultRequest(
            name="w", object_type=common_pb2.OBJECT_TYPE_DISK, size_gb=10, encrypted=True,
            kms_key_id=key.id))
    refused = error_from_rpc(err.value)
    assert isinstance(refused, errors.KeyNotUsable)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert key.id in refused.message and "deleted" in refused.message


def test_vault_encryption_cannot_be_updated_and_says_so(sqlite_api: RunningController) -> None:
    client = sqlite_api.client()
    vault = client.vaults.CreateVault(vault_pb2.CreateVaultRequest(
        name="v", object_type=common_pb2.OBJECT_TYPE_DISK, size_gb=10)).vault
    with pytest.raises(grpc.RpcError) as err:
        client.vaults.UpdateVault(vault_pb2.UpdateVaultRequest(
            vault_id=vault.id, vault=vault_pb2.Vault(encrypted=True),
            update_mask=field_mask_pb2.FieldMask(paths=["encrypted"])))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "cannot change after creation" in (err.value.details() or "")
    assert isinstance(error_from_rpc(err.value), errors.VaultEncryptionImmutable)


def test_only_the_owner_manages_a_shared_key_and_the_other_account_sees_it_shared_in(
        sqlite_api: RunningController) -> None:
    admin = sqlite_api.client()
    made = admin.iam.CreateAccount(iam_pb2.CreateAccountRequest(name="tenant-b",
                                                                admin_user_name="bob"))
    other = made.account
    bob = Client(sqlite_api.endpoint, made.access_key.access_key_id,
                 made.access_key.secret_access_key, insecure=True)
    key = admin.keys.CreateKey(key_pb2.CreateKeyRequest(alias="shared")).key
    shared = admin.keys.ShareKey(key_pb2.ShareKeyRequest(key_id=key.id,
                                                        account_id=other.id)).key
    assert list(shared.shared_with) == [other.id]
    with pytest.raises(grpc.RpcError) as err:
        admin.keys.ShareKey(key_pb2.ShareKeyRequest(key_id=key.id, account_id="nobody"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as err:
        admin.keys.GetKey(key_pb2.GetKeyRequest(key_id="missing"))
    assert isinstance(error_from_rpc(err.value), errors.KeyNotFound)
    [seen] = bob.keys.ListKeys(key_pb2.ListKeysRequest()).keys
    assert seen.id == key.id and seen.shared_in and list(seen.shared_with) == []
    with pytest.raises(grpc.RpcError) as err:
        bob.keys.DisableKey(key_pb2.DisableKeyRequest(key_id=key.id))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "only its owner" in (err.value.details() or "")
    vault = bob.vaults.CreateVault(vault_pb2.CreateVaultRequest(
        name="b-vault", object_type=common_pb2.OBJECT_TYPE_TURBO, size_gb=10, encrypted=True,
        kms_key_id=key.id)).vault
    assert vault.encrypted and vault.kms_key_id == key.id
    with pytest.raises(grpc.RpcError) as err:
        bob.vaults.CreateVault(vault_pb2.CreateVaultRequest(
            name="b-replicas", object_type=common_pb2.OBJECT_TYPE_TURBO, size_gb=10,
            protect_type=vault_pb2.PROTECT_TYPE_REPLICATION, encrypted=True,
            kms_key_id=key.id))
    assert isinstance(error_from_rpc(err.value), errors.SharedKeyNotAllowed)
    bob.close()
