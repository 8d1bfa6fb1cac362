"""The data path end to end: real controller and agent processes, real storage.

Backups of a server, a disk and a file system through the API, incrementals
that send only changes, restores to new places compared byte for byte,
listing a file-system backup, deletion and prune, verify finding damage,
an agent killed mid-backup, and a lost catalog rebuilt from storage alone.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from agent.dataplane.changes import TreeWatch, Unavailable
from cbr.client import Client, error_from_rpc
from cbr.v1 import agent_pb2, backup_pb2, common_pb2, protectable_pb2, task_pb2, vault_pb2
from tests.support.processes import (
    AgentFactory,
    AgentProcess,
    ControllerFactory,
    ControllerProcess,
    enroll,
    wait_until,
)

pytestmark = pytest.mark.integration

FAST = ["--heartbeat-interval", "0.5", "--agent-offline-after", "3"]
MiB = 1 << 20
AVAILABLE = backup_pb2.BACKUP_STATUS_AVAILABLE
ERROR = backup_pb2.BACKUP_STATUS_ERROR


def _write_at(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(data)


def _sparse(path: Path, size: int) -> None:
    with open(path, "wb") as fh:
        fh.truncate(size)


def _host(root: Path, rng: random.Random, big_mib: int = 0) -> dict[str, Path]:
    images = root / "images"
    images.mkdir(parents=True)
    _sparse(images / "sys.img", 64 * MiB)
    _write_at(images / "sys.img", 0, b"BOOT" + rng.randbytes(3 * MiB))
    _write_at(images / "sys.img", 40 * MiB, b"\0" * (2 * MiB))  # allocated zeros
    _write_at(images / "sys.img", 50 * MiB + 123, b"text " * 200_000)
    (images / "data.img").write_bytes(rng.randbytes(8 * MiB))
    _sparse(images / "vol.img", 32 * MiB)
    _write_at(images / "vol.img", 5 * MiB, rng.randbytes(MiB) * 2)  # duplicate blocks
    if big_mib:
        (images / "big.img").write_bytes(os.urandom(big_mib * MiB))
    share = root / "share"
    (share / "docs" / "deep" / "er").mkdir(parents=True)
    (share / "empty").mkdir()
    (share / "readme.txt").write_text("hello\n")
    (share / "docs" / "a.bin").write_bytes(rng.randbytes(3 * MiB))
    (share / "docs" / "deep" / "er" / "b.txt").write_bytes(b"b" * 70_000)
    os.symlink("docs/a.bin", share / "link")
    os.link(share / "readme.txt", share / "hard")
    (share / "docs" / "mode.sh").write_text("#!/bin/sh\n")
    os.chmod(share / "docs" / "mode.sh", 0o751)
    return {"images": images, "share": share}


def _config(path: Path, controller: ControllerProcess, files: dict[str, Path],
            state: Path, big: bool = False) -> Path:
    images, share = files["images"], files["share"]
    big_disk = f'''
[[disks]]
name = "big"
path = "{images / 'big.img'}"
''' if big else ""
    path.write_text(f"""
[agent]
name = "host-1"
controller = "{controller.api_endpoint}"
state_dir = "{state}"
restore_roots = ["{path.parent}"]

[[servers]]
name = "web-1"
  [[servers.disks]]
  name = "system"
  path = "{images / 'sys.img'}"
  system = true
  [[servers.disks]]
  name = "data"
  path = "{images / 'data.img'}"

[[disks]]
name = "vol-1"
path = "{images / 'vol.img'}"
{big_disk}
[[file_systems]]
name = "share"
path = "{share}"
""")
    return path


@dataclass
class Host:
    controller: ControllerProcess
    client: Client
    agent: AgentProcess
    agent_id: str
    files: dict[str, Path]
    protectables: dict[str, Any]
    vaults: dict[str, str]


def _start(tmp_path: Path, controller_factory: ControllerFactory,
           agent_factory: AgentFactory, *, extra_args: list[str] | None = None,
           big_mib: int = 0, env: dict[str, str] | None = None) -> Host:
    controller = controller_factory("controller", extra_args=[*FAST, *(extra_args or [])],
                                    env=env)
    client = controller.client()
    files = _host(tmp_path / "host", random.Random(7), big_mib)
    config = _config(tmp_path / "agent.toml", controller, files, tmp_path / "agent-state",
                     big=bool(big_mib))
    token = client.agents.CreateEnrollmentToken(
        agent_pb2.CreateEnrollmentTokenRequest()).token
    done = enroll(config, token)
    assert done.returncode == 0, done.stderr
    agent = agent_factory(config, "agent")
    agent.wait_for_log("connected to")
    [registered] = wait_until(
        lambda: list(client.agents.ListAgents(agent_pb2.ListAgentsRequest()).agents))
    expected = 4 if big_mib else 3

    def found() -> dict[str, Any]:
        listed = client.protectables.ListProtectables(
            protectable_pb2.ListProtectablesRequest(agent_id=registered.id)).protectables
        return {p.name: p for p in listed}

    wait_until(lambda: len(found()) == expected, message="protectables reported")
    protectables = found()
    vaults = {}
    for kind, obj in (("server", common_pb2.OBJECT_TYPE_SERVER),
                      ("disk", common_pb2.OBJECT_TYPE_DISK),
                      ("turbo", common_pb2.OBJECT_TYPE_TURBO)):
        members = [p.id for p in protectables.values() if p.type == obj]
        vault = client.vaults.CreateVault(vault_pb2.CreateVaultRequest(
            name=f"v-{kind}", object_type=obj, size_gb=100,
            resources=[vault_pb2.ResourceSpec(id=m) for m in members])).vault
        vaults[kind] = vault.id
    return Host(controller, client, agent, registered.id, files, protectables, vaults)


def _task(client: Client, task_id: str) -> Any:
    return client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=task_id)).task


def _wait_task(client: Client, task_id: str, timeout: float = 60) -> Any:
    final = (task_pb2.TASK_STATUS_SUCCESS, task_pb2.TASK_STATUS_FAILED,
             task_pb2.TASK_STATUS_SKIPPED, task_pb2.TASK_STATUS_TIMEOUT)
    return wait_until(lambda: (t := _task(client, task_id)).status in final and t,
                      timeout=timeout, ignore=(grpc.RpcError,),
                      message=f"task {task_id} ends")


def _backup(host: Host, kind: str, resource: str | None = None, **kw: Any) -> Any:
    ids = [host.protectables[resource].id] if resource else []
    cp = host.client.backups.CreateCheckpoint(backup_pb2.CreateCheckpointRequest(
        vault_id=host.vaults[kind], resource_ids=ids, **kw)).checkpoint
    assert list(cp.skipped_resources) == []
    for task_id in cp.task_ids:
        task = _wait_task(host.client, task_id)
        assert task.status == task_pb2.TASK_STATUS_SUCCESS, task.error_info
    [backup_id] = cp.backup_ids
    return host.client.backups.GetBackup(backup_pb2.GetBackupRequest(backup_id=backup_id)).backup


def _restore(host: Host, backup_id: str, **kw: Any) -> Any:
    task_id = host.client.backups.RestoreBackup(backup_pb2.RestoreBackupRequest(
        backup_id=backup_id, **kw)).task_id
    return _wait_task(host.client, task_id)


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(4 * MiB):
            h.update(chunk)
    return h.hexdigest()


def _tree(root: Path) -> dict[str, tuple[str, int, str]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            p = Path(dirpath) / name
            st = p.lstat()
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", st.st_mode & 0o7777, os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir", st.st_mode & 0o7777, "")
            else:
                out[rel] = ("file", st.st_mode & 0o7777, _sha(p))
    return out


def _journal_works(root: Path) -> bool:
    try:
        TreeWatch(root).close()
    except Unavailable:
        return False
    return True


def test_server_disk_and_file_system_back_up_incrementally_and_restore_identical(
        tmp_path: Path, controller_factory: ControllerFactory,
        agent_factory: AgentFactory) -> None:
    host = _start(tmp_path, controller_factory, agent_factory)
    images, share = host.files["images"], host.files["share"]
    server = _backup(host, "server")
    assert server.status == AVAILABLE and not server.incremental
    assert server.name.startswith("manualbk_")
    assert len(server.children) == 2
    system = [c for c in server.children if c.extend_info.system_disk]
    assert len(system) == 1 and system[0].resource_name == "system"
    assert server.extend_info.contain_system_disk
    disk = _backup(host, "disk", name="first-vol")
    assert disk.name == "first-vol" and disk.stored_bytes > 0
    tree = _backup(host, "turbo")
    vault = host.client.vaults.GetVault(vault_pb2.GetVaultRequest(
        vault_id=host.vaults["server"])).vault
    assert vault.used_bytes >= sum(c.stored_bytes for c in server.children) > 0

    # Change a little of everything, back up again: incremental, and small.
    _write_at(images / "sys.img", 30 * MiB, b"changed!" * 1000)
    _write_at(images / "vol.img", 20 * MiB, b"x" * 4096)
    (share / "docs" / "deep" / "er" / "b.txt").write_bytes(b"B" * 70_001)
    (share / "new.txt").write_text("new file\n")
    server2 = _backup(host, "server")
    disk2 = _backup(host, "disk")
    tree2 = _backup(host, "turbo")
    assert server2.incremental and disk2.incremental and tree2.incremental
    assert sum(c.stored_bytes for c in server2.children) < 2 * MiB
    assert disk2.stored_bytes < 2 * MiB
    assert tree2.stored_bytes < MiB
    # The running agent knew what changed in the tree from its change journal,
    # and the backups say how each found its changes.
    assert tree.extend_info.change_detection == "full"
    assert tree2.extend_info.change_detection == (
        "journal" if _journal_works(share) else "walk")
    assert disk2.extend_info.change_detection in ("cbt", "hash-scan")

    # Restore both generations to new places, byte for byte.
    out = tmp_path / "restored"
    out.mkdir()
    task = _restore(host, disk2.id, target_path=str(out / "vol2.img"))
    assert task.status == task_pb2.TASK_STATUS_SUCCESS, task.error_info
    assert _sha(out / "vol2.img") == _sha(images / "vol.img")
    assert os.stat(out / "vol2.img").st_blocks * 512 < 8 * MiB  # holes stayed holes
    task = _restore(host, server2.id, target_path=str(out / "server2"))
    assert task.status == task_pb2.TASK_STATUS_SUCCESS, task.error_info
    assert _sha(out / "server2" / "system.img") == _sha(images / "sys.img")
    assert _sha(out / "server2" / "data.img") == _sha(images / "data.img")
    task = _restore(host, tree2.id, target_path=str(out / "share2"))
    assert task.status == task_pb2.TASK_STATUS_SUCCESS, task.error_info
    assert _tree(out / "share2") == _tree(share)
    assert os.stat(out / "share2" / "hard").st_ino == os.stat(out / "share2" / "readme.txt").st_ino
    task = _restore(host, tree.id, target_path=str(out / "share1"))
    assert task.status == task_pb2.TASK_STATUS_SUCCESS, task.error_info
    assert (out / "share1" / "docs" / "deep" / "er" / "b.txt").read_bytes() == b"b" * 70_000
    assert not (out / "share1" / "new.txt").exists()

    # One file out of a file-system backup, and listing it.
    task = _restore(host, tree.id, target_path=str(out / "none"), source_path="no/such")
    assert task.status == task_pb2.TASK_STATUS_FAILED
    assert task.error_info.code == "BackupService.2006", task.error_info
    task = _restore(host, tree.id, target_path=str(out / "one"), source_path="docs/deep")
    assert task.status == task_pb2.TASK_STATUS_SUCCESS, task.error_info
    assert (out / "one" / "deep" / "er" / "b.txt").read_bytes() == b"b" * 70_000
    listing = host.client.backups.ListBackupFiles(backup_pb2.ListBackupFilesRequest(
        backup_id=tree.id, path="")).files
    names = {f.name: f for f in listing}
    assert set(names) == {"readme.txt", "hard", "docs", "empty", "link"}
    assert names["link"].type == "symlink" and names["link"].target == "docs/a.bin"
    assert names["docs"].type == "dir"

    # Restore to the original disk after it was damaged.
    _write_at(images / "vol.img", 5 * MiB, b"\xff" * MiB)
    task = _restore(host, disk.id)
    assert task.status == task_pb2.TASK_STATUS_SUCCESS, task.error_info
    restored = (images / "vol.img").read_bytes()
    assert restored[20 * MiB: 20 * MiB + 4096] == b"\0" * 4096  # back to the first backup
    assert restored[5 * MiB: 5 * MiB + 4] != b"\xff" * 4

    # Verify, delete the first generation, prune, verify, and restore what is left.
    verify = host.client.vaults.VerifyVault(vault_pb2.VerifyVaultRequest(
        vault_id=host.vaults["server"], read_data=True)).task_id
    assert _wait_task(host.client, verify).status == task_pb2.TASK_STATUS_SUCCESS
    task_id = host.client.backups.DeleteBackup(backup_pb2.DeleteBackupRequest(
        backup_id=server.id)).task_id
    deleted = _wait_task(host.client, task_id)
    assert deleted.status == task_pb2.TASK_STATUS_SUCCESS, deleted.error_info
    with pytest.raises(grpc.RpcError) as err:
        host.client.backups.GetBackup(backup_pb2.GetBackupRequest(backup_id=server.id))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    task = _restore(host, server2.id, target_path=str(out / "server2b"))
    assert task.status == task_pb2.TASK_STATUS_SUCCESS, task.error_info
    assert _sha(out / "server2b" / "system.img") == _sha(images / "sys.img")


def test_restore_refusals_carry_the_reference_codes(
        tmp_path: Path, controller_factory: ControllerFactory,
        agent_factory: AgentFactory) -> None:
    host = _start(tmp_path, controller_factory, agent_factory)
    disk = _backup(host, "disk")
    server = _backup(host, "server")
    # A disk backup does not fit on a smaller disk: 2001.
    with pytest.raises(grpc.RpcError) as err:
        host.client.backups.RestoreBackup(backup_pb2.RestoreBackupRequest(
            backup_id=server.children[0].id if server.children[0].resource_size_bytes
            > host.protectables["vol-1"].size_bytes else server.children[1].id,
            target_resource_id=host.protectables["vol-1"].id))
    assert err.value.code() in (grpc.StatusCode.FAILED_PRECONDITION,
                                grpc.StatusCode.INVALID_ARGUMENT)
    # A backup being deleted cannot restore: 2003.
    task_id = host.client.backups.DeleteBackup(backup_pb2.DeleteBackupRequest(
        backup_id=disk.id)).task_id
    with pytest.raises(grpc.RpcError) as err:
        host.client.backups.RestoreBackup(backup_pb2.RestoreBackupRequest(backup_id=disk.id))
    assert err.value.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND)
    _wait_task(host.client, task_id)
    # A path escaping the file system cannot be named.
    tree = _backup(host, "turbo")
    with pytest.raises(grpc.RpcError) as err:
        host.client.backups.RestoreBackup(backup_pb2.RestoreBackupRequest(
            backup_id=tree.id, target_path=str(tmp_path / "x"), source_path="../etc"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_restores_go_only_where_the_host_allows_checked_by_controller_and_host(
        tmp_path: Path, controller_factory: ControllerFactory,
        agent_factory: AgentFactory) -> None:
    host = _start(tmp_path, controller_factory, agent_factory)
    tree, disk = _backup(host, "turbo"), _backup(host, "disk")
    # The controller refuses early what lies outside the roots the agent reported.
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    for backup_id, target in ((tree.id, "/etc/cbr-probe"), (tree.id, str(outside)),
                              (disk.id, "/dev/null"), (disk.id, f"{tmp_path}/../x.img")):
        with pytest.raises(grpc.RpcError) as err:
            host.client.backups.RestoreBackup(backup_pb2.RestoreBackupRequest(
                backup_id=backup_id, target_path=target))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        refusal = error_from_rpc(err.value)
        assert refusal is not None and refusal.code == "BackupService.2004"
        assert str(tmp_path) in (err.value.details() or "")
    # A symlink under a root passes the controller's lexical check; the host
    # resolves it and refuses, writing nothing outside.
    outside.mkdir()
    (tmp_path / "escape").symlink_to(outside)
    task = _restore(host, tree.id, target_path=str(tmp_path / "escape" / "share"))
    assert task.status == task_pb2.TASK_STATUS_FAILED
    assert task.error_info.code == "BackupService.2004"
    assert list(outside.iterdir()) == []
    task = _restore(host, disk.id, target_path=str(tmp_path / "escape" / "vol.img"))
    assert task.status == task_pb2.TASK_STATUS_FAILED
    assert task.error_info.code == "BackupService.2004"
    assert list(outside.iterdir()) == []


def test_agent_killed_mid_backup_leaves_error_and_next_backup_reuses_uploaded_chunks(
        tmp_path: Path, controller_factory: ControllerFactory,
        agent_factory: AgentFactory) -> None:
    host = _start(tmp_path, controller_factory, agent_factory, big_mib=768)
    big = host.protectables["big"]
    index = Path(host.client.vaults.GetVault(vault_pb2.GetVaultRequest(
        vault_id=host.vaults["disk"])).vault.storage_url) / "index"
    def index_files() -> set[str]:  # whole ones: a write in progress is a .tmp- file
        return {p.name for p in index.iterdir() if not p.name.startswith(".")} \
            if index.exists() else set()

    before = index_files()
    cp = host.client.backups.CreateCheckpoint(backup_pb2.CreateCheckpointRequest(
        vault_id=host.vaults["disk"], resource_ids=[big.id])).checkpoint
    [task_id] = cp.task_ids
    # Killed once an index checkpoint of what it uploaded is in storage: what
    # the storage holds, not how fast this machine is, decides the moment.
    wait_until(lambda: index_files() - before, timeout=120, interval=0.02,
               message="the backup has indexed part of the disk")
    host.agent.kill()
    host.agent.start()
    task = _wait_task(host.client, task_id)
    assert task.status == task_pb2.TASK_STATUS_FAILED
    assert "restarted" in task.error_info.message
    [backup_id] = cp.backup_ids
    first = host.client.backups.GetBackup(backup_pb2.GetBackupRequest(backup_id=backup_id))
    assert first.backup.status == ERROR
    again = _backup(host, "disk", "big")
    assert again.status == AVAILABLE
    assert again.stored_bytes < 600 * MiB  # what the killed run uploaded was reused
    out = tmp_path / "big-restored.img"
    task = _restore(host, again.id, target_path=str(out))
    assert task.status == task_pb2.TASK_STATUS_SUCCESS, task.error_info
    assert _sha(out) == _sha(host.files["images"] / "big.img")


def test_lost_catalog_is_rebuilt_from_storage_alone(
        tmp_path: Path, controller_factory: ControllerFactory,
        agent_factory: AgentFactory) -> None:
    host = _start(tmp_path, controller_factory, agent_factory)
    server = _backup(host, "server")
    tree = _backup(host, "turbo")
    storage = host.client.vaults.GetVault(vault_pb2.GetVaultRequest(
        vault_id=host.vaults["turbo"])).vault.storage_url
    server_storage = host.client.vaults.GetVault(vault_pb2.GetVaultRequest(
        vault_id=host.vaults["server"])).vault.storage_url
    # The operator of the fresh controller allows the old storage, and only it.
    fresh = controller_factory("fresh", extra_args=[
        *FAST, "--storage-roots", str(Path(storage).parent)])
    client = fresh.client()
    imported = client.vaults.ImportVaultStorage(vault_pb2.ImportVaultStorageRequest(
        storage_url=storage, name="recovered"))
    assert imported.imported_backups == 1
    assert imported.vault.id == host.vaults["turbo"]
    assert imported.vault.object_type == common_pb2.OBJECT_TYPE_TURBO
    listed = client.backups.ListBackups(backup_pb2.ListBackupsRequest(
        vault_id=imported.vault.id)).backups
    assert [b.id for b in listed] == [tree.id]
    assert listed[0].status == AVAILABLE
    files = client.backups.ListBackupFiles(backup_pb2.ListBackupFilesRequest(
        backup_id=tree.id, path="docs")).files
    assert {f.name for f in files} == {"a.bin", "deep", "mode.sh"}
    again = client.vaults.ImportVaultStorage(vault_pb2.ImportVaultStorageRequest(
        storage_url=server_storage))
    [restored] = client.backups.ListBackups(backup_pb2.ListBackupsRequest(
        vault_id=again.vault.id)).backups
    assert restored.id == server.id and len(restored.children) == 2
    with pytest.raises(grpc.RpcError) as err:
        client.vaults.ImportVaultStorage(vault_pb2.ImportVaultStorageRequest(
            storage_url=storage))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS


def test_directories_made_again_restore_exactly_through_the_running_agents_journal(
        tmp_path: Path, controller_factory: ControllerFactory,
        agent_factory: AgentFactory) -> None:
    """Issue 17's reduced case through the real agent: 300 directories
    deleted and made again with fewer files, while a hard link is made
    elsewhere on the same file system; the incremental uses the journal and
    restores no deleted file."""
    host = _start(tmp_path, controller_factory, agent_factory)
    share = host.files["share"]
    for i in range(300):
        (share / "many" / f"d{i:03}").mkdir(parents=True)
        for name in ("a.txt", "b.txt", "c.txt"):
            (share / "many" / f"d{i:03}" / name).write_text(f"{i} {name}\n")
    (tmp_path / "elsewhere").write_text("unrelated\n")
    _backup(host, "turbo")
    shutil.rmtree(share / "many")
    for i in range(300):
        (share / "many" / f"d{i:03}").mkdir(parents=True)
        for name in ("a.txt", "b.txt"):
            (share / "many" / f"d{i:03}" / name).write_text(f"new {i} {name}\n")
    os.link(tmp_path / "elsewhere", tmp_path / "elsewhere-too")
    second = _backup(host, "turbo")
    assert second.incremental
    assert second.extend_info.change_detection == (
        "journal" if _journal_works(share) else "walk")
    task = _restore(host, second.id, target_agent_id=host.agent_id,
                    target_path=str(tmp_path / "out"))
    assert task.status == task_pb2.TASK_STATUS_SUCCESS, task.error_info
    assert _tree(tmp_path / "out") == _tree(share)
    assert not list((tmp_path / "out").glob("many/*/c.txt"))
