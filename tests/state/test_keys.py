"""The key service's rules and encrypted vaults in the catalog, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from cbr import errors
from controller import jobs
from controller.agents.hub import AgentHub
from controller.app import App
from controller.persistence.models import Account, Backup, Key, Task, Vault
from controller.services import keys, restores, vaults
from tests.state.conftest import NOW, Inventory
from tests.state.test_runs import _checkpoint, _succeed
from tests.state.test_vaults import add, make_vault


def _key(app: App, project: str, alias: str = "k1") -> str:
    with app.db.begin() as s:
        return keys.create_key(s, app.root_key, project, alias=alias, description="",
                               material=b"", now=NOW).key.id


def _other_account(app: App, name: str = "other") -> str:
    with app.db.begin() as s:
        account = Account(name=name, created_at=NOW)
        s.add(account)
        s.flush()
        return account.id


def _state(app: App, project: str, key_id: str, now: dt.datetime = NOW) -> str:
    with app.db.begin() as s:
        return keys.get_key(s, project, key_id, now).state


def test_key_material_is_stored_sealed_and_unseals_only_for_its_key(
        app: App, project: str) -> None:
    key_id = _key(app, project)
    with app.db.begin() as s:
        key = s.get(Key, key_id)
        assert key is not None and key.material_sealed is not None
        material = app.root_key.unseal(key.material_sealed, key_id=key.id, project_id=project)
        assert len(material) == 32 and material not in key.material_sealed
        with pytest.raises(Exception, match="does not unseal"):
            app.root_key.unseal(key.material_sealed, key_id="another", project_id=project)


def test_bad_key_requests_are_refused_with_9900_or_duplicate(app: App, project: str) -> None:
    _key(app, project, "same")
    with app.db.begin() as s:
        with pytest.raises(errors.AlreadyExists):
            keys.create_key(s, app.root_key, project, alias="same", description="",
                            material=b"", now=NOW)
        with pytest.raises(errors.InvalidParameter, match="alias"):
            keys.create_key(s, app.root_key, project, alias="bad alias!", description="",
                            material=b"", now=NOW)
        with pytest.raises(errors.InvalidParameter, match="32 bytes"):
            keys.create_key(s, app.root_key, project, alias="short", description="",
                            material=b"x" * 16, now=NOW)


def test_disabled_key_refuses_backups_naming_the_key_until_enabled(
        app: App, project: str, inventory: Inventory) -> None:
    key_id = _key(app, project)
    vol = inventory.add("vol", "disk")
    vid = make_vault(app, project, object_type="disk", encrypted=True, kms_key_id=key_id)
    add(app, project, vid, vol)
    with app.db.begin() as s:
        keys.disable_key(s, project, key_id, NOW)
    with pytest.raises(errors.KeyNotUsable, match=f"k1 \\({key_id}\\) is disabled"):
        _checkpoint(app, project, vid, {inventory.agent_id})
    with app.db.begin() as s:
        keys.enable_key(s, project, key_id, NOW)
    _, [dispatch] = _checkpoint(app, project, vid, {inventory.agent_id})
    with app.db.begin() as s:
        task = s.get(Task, dispatch.task_id)
        assert task is not None and "storage" not in task.command["backup"]


def test_scheduled_deletion_refuses_use_at_once_and_destroys_the_key_after_the_wait(
        app: App, project: str, inventory: Inventory) -> None:
    key_id = _key(app, project)
    vol = inventory.add("vol", "disk")
    vid = make_vault(app, project, object_type="disk", encrypted=True, kms_key_id=key_id)
    add(app, project, vid, vol)
    with app.db.begin() as s:
        for days in (6, 31):
            with pytest.raises(errors.InvalidParameter, match="pending_days"):
                keys.schedule_deletion(s, project, key_id, days, NOW)
        view = keys.schedule_deletion(s, project, key_id, 7, NOW)
        assert view.state == "pending_deletion"
        assert view.key.deletion_at == NOW + dt.timedelta(days=7)
    with pytest.raises(errors.KeyNotUsable, match="pending_deletion"):
        _checkpoint(app, project, vid, {inventory.agent_id})
    with app.db.begin() as s:
        assert keys.cancel_deletion(s, project, key_id, NOW).state == "disabled"
        keys.enable_key(s, project, key_id, NOW)
        keys.schedule_deletion(s, project, key_id, 7, NOW)
    later = NOW + dt.timedelta(days=7, seconds=1)
    assert _state(app, project, key_id, NOW + dt.timedelta(days=6)) == "pending_deletion"
    assert _state(app, project, key_id, later) == "deleted"
    with app.db.begin() as s, pytest.raises(errors.KeyStateIllegal, match="deleted"):
        keys.cancel_deletion(s, project, key_id, later)
    with app.db.begin() as s:
        key = s.get(Key, key_id)
        assert key is not None and key.state == "deleted" and key.material_sealed is None
        vault = s.get(Vault, vid)
        assert vault is not None
        with pytest.raises(errors.KeyNotUsable, match="deleted"):
            keys.check_vault_key(s, vault, later)


def test_a_shared_in_key_is_listed_usable_for_backup_vaults_but_not_manageable(
        app: App, project: str) -> None:
    key_id = _key(app, project)
    other = _other_account(app)
    with app.db.begin() as s:
        view = keys.share_key(s, project, key_id, other, NOW)
        assert view.shared_with == [other] and not view.shared_in
        with pytest.raises(errors.AlreadyExists):
            keys.share_key(s, project, key_id, other, NOW)
    with app.db.begin() as s:
        listed, _token, total = keys.list_keys(s, other, "", 0, "", NOW)
        assert total == 1 and listed[0].shared_in and listed[0].shared_with == []
        with pytest.raises(errors.PermissionDenied, match="only its owner"):
            keys.disable_key(s, other, key_id, NOW)
    vid = make_vault(app, other, name="b", encrypted=True, kms_key_id=key_id)
    with app.db.begin() as s, pytest.raises(errors.SharedKeyNotAllowed,
                                            match="replication vault"):
        vaults.create_vault(s, other, "region-1", vaults.VaultSpec(
            name="r", object_type="server", protect_type="replication", size_gb=10,
            encrypted=True, kms_key_id=key_id), NOW)
    with app.db.begin() as s:
        keys.unshare_key(s, project, key_id, other, NOW)
    with app.db.begin() as s:
        vault = s.get(Vault, vid)
        assert vault is not None
        with pytest.raises(errors.KeyNotUsable, match="no longer shared"):
            keys.check_vault_key(s, vault, NOW)
        with pytest.raises(errors.KeyNotFound):
            keys.get_key(s, other, key_id, NOW)


def test_a_replication_vault_may_use_an_owned_key(app: App, project: str) -> None:
    key_id = _key(app, project)
    vid = make_vault(app, project, name="r", protect_type="replication", encrypted=True,
                     kms_key_id=key_id)
    with app.db.begin() as s:
        vault = s.get(Vault, vid)
        assert vault is not None and vault.encrypted and vault.kms_key_id == key_id


def test_vault_encryption_cannot_change_after_creation(app: App, project: str) -> None:
    key_id = _key(app, project)
    vid = make_vault(app, project)
    with app.db.begin() as s:
        for change in ({"encrypted": True}, {"kms_key_id": key_id}):
            with pytest.raises(errors.VaultEncryptionImmutable, match="cannot change"):
                vaults.update_vault(s, project, vid, change, NOW)
        with pytest.raises(errors.InvalidParameter, match="set encrypted too"):
            vaults.create_vault(s, project, "region-1", vaults.VaultSpec(
                name="x", object_type="disk", size_gb=1, kms_key_id=key_id), NOW)
        with pytest.raises(errors.KeyNotFound):
            vaults.create_vault(s, project, "region-1", vaults.VaultSpec(
                name="y", object_type="disk", size_gb=1, encrypted=True,
                kms_key_id="nope"), NOW)


def test_encrypted_backups_restore_only_into_encrypted_targets(
        app: App, project: str, inventory: Inventory) -> None:
    key_id = _key(app, project)
    vol, plain, sealed = (inventory.add(n, "disk") for n in ("vol", "plain", "sealed"))
    vid = make_vault(app, project, object_type="disk", encrypted=True, kms_key_id=key_id)
    add(app, project, vid, vol, sealed)
    plain_vault = make_vault(app, project, name="p", object_type="disk")
    add(app, project, plain_vault, plain)
    _, [d] = _checkpoint(app, project, vid, {inventory.agent_id}, resource_ids=[vol])
    _succeed(app, d.task_id)
    with app.db.begin() as s:
        task = s.get(Task, d.task_id)
        assert task is not None
        backup_id = str(task.extra_info["backup_id"])
    online = {inventory.agent_id}
    with app.db.begin() as s:
        with pytest.raises(errors.EncryptedRestoreTarget,
                           match="can only create encrypted servers or file systems"):
            restores.create_restore(s, project, restores.RestoreRequest(
                backup_id, target_path="/restore/vol.img"), NOW, online)
        with pytest.raises(errors.EncryptedRestoreTarget, match="not protected by an encrypted"):
            restores.create_restore(s, project, restores.RestoreRequest(
                backup_id, target_resource_id=plain), NOW, online)
    with app.db.begin() as s:
        restores.create_restore(s, project, restores.RestoreRequest(
            backup_id, target_path="/restore/vol.img", encrypted=True), NOW, online)


def test_a_command_carries_the_vault_keys_only_when_sent_and_a_disabled_key_fails_it(
        app: App, project: str, inventory: Inventory, tmp_path: Path) -> None:
    hub = AgentHub(app)
    jobs.install(hub, app)
    key_id = _key(app, project)
    vol = inventory.add("vol", "disk")
    vid = make_vault(app, project, object_type="disk", encrypted=True, kms_key_id=key_id)
    with app.db.begin() as s:
        vault = s.get(Vault, vid)
        assert vault is not None
        vault.storage_url = str(tmp_path / "vault")
        app.storage.init_vault(vault.storage_url, vid, NOW,
                               keys.vault_key(s, app.root_key, vault, NOW))
    add(app, project, vid, vol, inventory.add("vol2", "disk"))
    _, [first, second] = _checkpoint(app, project, vid, {inventory.agent_id})
    with app.db.begin() as s:
        task = s.get(Task, first.task_id)
        assert task is not None
        command = hub._command_or_fail(s, task, NOW)
        assert command is not None
        access = command.backup.storage
        assert access.encrypted and {k.purpose for k in access.keys} == {"chunk-id", "data"}
        assert all(len(k.key) == 32 and k.vault_id == vid for k in access.keys)
        assert "storage" not in task.command["backup"]  # never in the task row
        keys.disable_key(s, project, key_id, NOW)
    with app.db.begin() as s:
        task = s.get(Task, second.task_id)
        assert task is not None
        assert hub._command_or_fail(s, task, NOW) is None
    with app.db.begin() as s:
        task = s.get(Task, second.task_id)
        assert task is not None and task.status == "failed"
        assert task.error_code == errors.KeyNotUsable.code and key_id in task.error_message
        backup = s.get(Backup, str(task.extra_info["backup_id"]))
        assert backup is not None and backup.status == "error"
