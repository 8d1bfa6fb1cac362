"""A replication policy across two real clouds: it follows the vault's
backups, runs on demand sending only what has not gone yet, is skipped when
nothing is new, and applies its retention to the replicas on the target.
"""

from __future__ import annotations

from typing import Any

import pytest

from cbr.v1 import backup_pb2, policy_pb2, replication_pb2, task_pb2, vault_pb2
from tests.integration.test_data_path import _backup, _wait_task
from tests.support.clouds import SUCCESS, Clouds
from tests.support.processes import wait_until

pytestmark = pytest.mark.integration


def test_a_replication_policy_follows_the_vault_backups_and_runs_on_demand(
        clouds: Clouds) -> None:
    src, target = clouds.source, clouds.target
    daily = "FREQ=DAILY;INTERVAL=1;BYHOUR=3;BYMINUTE=0"
    backup_policy = src.client.policies.CreatePolicy(policy_pb2.CreatePolicyRequest(
        name="nightly", operation_type=policy_pb2.POLICY_OPERATION_TYPE_BACKUP, enabled=True,
        trigger=policy_pb2.Trigger(pattern=[daily]),
        operation_definition=policy_pb2.OperationDefinition(max_backups=10))).policy
    replication_policy = src.client.policies.CreatePolicy(policy_pb2.CreatePolicyRequest(
        name="to-b", operation_type=policy_pb2.POLICY_OPERATION_TYPE_REPLICATION, enabled=True,
        trigger=policy_pb2.Trigger(pattern=[daily]),
        operation_definition=policy_pb2.OperationDefinition(
            max_backups=1, destination_region="region-b",
            destination_project_id=target.account_id,
            credential_id=clouds.credential_id))).policy
    vault = src.vaults["server"]
    src.client.vaults.AssociateVaultPolicy(vault_pb2.AssociateVaultPolicyRequest(
        vault_id=vault, policy_id=backup_policy.id))
    src.client.vaults.AssociateVaultPolicy(vault_pb2.AssociateVaultPolicyRequest(
        vault_id=vault, policy_id=replication_policy.id,
        destination_vault_id=target.vaults["server"]))

    def records() -> list[Any]:
        return list(src.client.replication.ListReplicationRecords(
            replication_pb2.ListReplicationRecordsRequest(vault_id=vault)).replication_records)

    # A policy backup is replicated as soon as it is available.
    [checkpoint_id] = src.client.policies.RunPolicyNow(policy_pb2.RunPolicyNowRequest(
        policy_id=backup_policy.id)).checkpoint_ids
    auto = wait_until(lambda: src.client.backups.GetCheckpoint(backup_pb2.GetCheckpointRequest(
        checkpoint_id=checkpoint_id)).checkpoint.backup_ids, message="the checkpoint's backup")
    [record] = wait_until(lambda: [r for r in records() if r.status == SUCCESS],
                          timeout=60, message="the policy backup is replicated")
    assert record.source_backup_id == auto[0] and record.auto_trigger
    # A manual backup waits for the replication policy's run, which sends
    # only what has not gone to the region yet.
    manual = _backup(src, "server", "web-1")
    [task_id] = src.client.policies.RunPolicyNow(policy_pb2.RunPolicyNowRequest(
        policy_id=replication_policy.id)).task_ids
    assert _wait_task(src.client, task_id).status == task_pb2.TASK_STATUS_SUCCESS
    wait_until(lambda: {r.source_backup_id for r in records() if r.status == SUCCESS}
               == {auto[0], manual.id}, message="both replicated")
    # Nothing new: the run is skipped, with a skipped task saying why (rule 3).
    [task_id] = src.client.policies.RunPolicyNow(policy_pb2.RunPolicyNowRequest(
        policy_id=replication_policy.id)).task_ids
    task = _wait_task(src.client, task_id)
    assert task.status == task_pb2.TASK_STATUS_SKIPPED and "already" in task.extra_info["reason"]
    runs = src.client.policies.ListPolicyRuns(policy_pb2.ListPolicyRunsRequest(
        policy_id=replication_policy.id)).runs
    assert any(r.status == "skipped" and task_id in r.detail for r in runs)
    # The policy's retention (max_backups 1) applies to the replicas it made
    # on the target, deleting through the credential: the newest stays.

    def replicas() -> set[str]:
        return {b.id for b in target.client.backups.ListBackups(backup_pb2.ListBackupsRequest(
            vault_id=target.vaults["server"],
            status=backup_pb2.BACKUP_STATUS_AVAILABLE)).backups}

    newest = next(r.destination_backup_id for r in records() if r.source_backup_id == manual.id)
    wait_until(lambda: replicas() == {newest}, timeout=30, message="retention on the target")
