"""SetUserPassword: stored as a hash, never returned or audited in clear,
only for the caller's own users."""

from __future__ import annotations

import grpc
import pytest
from sqlalchemy import text

from cbr.client import Client
from cbr.v1 import audit_pb2, iam_pb2
from controller.services import passwords
from tests.support.inproc import RunningController

SECRET = "a long console passphrase"


def test_a_password_is_stored_hashed_shown_as_set_and_can_be_removed(
        api: RunningController) -> None:
    admin = api.client()
    user = admin.iam.CreateUser(iam_pb2.CreateUserRequest(name="operator")).user
    assert not user.password_set
    done = admin.iam.SetUserPassword(iam_pb2.SetUserPasswordRequest(
        user_id=user.id, password=SECRET)).user
    assert done.password_set
    assert admin.iam.GetUser(iam_pb2.GetUserRequest(user_id=user.id)).user.password_set
    assert api.app.audit is not None
    api.app.audit.flush()
    with api.app.db.engine.connect() as conn:
        stored = conn.execute(text("SELECT password_hash FROM users WHERE id = :id"),
                              {"id": user.id}).scalar_one()
        assert SECRET not in stored and passwords.verify(SECRET, stored)
        audited = conn.execute(text("SELECT * FROM audit_records")).all()
    assert len(audited) >= 2  # the user made, the password set
    records = admin.audit.ListAuditRecords(audit_pb2.ListAuditRecordsRequest(
        action="iam:users:setPassword")).records
    assert [r.resource_ids for r in records] == [[user.id]]
    assert all(SECRET not in str(row) for row in audited)
    assert not admin.iam.SetUserPassword(iam_pb2.SetUserPasswordRequest(
        user_id=user.id, password="")).user.password_set


def test_a_weak_password_or_another_accounts_user_is_refused(api: RunningController) -> None:
    admin = api.client()
    user = admin.iam.CreateUser(iam_pb2.CreateUserRequest(name="operator")).user
    with pytest.raises(grpc.RpcError) as err:
        admin.iam.SetUserPassword(iam_pb2.SetUserPasswordRequest(user_id=user.id,
                                                                 password="short"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "short" not in (err.value.details() or "")
    made = admin.iam.CreateAccount(iam_pb2.CreateAccountRequest(
        name="other", admin_user_name="other-admin"))
    other = Client(api.endpoint, made.access_key.access_key_id,
                   made.access_key.secret_access_key, insecure=True)
    try:
        with pytest.raises(grpc.RpcError) as err:
            other.iam.SetUserPassword(iam_pb2.SetUserPasswordRequest(user_id=user.id,
                                                                     password=SECRET))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        other.close()
    assert not admin.iam.GetUser(iam_pb2.GetUserRequest(user_id=user.id)).user.password_set
