"""Faults outside the agent while a backup runs: the controller killed and
restarted, and the S3 storage going away and coming back. Each ends in a
backup that completes or a clear task error, and nothing already stored is
lost: every backup that says ``available`` restores byte-identical."""

from __future__ import annotations

from pathlib import Path

import pytest

from cbr.v1 import agent_pb2, backup_pb2, task_pb2, vault_pb2
from tests.integration.test_data_path import (
    AVAILABLE,
    ERROR,
    MiB,
    _backup,
    _restore,
    _sha,
    _start,
    _task,
    _wait_task,
)
from tests.support.processes import AgentFactory, ControllerFactory, wait_until
from tests.support.seaweed import SeaweedServer

pytestmark = pytest.mark.integration


def _sent(client: object, task_id: str) -> int:
    return int(_task(client, task_id).extra_info.get("bytes_sent", "0") or 0)  # type: ignore[arg-type]


def test_controller_killed_mid_backup_the_backup_completes_once_it_is_back(
        tmp_path: Path, controller_factory: ControllerFactory,
        agent_factory: AgentFactory) -> None:
    host = _start(tmp_path, controller_factory, agent_factory, big_mib=512)
    big = host.protectables["big"]
    cp = host.client.backups.CreateCheckpoint(backup_pb2.CreateCheckpointRequest(
        vault_id=host.vaults["disk"], resource_ids=[big.id])).checkpoint
    [task_id] = cp.task_ids
    [backup_id] = cp.backup_ids
    wait_until(lambda: _sent(host.client, task_id) > 64 * MiB, timeout=120, interval=0.05,
               message="the backup is under way")
    host.controller.kill()
    host.controller.start()
    client = host.controller.client()
    task = _wait_task(client, task_id, timeout=180)
    assert task.status == task_pb2.TASK_STATUS_SUCCESS, task.error_info
    backup = client.backups.GetBackup(backup_pb2.GetBackupRequest(backup_id=backup_id)).backup
    assert backup.status == AVAILABLE
    out = tmp_path / "big-restored.img"
    host.client = client
    # The backup may have finished before the kill; the agent then reconnects
    # to the new controller with backoff, and a restore needs it online.
    wait_until(lambda: client.agents.GetAgent(agent_pb2.GetAgentRequest(
        agent_id=host.agent_id)).agent.status == agent_pb2.AGENT_STATUS_ONLINE,
        timeout=30, message="the agent is back")
    task = _restore(host, backup_id, target_path=str(out))
    assert task.status == task_pb2.TASK_STATUS_SUCCESS, task.error_info
    assert _sha(out) == _sha(host.files["images"] / "big.img")


def test_s3_gone_mid_backup_fails_it_clearly_and_the_next_backup_works_once_it_is_back(
        tmp_path: Path, controller_factory: ControllerFactory,
        agent_factory: AgentFactory) -> None:
    # Its own S3 server: this test kills it, which the session's shared one
    # must never see.
    weed = SeaweedServer(tmp_path / "weed")
    weed.start()
    try:
        bucket = weed.bucket_name()
        url = (f"s3://{bucket}/vaults?endpoint={weed.endpoint}&region=us-east-1"
               "&addressing_style=path&create_bucket=1")
        creds = weed.credentials()
        host = _start(tmp_path, controller_factory, agent_factory, big_mib=384,
                      extra_args=["--storage-url", url],
                      env={"CBR_STORAGE_ACCESS_KEY": creds["access_key"],
                           "CBR_STORAGE_SECRET_KEY": creds["secret_key"]})
        small = _backup(host, "disk", "vol-1")  # stored before the outage
        big = host.protectables["big"]
        cp = host.client.backups.CreateCheckpoint(backup_pb2.CreateCheckpointRequest(
            vault_id=host.vaults["disk"], resource_ids=[big.id])).checkpoint
        [task_id] = cp.task_ids
        [backup_id] = cp.backup_ids
        wait_until(lambda: _sent(host.client, task_id) > 48 * MiB, timeout=120,
                   interval=0.05, message="the backup is under way")
        weed.kill()
        task = _wait_task(host.client, task_id, timeout=240)
        assert task.status == task_pb2.TASK_STATUS_FAILED
        assert task.error_info.code == "BackupService.0504", task.error_info
        assert "storage" in task.error_info.message
        failed = host.client.backups.GetBackup(backup_pb2.GetBackupRequest(
            backup_id=backup_id)).backup
        assert failed.status == ERROR

        weed.start()
        again = _backup(host, "disk", "big")
        assert again.status == AVAILABLE
        out = tmp_path / "out"
        task = _restore(host, again.id, target_path=str(out / "big.img"))
        assert task.status == task_pb2.TASK_STATUS_SUCCESS, task.error_info
        assert _sha(out / "big.img") == _sha(host.files["images"] / "big.img")
        task = _restore(host, small.id, target_path=str(out / "vol.img"))
        assert task.status == task_pb2.TASK_STATUS_SUCCESS, task.error_info
        assert _sha(out / "vol.img") == _sha(host.files["images"] / "vol.img")
        verify = host.client.vaults.VerifyVault(vault_pb2.VerifyVaultRequest(
            vault_id=host.vaults["disk"], read_data=True)).task_id
        checked = _wait_task(host.client, verify, timeout=120)
        assert checked.status == task_pb2.TASK_STATUS_SUCCESS, checked.error_info
    finally:
        weed.stop()


def test_a_prune_left_by_a_killed_process_does_not_lock_the_vault_out(
        tmp_path: Path, controller_factory: ControllerFactory,
        agent_factory: AgentFactory) -> None:
    """Issue 19: a controller killed mid-prune left a fresh prune lock, and
    every delete and prune was refused for 30 minutes after its restart."""
    from tests.unit.test_repo_locks import _prune_lock_of_a_killed_process

    host = _start(tmp_path, controller_factory, agent_factory)
    first, second = _backup(host, "disk"), _backup(host, "disk")
    storage = host.client.vaults.GetVault(vault_pb2.GetVaultRequest(
        vault_id=host.vaults["disk"])).vault.storage_url
    _prune_lock_of_a_killed_process(Path(storage))
    task = _wait_task(host.client, host.client.backups.DeleteBackup(
        backup_pb2.DeleteBackupRequest(backup_id=first.id)).task_id)
    assert task.status == task_pb2.TASK_STATUS_SUCCESS, task.error_info
    pruned = _wait_task(host.client, host.client.vaults.PruneVault(
        vault_pb2.PruneVaultRequest(vault_id=host.vaults["disk"])).task_id)
    assert pruned.status == task_pb2.TASK_STATUS_SUCCESS, pruned.error_info
    out = tmp_path / "after-prune.img"
    assert _restore(host, second.id, target_path=str(out)).status == task_pb2.TASK_STATUS_SUCCESS
    assert _sha(out) == _sha(host.files["images"] / "vol.img")
