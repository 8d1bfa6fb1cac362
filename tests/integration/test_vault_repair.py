"""Issue 19's acceptance, driven as a user would through a real controller and
agent: one flipped byte in a pack, an index file and a manifest; verify names
exactly the damaged backups; a dry run changes nothing; repair keeps every
backup that was not itself damaged restorable, marks the damaged ones, and the
next backup heals those it can; vault usage is what the storage holds."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from cbr.v1 import agent_pb2, backup_pb2, common_pb2, key_pb2, task_pb2, vault_pb2
from tests.integration.test_data_path import (
    AVAILABLE,
    ERROR,
    Host,
    _backup,
    _restore,
    _sha,
    _start,
    _task,
    _tree,
    _wait_task,
)
from tests.support.processes import AgentFactory, ControllerFactory, wait_until

pytestmark = pytest.mark.integration


def _storage(host: Host, kind: str) -> Path:
    return Path(host.client.vaults.GetVault(vault_pb2.GetVaultRequest(
        vault_id=host.vaults[kind])).vault.storage_url)


def _flip(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))


def _files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and "locks" not in p.parts}


def _run(host: Host, call: str, kind: str, **kw: object) -> task_pb2.Task:
    method = getattr(host.client.vaults, call)
    request = getattr(vault_pb2, f"{call}Request")(vault_id=host.vaults[kind], **kw)
    return _wait_task(host.client, method(request).task_id, timeout=120)


def _status(host: Host, backup_id: str) -> backup_pb2.Backup:
    return host.client.backups.GetBackup(backup_pb2.GetBackupRequest(
        backup_id=backup_id)).backup


def _encrypted_turbo_vault(host: Host) -> None:
    """Moves the file system into an encrypted vault of its own."""
    share = host.protectables["share"].id
    host.client.vaults.RemoveVaultResources(vault_pb2.RemoveVaultResourcesRequest(
        vault_id=host.vaults["turbo"], resource_ids=[share]))
    key = host.client.keys.CreateKey(key_pb2.CreateKeyRequest(alias="repair-key")).key
    host.vaults["turbo"] = host.client.vaults.CreateVault(vault_pb2.CreateVaultRequest(
        name="v-turbo-sealed", object_type=common_pb2.OBJECT_TYPE_TURBO, size_gb=100,
        encrypted=True, kms_key_id=key.id,
        resources=[vault_pb2.ResourceSpec(id=share)])).vault.id


@pytest.mark.parametrize("sealed", [False, True], ids=["plain", "encrypted"])
def test_repair_contains_damage_marks_the_damaged_backups_and_the_next_backup_heals(
        tmp_path: Path, controller_factory: ControllerFactory,
        agent_factory: AgentFactory, sealed: bool) -> None:
    host = _start(tmp_path, controller_factory, agent_factory)
    if sealed:
        _encrypted_turbo_vault(host)
    share = host.files["share"]
    t1, t2 = _backup(host, "turbo"), _backup(host, "turbo")
    d1 = _backup(host, "disk", "vol-1")
    d2 = _backup(host, "disk", "vol-1")

    # A byte flipped in the file system vault's biggest pack (file data both
    # of its backups share), in one of the disk vault's index files, and in
    # the manifest of the disk vault's first backup.
    turbo = _storage(host, "turbo")
    pack = max((p for p in (turbo / "data").rglob("*") if p.is_file()),
               key=lambda p: p.stat().st_size)
    _flip(pack, pack.stat().st_size // 3)
    disk = _storage(host, "disk")
    _flip(sorted((disk / "index").iterdir())[0], 50)
    _flip(disk / "manifests" / d1.id, 30)

    checked = _run(host, "VerifyVault", "turbo", read_data=True)
    assert checked.status == task_pb2.TASK_STATUS_FAILED
    assert sorted(checked.extra_info["damaged_backups"].split(",")) == sorted([t1.id, t2.id])
    assert "cbr vault repair" in checked.error_info.message
    checked = _run(host, "VerifyVault", "disk", read_data=True)
    assert checked.extra_info["damaged_backups"] == d1.id
    assert "rewrites it from those headers" in checked.extra_info["first_problems"]

    before = _files(turbo)
    planned = _run(host, "RepairVault", "turbo", dry_run=True)
    assert planned.status == task_pb2.TASK_STATUS_SUCCESS, planned.error_info
    assert _files(turbo) == before  # a dry run writes nothing
    assert sorted(planned.extra_info["marked_damaged"].split(",")) == sorted([t1.id, t2.id])
    assert _status(host, t1.id).status == AVAILABLE  # nor marks anything

    for kind, damaged in (("turbo", {t1.id, t2.id}), ("disk", {d1.id})):
        done = _run(host, "RepairVault", kind)
        assert done.status == task_pb2.TASK_STATUS_SUCCESS, done.error_info
        assert set(done.extra_info["marked_damaged"].split(",")) == damaged
        for backup_id in damaged:
            backup = _status(host, backup_id)
            assert backup.status == ERROR and backup.extend_info.damaged
    assert int(_run(host, "RepairVault", "disk").extra_info["damaged_pack_count"]) == 0

    # What was not itself damaged restores identically; a damaged backup is
    # refused, saying why.
    out = tmp_path / "restores"
    assert _restore(host, d2.id, target_path=str(out / "vol.img")).status == \
        task_pb2.TASK_STATUS_SUCCESS
    assert _sha(out / "vol.img") == _sha(host.files["images"] / "vol.img")
    with pytest.raises(Exception, match="damaged"):
        _restore(host, t1.id, target_path=str(out / "t1"), encrypted=sealed)

    # The vault is clean again: verify names exactly the damaged backups, as
    # known (a repair marked them), and finds nothing else wrong.
    after = _run(host, "VerifyVault", "turbo", read_data=True)
    assert after.status == task_pb2.TASK_STATUS_SUCCESS, after.error_info
    assert sorted(after.extra_info["known_damaged_backups"].split(",")) == \
        sorted([t1.id, t2.id])
    assert "chunk is in no index" in after.extra_info["first_problems"]
    after = _run(host, "VerifyVault", "disk", read_data=True)
    assert after.status == task_pb2.TASK_STATUS_SUCCESS, after.error_info
    assert after.extra_info["known_damaged_backups"] == d1.id

    # The share still holds the lost data: its next backup stores it again
    # (a full one: the damaged backups are no parent), and repair finds the
    # damaged backups whole and gives them back.
    t3 = _backup(host, "turbo")
    assert not t3.incremental
    healed = _run(host, "RepairVault", "turbo")
    assert set(healed.extra_info["marked_whole_again"].split(",")) == {t1.id, t2.id}
    assert _run(host, "VerifyVault", "turbo", read_data=True).status == \
        task_pb2.TASK_STATUS_SUCCESS
    for backup_id in (t1.id, t2.id, t3.id):
        assert _status(host, backup_id).status == AVAILABLE
        task = _restore(host, backup_id, target_path=str(out / backup_id), encrypted=sealed)
        assert task.status == task_pb2.TASK_STATUS_SUCCESS, task.error_info
        assert _tree(out / backup_id) == _tree(share)

    # A damaged manifest heals by nothing: deleting that backup leaves the
    # vault clean.
    deleted = _wait_task(host.client, host.client.backups.DeleteBackup(
        backup_pb2.DeleteBackupRequest(backup_id=d1.id)).task_id)
    assert deleted.status == task_pb2.TASK_STATUS_SUCCESS, deleted.error_info
    assert _run(host, "VerifyVault", "disk", read_data=True).status == \
        task_pb2.TASK_STATUS_SUCCESS

    # Usage is what the storage holds, a killed writer's leftovers included.
    (disk / "data" / ".tmp-killed").write_bytes(b"x" * 1000)
    used = int(_run(host, "VerifyVault", "disk").extra_info["vault_used_bytes"])
    assert used == sum(p.stat().st_size for p in disk.rglob("*") if p.is_file())
    vault = host.client.vaults.GetVault(vault_pb2.GetVaultRequest(
        vault_id=host.vaults["disk"])).vault
    assert vault.used_bytes == used


def test_a_controller_killed_mid_repair_finishes_it_after_its_restart(
        tmp_path: Path, controller_factory: ControllerFactory,
        agent_factory: AgentFactory) -> None:
    host = _start(tmp_path, controller_factory, agent_factory, big_mib=256)
    big = _backup(host, "disk", "big")
    disk = _storage(host, "disk")
    pack = max((p for p in (disk / "data").rglob("*") if p.is_file()),
               key=lambda p: p.stat().st_size)  # one of the big disk's
    small = _backup(host, "disk", "vol-1")
    _flip(pack, 1000)
    task_id = host.client.vaults.RepairVault(vault_pb2.RepairVaultRequest(
        vault_id=host.vaults["disk"])).task_id
    wait_until(lambda: _task(host.client, task_id).status != task_pb2.TASK_STATUS_WAITING,
               timeout=60, interval=0.02, message="repair starts")
    host.controller.kill()  # mid-repair, or just after: either way it must end well
    host.controller.start()
    host.client = host.controller.client()
    done = _wait_task(host.client, task_id, timeout=120)
    assert done.status == task_pb2.TASK_STATUS_SUCCESS, done.error_info
    again = _run(host, "RepairVault", "disk")  # nothing left to do, and no lock in the way
    assert again.status == task_pb2.TASK_STATUS_SUCCESS, again.error_info
    assert int(again.extra_info["damaged_pack_count"]) == 0
    assert _status(host, big.id).status == ERROR
    assert _status(host, small.id).status == AVAILABLE
    assert _run(host, "VerifyVault", "disk", read_data=True).status == \
        task_pb2.TASK_STATUS_SUCCESS
    out = tmp_path / "restores" / "vol.img"
    wait_until(lambda: host.client.agents.GetAgent(agent_pb2.GetAgentRequest(
        agent_id=host.agent_id)).agent.status == agent_pb2.AGENT_STATUS_ONLINE,
        timeout=30, message="the agent is back")
    assert _restore(host, small.id, target_path=str(out)).status == \
        task_pb2.TASK_STATUS_SUCCESS
    assert _sha(out) == _sha(host.files["images"] / "vol.img")


def test_repair_while_a_backup_runs_loses_nothing(
        tmp_path: Path, controller_factory: ControllerFactory,
        agent_factory: AgentFactory) -> None:
    host = _start(tmp_path, controller_factory, agent_factory, big_mib=384)
    first = _backup(host, "disk", "vol-1")
    cp = host.client.backups.CreateCheckpoint(backup_pb2.CreateCheckpointRequest(
        vault_id=host.vaults["disk"], resource_ids=[host.protectables["big"].id])).checkpoint
    [task_id] = cp.task_ids
    final = (task_pb2.TASK_STATUS_SUCCESS, task_pb2.TASK_STATUS_FAILED)
    repaired = []
    while not repaired or _task(host.client, task_id).status not in final:
        done = _run(host, "RepairVault", "disk")  # again and again while it runs
        assert done.status == task_pb2.TASK_STATUS_SUCCESS, done.error_info
        assert done.extra_info["damaged_backups"] == ""
        repaired.append(done)
    backup = _wait_task(host.client, task_id, timeout=240)
    assert backup.status == task_pb2.TASK_STATUS_SUCCESS, backup.error_info
    # At least one repair ran while the backup did (by the tasks' own times).
    assert any(r.started_at.ToDatetime() <= backup.ended_at.ToDatetime()
               and r.ended_at.ToDatetime() >= backup.started_at.ToDatetime()
               for r in repaired), "no repair overlapped the backup"
    assert _run(host, "VerifyVault", "disk", read_data=True).status == \
        task_pb2.TASK_STATUS_SUCCESS
    out = tmp_path / "restores"
    for backup_id, name in ((cp.backup_ids[0], "big.img"), (first.id, "vol.img")):
        task = _restore(host, backup_id, target_path=str(out / name))
        assert task.status == task_pb2.TASK_STATUS_SUCCESS, task.error_info
        assert _sha(out / name) == _sha(host.files["images"] / name)
