"""Cross-cloud replication end to end: two clouds, each a real controller with
its own database, accounts and storage; a host agent on the source, an importer
and a host agent on the target. Backups replicate, only missing chunks cross,
replicas restore on the target byte for byte, a cut stream or a killed
importer resumes without resending, and a transfer that gives up leaves no
replica. The rules: ``test_replication_rules.py``; the replication policy:
``test_replication_policy.py``; the two clouds: ``tests/support/clouds.py``.
"""

from __future__ import annotations

import random
import socket
import threading
from pathlib import Path

import pytest

from agent.replication import PUTS_IN_FLIGHT
from cbr.repo.config import CHUNKER_MAX
from cbr.repo.content.store import UPLOADS_IN_FLIGHT
from cbr.repo.replicate import PUT_BYTES
from cbr.v1 import backup_pb2, replication_pb2, task_pb2, vault_pb2
from tests.integration.test_data_path import MiB, _backup, _sha, _tree, _wait_task, _write_at
from tests.support.clouds import FAIL, SUCCESS, Clouds, _clouds, _replicate
from tests.support.processes import AgentFactory, ControllerFactory, wait_until
from tests.support.proxy import CuttingProxy
from tests.support.seaweed import SeaweedServer

pytestmark = pytest.mark.integration


def _target_restore(clouds: Clouds, backup_id: str, path: Path) -> None:
    task_id = clouds.target.client.backups.RestoreBackup(backup_pb2.RestoreBackupRequest(
        backup_id=backup_id, target_agent_id=clouds.target.host_agent_id,
        target_path=str(path))).task_id
    task = _wait_task(clouds.target.client, task_id)
    assert task.status == task_pb2.TASK_STATUS_SUCCESS, task.error_info


def _replicate_incrementally_and_restore(clouds: Clouds, tmp_path: Path) -> None:
    src = clouds.source
    images, share = src.files["images"], src.files["share"]
    server = _backup(src, "server", "web-1")
    tree = _backup(src, "turbo", "share")
    want_sys, want_data, want_tree = _sha(images / "sys.img"), _sha(images / "data.img"), \
        _tree(share)

    task, record = _replicate(clouds, server.id, "server")
    first_wire = int(task.extra_info["bytes_sent"])
    assert first_wire > 3 * MiB  # the data crossed
    # One true final figure (issue 20: it was the last progress report's),
    # and a finished task says so.
    assert task.extra_info["bytes_sent"] == task.extra_info["wire_bytes"]
    assert task.extra_info["message"] == "finished"
    tree_task, _ = _replicate(clouds, tree.id, "turbo")
    assert int(tree_task.extra_info["bytes_total"]) >= 3 * MiB  # the share's files
    assert int(tree_task.extra_info["bytes_sent"]) > 3 * MiB

    # The replica is a backup of the target's catalog, marked as a replica.
    replica = clouds.target.client.backups.GetBackup(
        backup_pb2.GetBackupRequest(backup_id=record.destination_backup_id)).backup
    assert replica.image_type == backup_pb2.IMAGE_TYPE_REPLICATION
    assert replica.vault_id == clouds.target.vaults["server"]
    assert replica.stored_bytes > 3 * MiB  # what the import added to the target's storage

    # Change the data, back up and replicate again: only the new chunks cross.
    rng = random.Random(11)
    _write_at(images / "data.img", 2 * MiB, rng.randbytes(256 * 1024))
    (share / "docs" / "new.bin").write_bytes(rng.randbytes(512 * 1024))
    server2 = _backup(src, "server", "web-1")
    tree2 = _backup(src, "turbo", "share")
    task2, record2 = _replicate(clouds, server2.id, "server")
    # Only the new chunks cross: what the incremental backup stored, and
    # message overhead (the disk's block size makes the 256 KiB change 1 MiB).
    wire2 = int(task2.extra_info["bytes_sent"])
    new_bytes = server2.stored_bytes + sum(c.stored_bytes for c in server2.children)
    assert wire2 <= 1.1 * new_bytes + 64 * 1024, (wire2, new_bytes)
    assert wire2 < first_wire / 4
    _, tree_record2 = _replicate(clouds, tree2.id, "turbo")

    # Replicas restore on the target as the source was at backup time.
    out = tmp_path / "b" / "restored"
    out.mkdir()
    _target_restore(clouds, record.destination_backup_id, out / "server1")
    assert _sha(out / "server1" / "system.img") == want_sys
    assert _sha(out / "server1" / "data.img") == want_data
    # An image from the replica: its system disk, registered on the target.
    made = clouds.target.client.backups.CreateImage(backup_pb2.CreateImageRequest(
        backup_id=record.destination_backup_id, name="web-1-image",
        target_agent_id=clouds.target.host_agent_id, target_path=str(out / "web-1.img")))
    task = _wait_task(clouds.target.client, made.task_id)
    assert task.status == task_pb2.TASK_STATUS_SUCCESS, task.error_info
    image = clouds.target.client.backups.GetImage(backup_pb2.GetImageRequest(
        image_id=made.image.id)).image
    assert image.status == backup_pb2.IMAGE_STATUS_AVAILABLE
    assert (image.source_backup_id, image.source_cloud) == (server.id, "cloud-a")
    assert _sha(out / "web-1.img") == want_sys
    _target_restore(clouds, record2.destination_backup_id, out / "server2")
    assert _sha(out / "server2" / "data.img") == _sha(images / "data.img")
    _target_restore(clouds, tree_record2.destination_backup_id, out / "share2")
    assert _tree(out / "share2") == _tree(share)
    assert want_tree != _tree(share)

    # Both sides keep a record; the target's names the source backup.
    listed = clouds.target.client.replication.ListReplicationRecords(
        replication_pb2.ListReplicationRecordsRequest(source_backup_id=server.id))
    [target_record] = listed.replication_records
    assert target_record.status == SUCCESS
    assert target_record.destination_backup_id == record.destination_backup_id


def test_server_and_file_system_backups_replicate_incrementally_and_restore_on_the_target(
        clouds: Clouds, tmp_path: Path) -> None:
    _replicate_incrementally_and_restore(clouds, tmp_path)


def test_replication_between_clouds_whose_vaults_are_on_s3(
        tmp_path: Path, seaweed: SeaweedServer, controller_factory: ControllerFactory,
        agent_factory: AgentFactory) -> None:
    creds = seaweed.credentials()

    def on_s3(cloud: str) -> tuple[list[str], dict[str, str] | None]:
        url = (f"s3://{seaweed.bucket_name()}/{cloud}?endpoint={seaweed.endpoint}"
               "&region=us-east-1&addressing_style=path&create_bucket=1")
        return (["--storage-url", url], {"CBR_STORAGE_ACCESS_KEY": creds["access_key"],
                                          "CBR_STORAGE_SECRET_KEY": creds["secret_key"]})

    clouds = _clouds(tmp_path, controller_factory, agent_factory, storage=on_s3)
    vault = clouds.target.client.vaults.GetVault(vault_pb2.GetVaultRequest(
        vault_id=clouds.target.vaults["server"])).vault
    assert vault.storage_url.startswith("s3://")
    _replicate_incrementally_and_restore(clouds, tmp_path)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_cut_streams_and_a_killed_importer_resume_without_resending(
        tmp_path: Path, controller_factory: ControllerFactory,
        agent_factory: AgentFactory) -> None:
    port = _free_port()
    proxy = CuttingProxy(("127.0.0.1", port), cut_after=[40 * MiB])
    try:
        clouds = _clouds(tmp_path, controller_factory, agent_factory,
                         listen=f"127.0.0.1:{port}", advertise=proxy.endpoint)
        images = clouds.source.files["images"]
        # Large enough that the puts in flight when a stream breaks (what a
        # fault may cost, see below) are small beside the backup, as they are
        # beside any real one.
        rng = random.Random(5)
        for offset in (8 * MiB, 152 * MiB):  # 288 MiB, in two (randbytes stops at 256)
            _write_at(images / "sys.img", offset, rng.randbytes(144 * MiB))
        server = _backup(clouds.source, "server", "web-1")
        chunk_bytes = server.stored_bytes + sum(c.stored_bytes for c in server.children)
        killed = threading.Event()

        def kill_importer() -> None:
            clouds.target.importer.kill()
            killed.set()
            clouds.target.importer.start()

        # The first stream is cut at 40 MiB, the target controller restarts at
        # 70 MiB (the importer keeps its grant), the importer is killed at 100 MiB.
        proxy.when_total_exceeds(70 * MiB, clouds.target.controller.restart)
        proxy.when_total_exceeds(100 * MiB, kill_importer)
        task, record = _replicate(clouds, server.id, "server")
        assert proxy.cuts >= 1 and killed.is_set()
        assert int(task.extra_info["attempts"]) >= 3, task.extra_info
        sent = int(task.extra_info["bytes_sent"])
        assert sent < 1.2 * chunk_bytes, (sent, chunk_bytes)
        # What a broken stream may cost: the puts sent and not yet answered,
        # and, when the importer dies, the answered ones whose packs were
        # still uploading (each put is closed into packs of its own, indexed
        # once stored), each at most PUT_BYTES plus its last chunk;
        # everything else crosses once.
        window = (PUTS_IN_FLIGHT + 1 + UPLOADS_IN_FLIGHT) * (PUT_BYTES + CHUNKER_MAX)
        assert sent - chunk_bytes < (proxy.cuts + 1) * window, (sent, chunk_bytes, proxy.cuts)
        out = tmp_path / "b" / "restored"
        _target_restore(clouds, record.destination_backup_id, out)
        assert _sha(out / "system.img") == _sha(images / "sys.img")
        assert _sha(out / "data.img") == _sha(images / "data.img")
    finally:
        proxy.close()


def test_a_replication_that_gives_up_fails_and_leaves_no_replica(
        tmp_path: Path, controller_factory: ControllerFactory,
        agent_factory: AgentFactory) -> None:
    port = _free_port()
    proxy = CuttingProxy(("127.0.0.1", port))
    try:
        clouds = _clouds(tmp_path, controller_factory, agent_factory,
                         source_args=("--replication-retry", "3"),
                         listen=f"127.0.0.1:{port}", advertise=proxy.endpoint)
        images = clouds.source.files["images"]
        _write_at(images / "sys.img", 8 * MiB, random.Random(6).randbytes(24 * MiB))
        server = _backup(clouds.source, "server", "web-1")
        # The importer dies mid-transfer and does not come back.
        proxy.when_total_exceeds(8 * MiB, clouds.target.importer.kill)
        resp = clouds.source.client.replication.ReplicateBackup(
            replication_pb2.ReplicateBackupRequest(
                backup_id=server.id, credential_id=clouds.credential_id,
                destination_region="region-b", destination_vault_id=clouds.target.vaults["server"]))
        task = _wait_task(clouds.source.client, resp.task_id, timeout=120)
        assert task.status == task_pb2.TASK_STATUS_FAILED
        assert task.error_info.code == "BackupService.8001", task.error_info
        assert "could not be reached" in task.error_info.message
        record = clouds.source.client.replication.GetReplicationRecord(
            replication_pb2.GetReplicationRecordRequest(
                replication_record_id=resp.replication_record_id)).replication_record
        assert record.status == FAIL and record.fail_code == "BackupService.8001"
        # The target aborted the import: its record failed and no replica shows.
        [target_record] = wait_until(lambda: [
            r for r in clouds.target.client.replication.ListReplicationRecords(
                replication_pb2.ListReplicationRecordsRequest(
                    source_backup_id=server.id)).replication_records if r.status == FAIL],
            timeout=30, message="the target's record fails")
        assert target_record.fail_code == "BackupService.0412"
        listed = clouds.target.client.backups.ListBackups(backup_pb2.ListBackupsRequest(
            vault_id=clouds.target.vaults["server"])).backups
        assert list(listed) == []
    finally:
        proxy.close()
