"""The audit trail: who changed what, and who was refused, seen by their own account."""

from __future__ import annotations

import datetime as dt

import grpc
import pytest

from cbr.client import Client
from cbr.v1 import audit_pb2, common_pb2, iam_pb2, task_pb2, vault_pb2
from controller.persistence.models import AuditRecord
from tests.support.inproc import RunningController


def _vault(client: Client, name: str) -> str:
    return str(client.vaults.CreateVault(vault_pb2.CreateVaultRequest(
        name=name, object_type=common_pb2.OBJECT_TYPE_DISK, size_gb=100)).vault.id)


def _records(client: Client, **filters: object) -> list[audit_pb2.AuditRecord]:
    return list(client.audit.ListAuditRecords(
        audit_pb2.ListAuditRecordsRequest(**filters)).records)  # type: ignore[arg-type]


def _user(api: RunningController, name: str, grant: str) -> tuple[Client, str, str]:
    admin = api.client()
    user = admin.iam.CreateUser(iam_pb2.CreateUserRequest(name=name)).user
    admin.iam.CreateGrant(iam_pb2.CreateGrantRequest(user_id=user.id, action=grant))
    key = admin.iam.CreateAccessKey(iam_pb2.CreateAccessKeyRequest(user_id=user.id)).access_key
    return (Client(api.endpoint, key.access_key_id, key.secret_access_key, insecure=True),
            user.id, key.access_key_id)


def test_a_change_is_recorded_with_its_caller_action_ids_and_result(
        api: RunningController) -> None:
    admin = api.client()
    me = admin.iam.GetCallerIdentity(iam_pb2.GetCallerIdentityRequest())
    vault_id = _vault(admin, "audited")
    task_id = admin.vaults.DeleteVault(vault_pb2.DeleteVaultRequest(vault_id=vault_id)).task_id

    records = _records(admin, resource_id=vault_id)
    assert [r.action for r in records] == ["cbr:vaults:create", "cbr:vaults:delete"]
    create, delete = records
    assert create.project_id == api.account_id
    assert (create.user_id, create.access_key_id) == (me.user.id, api.access_key)
    assert create.source == "127.0.0.1"
    assert create.result == audit_pb2.AUDIT_RESULT_SUCCESS and create.status_code == "OK"
    assert delete.resource_ids == [vault_id, task_id]
    # Successful reads are not kept; the task says who started it.
    assert not _records(admin, action="iam:identity:get")
    task = admin.tasks.GetTask(task_pb2.GetTaskRequest(task_id=task_id)).task
    assert (task.started_by_user_id, task.started_by_access_key_id) == \
        (me.user.id, api.access_key)


def test_refused_calls_are_recorded_even_reads_and_for_the_owner_of_a_misused_key(
        api: RunningController) -> None:
    admin = api.client()
    vault_id = _vault(admin, "kept")
    reader, reader_id, reader_key = _user(api, "reader", "CBRReadOnlyAccess")
    try:
        with pytest.raises(grpc.RpcError) as exc:
            reader.vaults.DeleteVault(vault_pb2.DeleteVaultRequest(vault_id=vault_id))
        assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError):
            reader.iam.ListUsers(iam_pb2.ListUsersRequest())
        reader.vaults.ListVaults(vault_pb2.ListVaultsRequest())
    finally:
        reader.close()
    # The reader's key with a wrong secret: refused, and recorded for its account.
    forged = Client(api.endpoint, reader_key, "x" * 40, insecure=True)
    try:
        with pytest.raises(grpc.RpcError) as exc:
            forged.vaults.ListVaults(vault_pb2.ListVaultsRequest())
        assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        forged.close()

    refused = _records(admin, result=audit_pb2.AUDIT_RESULT_REFUSED)
    assert [(r.method.rpartition("/")[2], r.status_code) for r in refused] == [
        ("DeleteVault", "PERMISSION_DENIED"), ("ListUsers", "PERMISSION_DENIED"),
        ("ListVaults", "UNAUTHENTICATED")]
    assert all(r.access_key_id == reader_key for r in refused)
    assert [r.user_id for r in refused] == [reader_id] * 3
    assert refused[0].error_code and "cbr:vaults:delete" in refused[0].error_message
    assert refused[0].resource_ids == [vault_id]
    assert not _records(admin, user_id=reader_id, result=audit_pb2.AUDIT_RESULT_SUCCESS)


def test_another_account_reads_none_of_the_callers_records(api: RunningController) -> None:
    admin = api.client()
    _vault(admin, "mine")
    made = admin.iam.CreateAccount(iam_pb2.CreateAccountRequest(
        name="other", admin_user_name="other-admin"))
    other = Client(api.endpoint, made.access_key.access_key_id,
                   made.access_key.secret_access_key, insecure=True)
    try:
        _vault(other, "theirs")
        theirs = _records(other)
        assert [r.action for r in theirs] == ["cbr:vaults:create"]
        assert {r.project_id for r in theirs} == {made.account.id}
        mine = _records(admin, action="cbr:vaults:create")
        assert [r.project_id for r in mine] == [api.account_id]
    finally:
        other.close()


def test_records_filter_by_time_and_are_forgotten_after_the_retention_period(
        api: RunningController) -> None:
    admin = api.client()
    _vault(admin, "recent")
    assert api.app.audit is not None
    api.app.audit.flush()
    long_ago = api.app.clock.now() - dt.timedelta(days=api.app.config.audit_retention_days + 1)
    with api.app.db.begin() as s:
        s.add(AuditRecord(project_id=api.account_id, method="/cbr.v1.VaultService/DeleteVault",
                          action="cbr:vaults:delete", result="success", created_at=long_ago))
    since = audit_pb2.ListAuditRecordsRequest().since
    since.FromDatetime(long_ago + dt.timedelta(days=1))
    assert len(_records(admin, action="cbr:vaults:delete")) == 1
    assert not _records(admin, action="cbr:vaults:delete", since=since)
    assert api.app.audit.purge() == 1
    assert not _records(admin, action="cbr:vaults:delete")
    assert [r.action for r in _records(admin, action="cbr:vaults:create")] == \
        ["cbr:vaults:create"]
