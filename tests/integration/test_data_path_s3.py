"""The data path with vault storage on a real S3 server (SeaweedFS).

The controller gets an ``s3://`` storage URL and keys; agents get them with
each command. Backups, an incremental, restores compared byte for byte,
verify reading every pack, and a deletion with prune all go through S3.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cbr.v1 import backup_pb2, task_pb2, vault_pb2
from tests.integration.test_data_path import _backup, _restore, _sha, _start, _tree, _wait_task
from tests.support.processes import AgentFactory, ControllerFactory
from tests.support.seaweed import SeaweedServer

pytestmark = pytest.mark.integration


def test_backups_restore_verify_and_prune_on_s3(
        tmp_path: Path, seaweed: SeaweedServer, controller_factory: ControllerFactory,
        agent_factory: AgentFactory) -> None:
    bucket = seaweed.bucket_name()
    url = (f"s3://{bucket}/vaults?endpoint={seaweed.endpoint}&region=us-east-1"
           "&addressing_style=path&create_bucket=1")
    creds = seaweed.credentials()
    host = _start(tmp_path, controller_factory, agent_factory,
                  extra_args=["--storage-url", url],
                  env={"CBR_STORAGE_ACCESS_KEY": creds["access_key"],
                       "CBR_STORAGE_SECRET_KEY": creds["secret_key"]})
    vault = host.client.vaults.GetVault(vault_pb2.GetVaultRequest(
        vault_id=host.vaults["server"])).vault
    assert vault.storage_url.startswith(f"s3://{bucket}/vaults/{vault.id}")
    assert creds["secret_key"] not in vault.storage_url
    images, share = host.files["images"], host.files["share"]
    first = _backup(host, "server")
    tree = _backup(host, "turbo")
    with open(images / "sys.img", "r+b") as fh:
        fh.seek(9 << 20)
        fh.write(os.urandom(4096))
    second = _backup(host, "server")
    assert second.incremental
    assert sum(c.stored_bytes for c in second.children) < 2 << 20
    out = tmp_path / "out"
    task = _restore(host, second.id, target_path=str(out / "server"))
    assert task.status == task_pb2.TASK_STATUS_SUCCESS, task.error_info
    assert _sha(out / "server" / "system.img") == _sha(images / "sys.img")
    task = _restore(host, tree.id, target_path=str(out / "share"))
    assert task.status == task_pb2.TASK_STATUS_SUCCESS, task.error_info
    assert _tree(out / "share") == _tree(share)
    verify = host.client.vaults.VerifyVault(vault_pb2.VerifyVaultRequest(
        vault_id=host.vaults["server"], read_data=True)).task_id
    assert _wait_task(host.client, verify).status == task_pb2.TASK_STATUS_SUCCESS
    deleted = _wait_task(host.client, host.client.backups.DeleteBackup(
        backup_pb2.DeleteBackupRequest(backup_id=first.id)).task_id)
    assert deleted.status == task_pb2.TASK_STATUS_SUCCESS, deleted.error_info
    task = _restore(host, second.id, target_path=str(out / "again"))
    assert task.status == task_pb2.TASK_STATUS_SUCCESS, task.error_info
    assert _sha(out / "again" / "data.img") == _sha(images / "data.img")
