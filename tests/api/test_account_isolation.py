"""Another account sees and reaches nothing of the caller's, through the
calls whose queries moved from the servicers into the services (issue 21)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest

from cbr.client import Client
from cbr.v1 import (
    agent_pb2,
    backup_pb2,
    credential_pb2,
    iam_pb2,
    policy_pb2,
    protectable_pb2,
    replication_pb2,
    task_pb2,
)
from tests.api.test_listing import _inventory
from tests.support.inproc import RunningController

DAILY = "FREQ=DAILY;BYHOUR=3;BYMINUTE=0"


def test_another_account_lists_nothing_and_finds_nothing_of_the_callers(
        api: RunningController) -> None:
    admin = api.client()
    protectables = _inventory(api)
    policy = admin.policies.CreatePolicy(policy_pb2.CreatePolicyRequest(
        name="nightly", operation_type=policy_pb2.POLICY_OPERATION_TYPE_BACKUP,
        enabled=True, trigger=policy_pb2.Trigger(pattern=[DAILY]),
        operation_definition=policy_pb2.OperationDefinition(max_backups=3))).policy
    me = admin.iam.GetCallerIdentity(iam_pb2.GetCallerIdentityRequest())
    [agent, *_] = admin.agents.ListAgents(agent_pb2.ListAgentsRequest()).agents
    made = admin.iam.CreateAccount(iam_pb2.CreateAccountRequest(
        name="other", admin_user_name="other-admin"))
    other = Client(api.endpoint, made.access_key.access_key_id,
                   made.access_key.secret_access_key, insecure=True)
    try:
        assert not other.protectables.ListProtectables(
            protectable_pb2.ListProtectablesRequest()).protectables
        assert not other.agents.ListAgents(agent_pb2.ListAgentsRequest()).agents
        assert not other.policies.ListPolicies(policy_pb2.ListPoliciesRequest()).policies
        assert not other.credentials.ListCredentials(
            credential_pb2.ListCredentialsRequest()).credentials
        assert not other.replication.ListReplicationRecords(
            replication_pb2.ListReplicationRecordsRequest()).replication_records
        assert not other.backups.ListImages(backup_pb2.ListImagesRequest()).images
        assert [u.name for u in other.iam.ListUsers(iam_pb2.ListUsersRequest()).users] == \
            ["other-admin"]

        calls: list[Callable[[], Any]] = [
            lambda: other.protectables.GetProtectable(protectable_pb2.GetProtectableRequest(
                protectable_id=protectables["vol"])),
            lambda: other.agents.GetAgent(agent_pb2.GetAgentRequest(agent_id=agent.id)),
            lambda: other.agents.SyncAgent(agent_pb2.SyncAgentRequest(agent_id=agent.id)),
            lambda: other.agents.DeleteAgent(agent_pb2.DeleteAgentRequest(agent_id=agent.id)),
            lambda: other.policies.GetPolicy(policy_pb2.GetPolicyRequest(policy_id=policy.id)),
            lambda: other.policies.RunPolicyNow(policy_pb2.RunPolicyNowRequest(
                policy_id=policy.id)),
            lambda: other.policies.ListPolicyRuns(policy_pb2.ListPolicyRunsRequest(
                policy_id=policy.id)),
            lambda: other.policies.DeletePolicy(policy_pb2.DeletePolicyRequest(
                policy_id=policy.id)),
            lambda: other.iam.ListAccessKeys(iam_pb2.ListAccessKeysRequest(
                user_id=me.user.id)),
            lambda: other.iam.ListGrants(iam_pb2.ListGrantsRequest(user_id=me.user.id)),
            lambda: other.iam.DeleteAccessKey(iam_pb2.DeleteAccessKeyRequest(
                access_key_id=me.access_key_id)),
        ]
        for call in calls:
            with pytest.raises(grpc.RpcError) as exc:
                call()
            assert exc.value.code() == grpc.StatusCode.NOT_FOUND, exc.value.details()
    finally:
        other.close()
    # Nothing of the caller's changed, and no task was started for it.
    assert admin.policies.GetPolicy(policy_pb2.GetPolicyRequest(
        policy_id=policy.id)).policy.name == "nightly"
    assert len(admin.agents.ListAgents(agent_pb2.ListAgentsRequest()).agents) == 2
    assert admin.iam.GetCallerIdentity(iam_pb2.GetCallerIdentityRequest()).access_key_id == \
        me.access_key_id
    assert list(admin.tasks.ListTasks(task_pb2.ListTasksRequest()).tasks) == []
