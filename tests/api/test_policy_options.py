"""Policy windows and verify and prune policies over the wire: each refusal
is INVALID_ARGUMENT with BackupService.9900 naming the field, and what is
accepted comes back as stored."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import field_mask_pb2

from cbr.v1 import common_pb2, policy_pb2, vault_pb2
from tests.api.test_bad_input import refused
from tests.support.inproc import RunningController

DAILY = "FREQ=DAILY;INTERVAL=1;BYHOUR=6;BYMINUTE=00"
HOURLY = f"FREQ=DAILY;INTERVAL=1;BYHOUR={','.join(str(h) for h in range(24))};BYMINUTE=00"


def _request(**kw: object) -> policy_pb2.CreatePolicyRequest:
    base: dict[str, object] = {"name": "p", "operation_type": 1, "enabled": True,
                               "trigger": policy_pb2.Trigger(pattern=[DAILY])}
    base.update(kw)
    return policy_pb2.CreatePolicyRequest(**base)  # type: ignore[arg-type]


VERIFY = policy_pb2.POLICY_OPERATION_TYPE_VERIFY
PRUNE = policy_pb2.POLICY_OPERATION_TYPE_PRUNE


@pytest.mark.parametrize("kw, words", [
    ({"start_window_minutes": 59}, "start_window_minutes 59 must be 60 to 1440"),
    ({"start_window_minutes": 90, "completion_window_minutes": 90},
     "completion_window_minutes 90 must be more than the start window (90)"),
    ({"completion_window_minutes": 43201}, "at most 43200"),
    ({"start_window_minutes": 61, "trigger": policy_pb2.Trigger(pattern=[HOURLY])},
     "longer than the 60 minutes between two of the policy's runs"),
    ({"operation_type": VERIFY,
      "operation_definition": policy_pb2.OperationDefinition(read_data_subset="3/2")},
     "read_data_subset: '3/2': n must be 1 to t (2)"),
    ({"operation_type": VERIFY,
      "operation_definition": policy_pb2.OperationDefinition(read_data_subset="half")},
     "is neither n/t"),
    ({"operation_type": VERIFY,
      "operation_definition": policy_pb2.OperationDefinition(read_data_subset="0%")},
     "more than 0"),
    ({"operation_type": PRUNE,
      "operation_definition": policy_pb2.OperationDefinition(read_data=True)},
     "read_data is for verify policies only"),
    ({"operation_type": VERIFY,
      "operation_definition": policy_pb2.OperationDefinition(max_backups=3)},
     "max_backups is for backup policies"),
    ({"operation_definition": policy_pb2.OperationDefinition(read_data_subset="1/4")},
     "read_data_subset is for verify policies only"),
])
def test_invalid_policy_options_are_invalid_argument_9900(
        sqlite_api: RunningController, kw: dict[str, object], words: str) -> None:
    client = sqlite_api.client()
    code, cbr, details = refused(client.policies.CreatePolicy, _request(**kw))
    assert (code, cbr) == (grpc.StatusCode.INVALID_ARGUMENT, "BackupService.9900")
    assert words in details


def test_windows_and_verify_options_are_stored_and_updatable(
        sqlite_api: RunningController) -> None:
    client = sqlite_api.client()
    p = client.policies.CreatePolicy(_request(
        operation_type=VERIFY, start_window_minutes=120, completion_window_minutes=600,
        operation_definition=policy_pb2.OperationDefinition(read_data_subset="1/7"))).policy
    assert (p.start_window_minutes, p.completion_window_minutes) == (120, 600)
    assert p.operation_type == VERIFY and p.operation_definition.read_data_subset == "1/7"
    updated = client.policies.UpdatePolicy(policy_pb2.UpdatePolicyRequest(
        policy_id=p.id, policy=policy_pb2.Policy(start_window_minutes=60),
        update_mask=field_mask_pb2.FieldMask(paths=["start_window_minutes"]))).policy
    assert (updated.start_window_minutes, updated.completion_window_minutes) == (60, 600)
    code, cbr, details = refused(client.policies.UpdatePolicy, policy_pb2.UpdatePolicyRequest(
        policy_id=p.id, policy=policy_pb2.Policy(completion_window_minutes=30),
        update_mask=field_mask_pb2.FieldMask(paths=["completion_window_minutes"])))
    assert (code, cbr) == (grpc.StatusCode.INVALID_ARGUMENT, "BackupService.9900")
    assert "completion_window_minutes 30" in details
    default = client.policies.CreatePolicy(_request(name="d")).policy
    assert (default.start_window_minutes, default.completion_window_minutes) == (60, 10080)


def test_a_vault_takes_a_verify_and_a_prune_policy_beside_its_backup_policy(
        sqlite_api: RunningController) -> None:
    client = sqlite_api.client()
    vault = client.vaults.CreateVault(vault_pb2.CreateVaultRequest(
        name="v", object_type=common_pb2.OBJECT_TYPE_DISK, size_gb=10)).vault
    for name, kind in (("b", 1), ("v", VERIFY), ("p", PRUNE)):
        policy = client.policies.CreatePolicy(_request(name=name, operation_type=kind)).policy
        client.vaults.AssociateVaultPolicy(vault_pb2.AssociateVaultPolicyRequest(
            vault_id=vault.id, policy_id=policy.id))
    bound = client.policies.ListPolicies(policy_pb2.ListPoliciesRequest(
        vault_id=vault.id)).policies
    assert sorted(p.name for p in bound) == ["b", "p", "v"]
    # One of each kind: a second verify policy replaces the first.
    second = client.policies.CreatePolicy(_request(name="v2", operation_type=VERIFY)).policy
    client.vaults.AssociateVaultPolicy(vault_pb2.AssociateVaultPolicyRequest(
        vault_id=vault.id, policy_id=second.id))
    bound = client.policies.ListPolicies(policy_pb2.ListPoliciesRequest(
        vault_id=vault.id)).policies
    assert sorted(p.name for p in bound) == ["b", "p", "v2"]


def test_a_bad_read_data_subset_on_verify_vault_is_refused(
        sqlite_api: RunningController) -> None:
    client = sqlite_api.client()
    vault = client.vaults.CreateVault(vault_pb2.CreateVaultRequest(
        name="v", object_type=common_pb2.OBJECT_TYPE_DISK, size_gb=10)).vault
    code, cbr, details = refused(client.vaults.VerifyVault, vault_pb2.VerifyVaultRequest(
        vault_id=vault.id, read_data_subset="2/0"))
    assert (code, cbr) == (grpc.StatusCode.INVALID_ARGUMENT, "BackupService.9900")
    assert "t must be 1 to 10000" in details
