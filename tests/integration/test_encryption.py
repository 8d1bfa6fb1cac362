"""Encrypted vaults end to end: real controller and agent processes, real storage.

A marker string written into disk images and files, and secret file names,
are found nowhere in an encrypted vault's storage (a local directory, and
S3 on SeaweedFS), while the same data in an unencrypted vault shows the
marker (so the search can fail). Tampering with packs and manifests makes
verify and restore fail naming the object, and restores write nothing
wrong. Disabling the key stops backups and restores, naming it; a lost
catalog is rebuilt on a fresh controller given the key's material.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from cbr.client import Client, error_from_rpc
from cbr.v1 import (
    agent_pb2,
    backup_pb2,
    common_pb2,
    key_pb2,
    protectable_pb2,
    task_pb2,
    vault_pb2,
)
from tests.integration.test_data_path import FAST, MiB, _sha, _sparse, _tree, _wait_task, _write_at
from tests.support.processes import (
    AgentFactory,
    AgentProcess,
    ControllerFactory,
    ControllerProcess,
    enroll,
    wait_until,
)
from tests.support.seaweed import SeaweedServer

pytestmark = pytest.mark.integration

MARKER = b"CBR-PLAINTEXT-MARKER-5d1f0c9e"
SECRET_DIR = "quarterly-payroll-dir-x7q2"
SECRET_FILE = "salaries-confidential-k93z.csv"
SUCCESS = task_pb2.TASK_STATUS_SUCCESS
FAILED = task_pb2.TASK_STATUS_FAILED


def _with_marker(rng: random.Random, size: int) -> bytes:
    """Random (incompressible) bytes with the marker inside, so an unencrypted
    vault stores the marker literally."""
    half = (size - len(MARKER)) // 2
    return rng.randbytes(half) + MARKER + rng.randbytes(size - half - len(MARKER))


def _files(root: Path, rng: random.Random) -> dict[str, Path]:
    images = root / "images"
    images.mkdir(parents=True)
    _sparse(images / "sys.img", 32 * MiB)
    _write_at(images / "sys.img", 0, _with_marker(rng, 3 * MiB))
    _write_at(images / "sys.img", 20 * MiB, MARKER * 1000)
    (images / "data.img").write_bytes(_with_marker(rng, 4 * MiB))
    # Four distinct random blocks: its data pack holds blobs of equal length.
    (images / "vol.img").write_bytes(rng.randbytes(3 * MiB) + _with_marker(rng, MiB))
    share = root / "share"
    (share / SECRET_DIR).mkdir(parents=True)
    (share / SECRET_DIR / SECRET_FILE).write_bytes(_with_marker(rng, 2 * MiB))
    (share / "note.txt").write_bytes(b"small file " + MARKER + b"\n")
    os.symlink(f"{SECRET_DIR}/{SECRET_FILE}", share / "link-to-secret")
    return {"images": images, "share": share}


def _agent_config(path: Path, controller: ControllerProcess, files: dict[str, Path],
                  state: Path) -> Path:
    images, share = files["images"], files["share"]
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

[[file_systems]]
name = "share"
path = "{share}"

[[file_systems]]
name = "share-plain"
path = "{share}"
""")
    return path


@dataclass
class Host:
    controller: ControllerProcess
    client: Client
    agent: AgentProcess
    files: dict[str, Path]
    protectables: dict[str, Any]
    key_id: str
    vaults: dict[str, Any]
    """server, disk, turbo: encrypted with key_id; plain: the control (share-plain)."""


def _start(tmp_path: Path, controller_factory: ControllerFactory, agent_factory: AgentFactory,
           *, extra_args: list[str] | None = None, env: dict[str, str] | None = None,
           material: bytes = b"") -> Host:
    controller = controller_factory("controller", extra_args=[*FAST, *(extra_args or [])],
                                    env=env)
    client = controller.client()
    files = _files(tmp_path / "host", random.Random(11))
    config = _agent_config(tmp_path / "agent.toml", controller, files, tmp_path / "state")
    token = client.agents.CreateEnrollmentToken(agent_pb2.CreateEnrollmentTokenRequest()).token
    done = enroll(config, token)
    assert done.returncode == 0, done.stderr
    agent = agent_factory(config, "agent")
    agent.wait_for_log("connected to")

    def found() -> dict[str, Any]:
        listed = client.protectables.ListProtectables(
            protectable_pb2.ListProtectablesRequest()).protectables
        return {p.name: p for p in listed}

    wait_until(lambda: len(found()) == 4, message="protectables reported")
    protectables = found()
    key = client.keys.CreateKey(key_pb2.CreateKeyRequest(alias="host-key",
                                                         key_material=material)).key
    vaults = {}
    for kind, obj, members in (("server", common_pb2.OBJECT_TYPE_SERVER, ["web-1"]),
                               ("disk", common_pb2.OBJECT_TYPE_DISK, ["vol-1"]),
                               ("turbo", common_pb2.OBJECT_TYPE_TURBO, ["share"]),
                               ("plain", common_pb2.OBJECT_TYPE_TURBO, ["share-plain"])):
        encrypted = kind != "plain"
        vaults[kind] = client.vaults.CreateVault(vault_pb2.CreateVaultRequest(
            name=f"v-{kind}", object_type=obj, size_gb=100, encrypted=encrypted,
            kms_key_id=key.id if encrypted else "",
            resources=[vault_pb2.ResourceSpec(id=protectables[m].id) for m in members])).vault
    return Host(controller, client, agent, files, protectables, key.id, vaults)


def _backup(host: Host, kind: str) -> Any:
    cp = host.client.backups.CreateCheckpoint(backup_pb2.CreateCheckpointRequest(
        vault_id=host.vaults[kind].id)).checkpoint
    assert list(cp.skipped_resources) == []
    for task_id in cp.task_ids:
        task = _wait_task(host.client, task_id)
        assert task.status == SUCCESS, task.error_info
    [backup_id] = cp.backup_ids
    return host.client.backups.GetBackup(backup_pb2.GetBackupRequest(backup_id=backup_id)).backup


def _restore(host: Host, backup_id: str, **kw: Any) -> Any:
    task_id = host.client.backups.RestoreBackup(backup_pb2.RestoreBackupRequest(
        backup_id=backup_id, **kw)).task_id
    return _wait_task(host.client, task_id)


def _verify(host: Host, kind: str) -> Any:
    return _wait_task(host.client, host.client.vaults.VerifyVault(vault_pb2.VerifyVaultRequest(
        vault_id=host.vaults[kind].id, read_data=True)).task_id)


def _local_objects(root: Path) -> Iterator[tuple[str, bytes]]:
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            yield str(path.relative_to(root)), path.read_bytes()


def _plaintext_in(objects: Iterator[tuple[str, bytes]]) -> list[str]:
    """Objects whose name or bytes show the marker or a secret file name."""
    needles = [MARKER, SECRET_DIR.encode(), SECRET_FILE.encode()]
    found = []
    for name, data in objects:
        if any(n.decode() in name for n in needles) or any(n in data for n in needles):
            found.append(name)
    return found


def _back_up_everything_twice(host: Host) -> dict[str, Any]:
    first = {kind: _backup(host, kind) for kind in ("server", "disk", "turbo", "plain")}
    images, share = host.files["images"], host.files["share"]
    _write_at(images / "sys.img", 9 * MiB, MARKER + os.urandom(4096))
    (share / SECRET_DIR / "added-later.bin").write_bytes(MARKER * 3 + os.urandom(9000))
    second = {kind: _backup(host, kind) for kind in ("server", "turbo")}
    assert second["server"].incremental and second["turbo"].incremental
    # Deduplication works on sealed chunks: only the changed block is stored again.
    assert sum(c.stored_bytes for c in second["server"].children) < 2 * MiB
    assert second["turbo"].stored_bytes < MiB
    assert all(b.extend_info.encrypted for b in (*first.values(), *second.values())
               if b.vault_id != host.vaults["plain"].id)
    return {**{f"{k}1": v for k, v in first.items()}, **{f"{k}2": v for k, v in second.items()}}


def _restores_are_identical(host: Host, backups: dict[str, Any], out: Path) -> None:
    images, share = host.files["images"], host.files["share"]
    with pytest.raises(grpc.RpcError) as err:
        host.client.backups.RestoreBackup(backup_pb2.RestoreBackupRequest(
            backup_id=backups["server2"].id, target_path=str(out / "refused")))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "encrypted backups can only create encrypted servers or file systems" in \
        err.value.details().lower()
    task = _restore(host, backups["server2"].id, target_path=str(out / "server"),
                    encrypted=True)
    assert task.status == SUCCESS, task.error_info
    assert _sha(out / "server" / "system.img") == _sha(images / "sys.img")
    assert _sha(out / "server" / "data.img") == _sha(images / "data.img")
    task = _restore(host, backups["disk1"].id, target_path=str(out / "vol.img"), encrypted=True)
    assert task.status == SUCCESS, task.error_info
    assert _sha(out / "vol.img") == _sha(images / "vol.img")
    task = _restore(host, backups["turbo2"].id, target_path=str(out / "share"), encrypted=True)
    assert task.status == SUCCESS, task.error_info
    assert _tree(out / "share") == _tree(share)
    files = host.client.backups.ListBackupFiles(backup_pb2.ListBackupFilesRequest(
        backup_id=backups["turbo1"].id, path=SECRET_DIR)).files
    assert [f.name for f in files] == [SECRET_FILE]


def test_no_marker_or_file_name_reaches_encrypted_local_storage(
        tmp_path: Path, controller_factory: ControllerFactory,
        agent_factory: AgentFactory) -> None:
    host = _start(tmp_path, controller_factory, agent_factory)
    backups = _back_up_everything_twice(host)
    roots = {kind: Path(v.storage_url) for kind, v in host.vaults.items()}
    for kind in ("server", "disk", "turbo"):
        assert (roots[kind] / "config").exists()
        assert _plaintext_in(_local_objects(roots[kind])) == [], kind
    # The control: the same file system in an unencrypted vault shows the marker.
    assert _plaintext_in(_local_objects(roots["plain"])) != []
    # Nor does the controller's database hold key material or the marker.
    database = (host.controller.data_dir / "controller.db").read_bytes()
    assert MARKER not in database
    _restores_are_identical(host, backups, tmp_path / "out")
    # Dedup, GC and verify keep working: delete the first generation, prune, verify.
    assert _verify(host, "server").status == SUCCESS
    deleted = _wait_task(host.client, host.client.backups.DeleteBackup(
        backup_pb2.DeleteBackupRequest(backup_id=backups["server1"].id)).task_id)
    assert deleted.status == SUCCESS, deleted.error_info
    assert _verify(host, "server").status == SUCCESS
    task = _restore(host, backups["server2"].id, target_path=str(tmp_path / "again"),
                    encrypted=True)
    assert task.status == SUCCESS, task.error_info
    assert _sha(tmp_path / "again" / "system.img") == _sha(host.files["images"] / "sys.img")


def test_no_marker_or_file_name_reaches_encrypted_s3_storage(
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
    backups = _back_up_everything_twice(host)
    s3 = seaweed.client()

    def objects(vault_id: str) -> Iterator[tuple[str, bytes]]:
        pages = s3.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=f"vaults/{vault_id}/")
        for page in pages:
            for item in page.get("Contents", []):
                body = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
                yield item["Key"], body

    for kind in ("server", "disk", "turbo"):
        listed = list(objects(host.vaults[kind].id))
        assert any(name.endswith("/config") for name, _ in listed)
        assert _plaintext_in(iter(listed)) == [], kind
    assert _plaintext_in(objects(host.vaults["plain"].id)) != []
    _restores_are_identical(host, backups, tmp_path / "out")
    assert _verify(host, "turbo").status == SUCCESS


def _no_wrong_bytes(restored: Path, source: Path) -> None:
    """A failed restore may have written some blocks; each one written is right."""
    if not restored.exists():
        return
    got, want = restored.read_bytes(), source.read_bytes()
    for offset in range(0, len(got), MiB):
        block = got[offset:offset + MiB]
        assert block == want[offset:offset + MiB] or block.count(0) == len(block), offset


def test_tampered_packs_and_manifests_fail_verify_and_restore_naming_the_object(
        tmp_path: Path, controller_factory: ControllerFactory,
        agent_factory: AgentFactory) -> None:
    host = _start(tmp_path, controller_factory, agent_factory)
    vol = host.files["images"] / "vol.img"
    old = _backup(host, "disk")
    _write_at(vol, 0, os.urandom(MiB))
    new = _backup(host, "disk")
    root = Path(host.vaults["disk"].storage_url)
    out = tmp_path / "out"
    out.mkdir()

    # A replayed old manifest under the new backup's name.
    new_manifest = root / "manifests" / new.id
    kept = new_manifest.read_bytes()
    new_manifest.write_bytes((root / "manifests" / old.id).read_bytes())
    task = _restore(host, new.id, target_path=str(out / "replayed.img"), encrypted=True)
    assert task.status == FAILED
    assert f"manifests/{new.id}" in task.error_info.message
    assert "replayed" in task.error_info.message
    assert not (out / "replayed.img").exists()
    verify = _verify(host, "disk")
    assert verify.status == FAILED and new.id in verify.error_info.message
    assert "replayed" in verify.error_info.message
    new_manifest.write_bytes(kept)
    assert _verify(host, "disk").status == SUCCESS

    # Two chunks of equal length swapped inside the largest data pack.
    packs = sorted((p for p in (root / "data").rglob("*") if p.is_file()),
                   key=lambda p: p.stat().st_size)
    pack = packs[-1]
    original = pack.read_bytes()
    length = MiB + 28  # a random 1 MiB block, stored uncompressed and sealed
    assert len(original) > 2 * length
    swapped = original[length:2 * length] + original[:length] + original[2 * length:]
    pack.write_bytes(swapped)
    verify = _verify(host, "disk")
    assert verify.status == FAILED and new.id in verify.error_info.message
    problems = verify.extra_info["first_problems"]
    assert f"pack {pack.name}" in problems and "chunk " in problems
    assert "authentication failed" in problems
    task = _restore(host, new.id, target_path=str(out / "swapped.img"), encrypted=True)
    assert task.status == FAILED and task.error_info.code == "BackupService.0505"
    assert pack.name in task.error_info.message
    _no_wrong_bytes(out / "swapped.img", vol)

    # One flipped bit, in a block only the old backup (whose pack this is) still has.
    old_vol = out / "old-vol.img"
    pack.write_bytes(original)
    task = _restore(host, old.id, target_path=str(old_vol), encrypted=True)
    assert task.status == SUCCESS, task.error_info
    flipped = bytearray(original)
    flipped[length // 2] ^= 0x10
    pack.write_bytes(bytes(flipped))
    verify = _verify(host, "disk")
    assert verify.status == FAILED and old.id in verify.error_info.message
    assert f"pack {pack.name}" in verify.extra_info["first_problems"]
    task = _restore(host, old.id, target_path=str(out / "flipped.img"), encrypted=True)
    assert task.status == FAILED and pack.name in task.error_info.message
    _no_wrong_bytes(out / "flipped.img", old_vol)

    pack.write_bytes(original)
    task = _restore(host, new.id, target_path=str(out / "good.img"), encrypted=True)
    assert task.status == SUCCESS, task.error_info
    assert _sha(out / "good.img") == _sha(vol)


def test_a_disabled_key_stops_backups_and_restores_naming_it_until_enabled(
        tmp_path: Path, controller_factory: ControllerFactory,
        agent_factory: AgentFactory) -> None:
    host = _start(tmp_path, controller_factory, agent_factory)
    first = _backup(host, "disk")
    host.client.keys.DisableKey(key_pb2.DisableKeyRequest(key_id=host.key_id))
    for call in (
        lambda: host.client.backups.CreateCheckpoint(backup_pb2.CreateCheckpointRequest(
            vault_id=host.vaults["disk"].id)),
        lambda: host.client.backups.RestoreBackup(backup_pb2.RestoreBackupRequest(
            backup_id=first.id, target_path=str(tmp_path / "x.img"), encrypted=True)),
    ):
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert host.key_id in err.value.details() and "disabled" in err.value.details()
    verify = _verify(host, "disk")
    assert verify.status == FAILED and host.key_id in verify.error_info.message
    host.client.keys.EnableKey(key_pb2.EnableKeyRequest(key_id=host.key_id))
    again = _backup(host, "disk")
    assert again.incremental
    task = _restore(host, again.id, target_path=str(tmp_path / "vol.img"), encrypted=True)
    assert task.status == SUCCESS, task.error_info
    assert _sha(tmp_path / "vol.img") == _sha(host.files["images"] / "vol.img")


def test_encrypted_storage_is_imported_on_a_fresh_controller_given_the_key_material(
        tmp_path: Path, controller_factory: ControllerFactory,
        agent_factory: AgentFactory) -> None:
    material = os.urandom(32)
    host = _start(tmp_path, controller_factory, agent_factory, material=material)
    tree = _backup(host, "turbo")
    url = host.vaults["turbo"].storage_url
    fresh = controller_factory("fresh", extra_args=[*FAST, "--storage-roots",
                                                    str(Path(url).parent)])
    client = fresh.client()
    with pytest.raises(grpc.RpcError) as err:
        client.vaults.ImportVaultStorage(vault_pb2.ImportVaultStorageRequest(storage_url=url))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "kms_key_id" in err.value.details()
    wrong = client.keys.CreateKey(key_pb2.CreateKeyRequest(alias="wrong")).key
    with pytest.raises(grpc.RpcError) as err:
        client.vaults.ImportVaultStorage(vault_pb2.ImportVaultStorageRequest(
            storage_url=url, kms_key_id=wrong.id))
    # A key that cannot unwrap the vault's keys is 7002, as in every process.
    refused = error_from_rpc(err.value)
    assert refused is not None and refused.code == "BackupService.7002", err.value.details()
    same = client.keys.CreateKey(key_pb2.CreateKeyRequest(alias="restored",
                                                          key_material=material)).key
    assert same.origin == "external"
    imported = client.vaults.ImportVaultStorage(vault_pb2.ImportVaultStorageRequest(
        storage_url=url, kms_key_id=same.id))
    assert imported.imported_backups == 1
    assert imported.vault.encrypted and imported.vault.kms_key_id == same.id
    files = client.backups.ListBackupFiles(backup_pb2.ListBackupFilesRequest(
        backup_id=tree.id, path=SECRET_DIR)).files
    assert [f.name for f in files] == [SECRET_FILE]
