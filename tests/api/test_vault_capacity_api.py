"""The vault quota of an account and a vault's threshold state over the
wire: the administrator sets the quota (at creation or later), nobody else
may, and a vault shows whether it is past its threshold."""

from __future__ import annotations

import grpc
import pytest

from cbr.client import Client, error_from_rpc
from cbr.v1 import common_pb2, iam_pb2, vault_pb2
from cli.vault_cmd import usage_line
from tests.api.test_bad_input import refused
from tests.support.inproc import RunningController


def test_the_administrator_sets_an_accounts_vault_quota_and_no_one_else_may(
        sqlite_api: RunningController) -> None:
    admin = sqlite_api.client()
    made = admin.iam.CreateAccount(iam_pb2.CreateAccountRequest(
        name="tenant", admin_user_name="boss", vault_quota_gb=500))
    assert made.account.vault_quota_gb == 500
    default = admin.iam.CreateAccount(iam_pb2.CreateAccountRequest(name="plain")).account
    assert default.vault_quota_gb == 10240
    changed = admin.iam.UpdateAccount(iam_pb2.UpdateAccountRequest(
        account_id=made.account.id, vault_quota_gb=2000)).account
    assert changed.vault_quota_gb == 2000
    code, cbr, details = refused(admin.iam.UpdateAccount, iam_pb2.UpdateAccountRequest(
        account_id=made.account.id, vault_quota_gb=0))
    assert (code, cbr) == (grpc.StatusCode.INVALID_ARGUMENT, "BackupService.9900")
    assert "vault_quota_gb must be 1 to" in details
    tenant = Client(sqlite_api.endpoint, made.access_key.access_key_id,
                    made.access_key.secret_access_key, insecure=True)
    with pytest.raises(grpc.RpcError) as exc:
        tenant.iam.UpdateAccount(iam_pb2.UpdateAccountRequest(
            account_id=made.account.id, vault_quota_gb=99999))
    assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
    err = error_from_rpc(exc.value)
    assert err is not None and err.metadata["action"] == "iam:accounts:update"
    assert admin.iam.GetAccount(iam_pb2.GetAccountRequest(
        account_id=made.account.id)).account.vault_quota_gb == 2000


def test_vault_show_says_how_full_the_vault_is_against_its_threshold(
        sqlite_api: RunningController) -> None:
    client = sqlite_api.client()
    vault = client.vaults.CreateVault(vault_pb2.CreateVaultRequest(
        name="v", object_type=common_pb2.OBJECT_TYPE_DISK, size_gb=100)).vault
    assert not vault.threshold_exceeded
    assert usage_line(vault) == "usage 0% of 100 GB (threshold 80%)"
    past = vault_pb2.Vault(size_gb=100, used_bytes=85 * 1024**3, threshold=80,
                           threshold_exceeded=True)
    assert usage_line(past) == "usage 85% of 100 GB, past the 80% threshold"
