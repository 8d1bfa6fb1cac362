"""Issue 20: deleting a vault that holds backups, and removing a resource
that has backups, through a real controller and agent. Both used to stop
with UNIMPLEMENTED, leaving the vault ``deleting`` for good."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from cbr.client import error_from_rpc
from cbr.v1 import backup_pb2, protectable_pb2, task_pb2, vault_pb2
from tests.integration.test_data_path import (
    AVAILABLE,
    MiB,
    _backup,
    _restore,
    _sha,
    _start,
    _task,
    _wait_task,
)
from tests.support.processes import AgentFactory, ControllerFactory, wait_until

pytestmark = pytest.mark.integration


def _objects(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_deleting_a_vault_deletes_its_backups_and_frees_its_storage(
        tmp_path: Path, controller_factory: ControllerFactory,
        agent_factory: AgentFactory) -> None:
    host = _start(tmp_path, controller_factory, agent_factory, big_mib=256)
    _backup(host, "disk", "vol-1")
    _backup(host, "disk", "vol-1")
    kept = _backup(host, "turbo")
    vault_id = host.vaults["disk"]
    storage = Path(host.client.vaults.GetVault(vault_pb2.GetVaultRequest(
        vault_id=vault_id)).vault.storage_url)
    (storage / "operator-notes.txt").write_text("not the format's\n")

    # Refused while a backup of the vault runs, naming it, and nothing changes.
    cp = host.client.backups.CreateCheckpoint(backup_pb2.CreateCheckpointRequest(
        vault_id=vault_id, resource_ids=[host.protectables["big"].id])).checkpoint
    [running] = cp.task_ids
    wait_until(lambda: _task(host.client, running).status == task_pb2.TASK_STATUS_RUNNING,
               timeout=60, interval=0.02, message="the backup runs")
    with pytest.raises(grpc.RpcError) as refused:
        host.client.vaults.DeleteVault(vault_pb2.DeleteVaultRequest(vault_id=vault_id))
    error = error_from_rpc(refused.value)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.code == "BackupService.0412" and cp.backup_ids[0] in error.message
    assert host.client.vaults.GetVault(vault_pb2.GetVaultRequest(
        vault_id=vault_id)).vault.status == vault_pb2.VAULT_STATUS_AVAILABLE
    assert _wait_task(host.client, running, timeout=120).status == task_pb2.TASK_STATUS_SUCCESS

    task_id = host.client.vaults.DeleteVault(vault_pb2.DeleteVaultRequest(
        vault_id=vault_id)).task_id
    done = _wait_task(host.client, task_id)
    assert done.status == task_pb2.TASK_STATUS_SUCCESS, done.error_info
    assert done.operation_type == task_pb2.OPERATION_TYPE_VAULT_DELETE
    assert int(done.extra_info["bytes_freed"]) > 256 * MiB
    assert _objects(storage) == ["operator-notes.txt"]  # a foreign file stays
    assert [p.name for p in storage.iterdir()] == ["operator-notes.txt"]  # no empty dirs
    with pytest.raises(grpc.RpcError) as gone:
        host.client.vaults.GetVault(vault_pb2.GetVaultRequest(vault_id=vault_id))
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND
    listed = host.client.backups.ListBackups(backup_pb2.ListBackupsRequest()).backups
    assert [b.id for b in listed] == [kept.id]  # the other vault's backup, untouched
    # The disks are free to join another vault.
    again = host.client.vaults.CreateVault(vault_pb2.CreateVaultRequest(
        name="again", object_type=host.protectables["vol-1"].type, size_gb=10,
        resources=[vault_pb2.ResourceSpec(id=host.protectables["vol-1"].id)])).vault
    assert again.status == vault_pb2.VAULT_STATUS_AVAILABLE


def test_removing_a_resource_deletes_its_backups_there_and_keeps_the_others(
        tmp_path: Path, controller_factory: ControllerFactory,
        agent_factory: AgentFactory) -> None:
    host = _start(tmp_path, controller_factory, agent_factory, big_mib=64)
    vault_id = host.vaults["disk"]
    gone = [_backup(host, "disk", "big"), _backup(host, "disk", "big")]
    kept = _backup(host, "disk", "vol-1")
    big = host.protectables["big"].id
    [task_id] = host.client.vaults.RemoveVaultResources(vault_pb2.RemoveVaultResourcesRequest(
        vault_id=vault_id, resource_ids=[big])).task_ids
    done = _wait_task(host.client, task_id)
    assert done.status == task_pb2.TASK_STATUS_SUCCESS, done.error_info
    assert done.operation_type == task_pb2.OPERATION_TYPE_REMOVE_RESOURCE
    assert int(done.extra_info["backups_deleted"]) == 2
    assert int(done.extra_info["bytes_freed"]) >= 64 * MiB  # prune freed their packs
    for backup in gone:
        with pytest.raises(grpc.RpcError) as missing:
            host.client.backups.GetBackup(backup_pb2.GetBackupRequest(backup_id=backup.id))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    vault = host.client.vaults.GetVault(vault_pb2.GetVaultRequest(vault_id=vault_id)).vault
    assert big not in [r.id for r in vault.resources]
    assert vault.used_bytes < 64 * MiB
    restored = tmp_path / "restores" / "vol.img"
    task = _restore(host, kept.id, target_path=str(restored))
    assert task.status == task_pb2.TASK_STATUS_SUCCESS, task.error_info
    assert _sha(restored) == _sha(host.files["images"] / "vol.img")
    assert host.client.backups.GetBackup(backup_pb2.GetBackupRequest(
        backup_id=kept.id)).backup.status == AVAILABLE
    verify = _wait_task(host.client, host.client.vaults.VerifyVault(
        vault_pb2.VerifyVaultRequest(vault_id=vault_id, read_data=True)).task_id)
    assert verify.status == task_pb2.TASK_STATUS_SUCCESS, verify.error_info
    # The resource is free to be protected again.
    listed = host.client.protectables.ListProtectables(
        protectable_pb2.ListProtectablesRequest()).protectables
    assert next(p for p in listed if p.id == big).vault_id == ""
