"""Vault and resource rules with their CBR codes, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from cbr import errors
from controller.app import App
from controller.persistence.models import Task
from controller.services import deletions, policies, vaults
from controller.services.vaults import ResourceRequest, VaultSpec
from tests.state.conftest import NOW, Inventory


def make_vault(app: App, project: str, name: str = "v", object_type: str = "server",
               **kw: object) -> str:
    with app.db.begin() as s:
        return vaults.create_vault(s, project, "region-1",
                                   VaultSpec(name=name, object_type=object_type, size_gb=100,
                                             **kw),  # type: ignore[arg-type]
                                   NOW).id


def add(app: App, project: str, vault_id: str, *ids: str) -> list[str]:
    with app.db.begin() as s:
        return vaults.add_resources(s, project, vault_id, [ResourceRequest(i) for i in ids], NOW)


def test_a_new_vault_is_available_with_default_threshold(app: App, project: str) -> None:
    vid = make_vault(app, project)
    with app.db.begin() as s:
        v = vaults.get_vault(s, project, vid)
        assert (v.status, v.threshold, v.protect_type, v.consistent_level) == (
            "available", 80, "backup", "crash_consistent")


def test_duplicate_vault_name_is_refused_with_6106(app: App, project: str) -> None:
    make_vault(app, project, "same")
    with pytest.raises(errors.DuplicateVault) as exc:
        make_vault(app, project, "same")
    assert exc.value.code == "BackupService.6106"


def test_the_same_vault_name_in_another_account_is_allowed(app: App, project: str) -> None:
    from controller.persistence.models import Account

    with app.db.begin() as s:
        other = Account(name="other", created_at=NOW)
        s.add(other)
        s.flush()
        other_id = other.id
    make_vault(app, project, "same")
    make_vault(app, other_id, "same")


@pytest.mark.parametrize("size", [0, -1, 10_485_761])
def test_vault_size_outside_limits_is_refused_with_9900(app: App, project: str,
                                                        size: int) -> None:
    with app.db.begin() as s, pytest.raises(errors.InvalidParameter) as exc:
        vaults.create_vault(s, project, "r", VaultSpec(name="v", object_type="disk",
                                                       size_gb=size), NOW)
    assert "size_gb" in exc.value.message


@pytest.mark.parametrize("name", ["", "x" * 65, "bad name", "semi;colon"])
def test_invalid_vault_names_are_refused_with_9900(app: App, project: str, name: str) -> None:
    with pytest.raises(errors.InvalidParameter):
        make_vault(app, project, name)


def test_app_consistency_is_for_server_vaults_only(app: App, project: str) -> None:
    with pytest.raises(errors.InvalidParameter, match="server vaults"):
        make_vault(app, project, object_type="disk", consistent_level="app_consistent")


def test_a_disk_vault_cannot_be_a_replication_vault(app: App, project: str) -> None:
    with pytest.raises(errors.InvalidParameter, match="replicat"):
        make_vault(app, project, object_type="disk", protect_type="replication")


def test_resource_of_another_type_is_refused_with_6102(app: App, project: str,
                                                       inventory: Inventory) -> None:
    disk = inventory.add("vol", "disk")
    vid = make_vault(app, project, object_type="server")
    with pytest.raises(errors.ResourceTypeMismatch) as exc:
        add(app, project, vid, disk)
    assert exc.value.code == "BackupService.6102"


def test_resource_in_another_vault_is_refused_with_6103(app: App, project: str,
                                                        inventory: Inventory) -> None:
    server = inventory.add("web", "server")
    first = make_vault(app, project, "first")
    second = make_vault(app, project, "second")
    add(app, project, first, server)
    with pytest.raises(errors.ResourceInOtherVault) as exc:
        add(app, project, second, server)
    assert exc.value.code == "BackupService.6103"
    assert exc.value.metadata["vault_id"] == first


def test_resource_added_twice_is_refused_with_6104(app: App, project: str,
                                                   inventory: Inventory) -> None:
    server = inventory.add("web", "server")
    vid = make_vault(app, project)
    add(app, project, vid, server)
    with pytest.raises(errors.DuplicateResource) as exc:
        add(app, project, vid, server)
    assert exc.value.code == "BackupService.6104"


def test_a_resource_listed_twice_in_one_request_is_refused_with_6104(
        app: App, project: str, inventory: Inventory) -> None:
    server = inventory.add("web", "server")
    vid = make_vault(app, project)
    with pytest.raises(errors.DuplicateResource):
        add(app, project, vid, server, server)
    with app.db.begin() as s:
        assert vaults.get_vault(s, project, vid).resources == []


def test_a_refused_batch_adds_nothing(app: App, project: str, inventory: Inventory) -> None:
    good = inventory.add("web", "server")
    wrong = inventory.add("vol", "disk")
    vid = make_vault(app, project)
    with pytest.raises(errors.ResourceTypeMismatch):
        add(app, project, vid, good, wrong)
    with app.db.begin() as s:
        assert vaults.get_vault(s, project, vid).resources == []


@pytest.mark.parametrize("status", ["lock", "frozen"])
def test_adding_to_a_vault_that_is_not_available_is_refused_with_6112(
        app: App, project: str, inventory: Inventory, status: str) -> None:
    server = inventory.add("web", "server")
    vid = make_vault(app, project)
    with app.db.begin() as s:
        vaults.update_vault(s, project, vid, {"status": status}, NOW)
    with pytest.raises(errors.VaultStatusIllegal) as exc:
        add(app, project, vid, server)
    assert exc.value.code == "BackupService.6112"
    assert "allow status: available" in exc.value.message


def test_a_locked_vault_can_be_unlocked_but_not_otherwise_changed(
        app: App, project: str) -> None:
    vid = make_vault(app, project)
    with app.db.begin() as s:
        vaults.update_vault(s, project, vid, {"status": "lock"}, NOW)
    with app.db.begin() as s, pytest.raises(errors.VaultStatusIllegal):
        vaults.update_vault(s, project, vid, {"size_gb": 200}, NOW)
    with app.db.begin() as s:
        vaults.update_vault(s, project, vid, {"status": "available"}, NOW)
    with app.db.begin() as s:
        assert vaults.update_vault(s, project, vid, {"size_gb": 200}, NOW).size_gb == 200


def test_unknown_vault_is_refused_with_6105(app: App, project: str) -> None:
    with app.db.begin() as s, pytest.raises(errors.VaultNotFound) as exc:
        vaults.get_vault(s, project, "no-such-vault")
    assert exc.value.code == "BackupService.6105"


def test_another_accounts_vault_is_not_found(app: App, project: str) -> None:
    from controller.persistence.models import Account

    vid = make_vault(app, project)
    with app.db.begin() as s:
        other = Account(name="other", created_at=NOW)
        s.add(other)
        s.flush()
        other_id = other.id
    with app.db.begin() as s, pytest.raises(errors.VaultNotFound):
        vaults.get_vault(s, other_id, vid)


def test_an_unknown_resource_is_not_found(app: App, project: str) -> None:
    vid = make_vault(app, project)
    with pytest.raises(errors.ResourceNotFound):
        add(app, project, vid, "no-such-resource")


def test_removing_a_resource_records_a_remove_resource_task(
        app: App, project: str, inventory: Inventory) -> None:
    server = inventory.add("web", "server")
    vid = make_vault(app, project)
    add(app, project, vid, server)
    with app.db.begin() as s:
        task_ids = deletions.start_remove_resources(s, project, vid, [server], NOW)
    with app.db.begin() as s:
        task = s.get(Task, task_ids[0])
        assert task is not None
        assert (task.operation_type, task.status, task.resource_id) == (
            "remove_resource", "success", server)  # no backups: nothing left to do
        assert vaults.get_vault(s, project, vid).resources == []
    other = make_vault(app, project, "other")
    add(app, project, other, server)


def test_deleting_a_vault_marks_it_deleting_and_records_a_task_for_the_worker(
        app: App, project: str, inventory: Inventory) -> None:
    server = inventory.add("web", "server")
    vid = make_vault(app, project)
    add(app, project, vid, server)
    with app.db.begin() as s:
        task_id = deletions.start_vault_delete(s, project, vid, NOW)
    with app.db.begin() as s:
        assert vaults.get_vault(s, project, vid).status == "deleting"
        with pytest.raises(errors.VaultStatusIllegal):
            deletions.start_vault_delete(s, project, vid, NOW)
    with app.db.begin() as s:
        task = s.get(Task, task_id)
        assert task is not None and (task.status, task.operation_type) == (
            "waiting", "vault_delete")
        deletions.forget_vault(s, vid)
    with app.db.begin() as s, pytest.raises(errors.VaultNotFound):
        vaults.get_vault(s, project, vid)
    add(app, project, make_vault(app, project, "again"), server)


def test_a_vault_has_one_backup_policy_and_a_new_one_replaces_it(
        app: App, project: str) -> None:
    vid = make_vault(app, project)
    with app.db.begin() as s:
        ids = [policies.create_policy(s, project, f"p{i}", "backup", True, {},
                                      ["FREQ=DAILY;INTERVAL=1;BYHOUR=6;BYMINUTE=00"], NOW).id
               for i in range(2)]
    for pid in ids:
        with app.db.begin() as s:
            vaults.associate_policy(s, project, vid, pid, "", NOW)
    with app.db.begin() as s:
        v = vaults.get_vault(s, project, vid)
        assert [b.policy_id for b in v.policy_bindings] == [ids[1]]
        assert policies.vault_ids(s, ids[0]) == []
    with app.db.begin() as s, pytest.raises(errors.Conflict):
        policies.delete_policy(s, project, ids[1])
    with app.db.begin() as s:
        vaults.dissociate_policy(s, project, vid, ids[1], NOW)
    with app.db.begin() as s:
        policies.delete_policy(s, project, ids[1])


def test_a_disk_vault_refuses_a_replication_policy_with_1002(app: App, project: str) -> None:
    vid = make_vault(app, project, object_type="disk")
    with app.db.begin() as s:
        pid = policies.create_policy(
            s, project, "rep", "replication", True,
            {"destination_region": "r2", "destination_project_id": "acc", "credential_id": "c"},
            ["FREQ=DAILY;INTERVAL=1;BYHOUR=6;BYMINUTE=00"], NOW).id
    with app.db.begin() as s, pytest.raises(errors.ReplicationNotAllowedForType) as exc:
        vaults.associate_policy(s, project, vid, pid, "", NOW)
    assert exc.value.code == "BackupService.1002"


def test_auto_bind_adds_matching_new_resources(app: App, project: str,
                                               inventory: Inventory) -> None:
    vid = make_vault(app, project, auto_bind=True, bind_rules=[{"key": "env", "value": "prod"}])
    prod = inventory.add("web", "server", tags=[{"key": "env", "value": "prod"}])
    dev = inventory.add("dev", "server", tags=[{"key": "env", "value": "dev"}])
    with app.db.begin() as s:
        assert vaults.auto_bind_new(s, project, [prod, dev], NOW) == [(prod, vid)]
    with app.db.begin() as s:
        assert [r.protectable_id for r in vaults.get_vault(s, project, vid).resources] == [prod]


def test_turning_on_auto_bind_adds_existing_matching_resources(
        app: App, project: str, inventory: Inventory) -> None:
    fs = inventory.add("share", "turbo")
    vid = make_vault(app, project, object_type="turbo")
    with app.db.begin() as s:
        vaults.update_vault(s, project, vid, {"auto_bind": True}, NOW)
    with app.db.begin() as s:
        assert [r.protectable_id for r in vaults.get_vault(s, project, vid).resources] == [fs]


@pytest.mark.parametrize("busy", ["restoring", "replicating", "image"])
def test_deleting_a_vault_or_removing_a_resource_in_use_is_refused_changing_nothing(
        app: App, project: str, inventory: Inventory, busy: str) -> None:
    """Issue 20: refused while a backup is restored, replicated or made into
    an image, naming it; the vault, its resource and its backups stay."""
    from controller.persistence.models import Backup, Image, ReplicationRecord

    server = inventory.add("web", "server")
    vid = make_vault(app, project)
    add(app, project, vid, server)
    with app.db.begin() as s:
        backup = Backup(project_id=project, vault_id=vid, name="b", resource_id=server,
                        resource_type="server", created_at=NOW, updated_at=NOW,
                        status="restoring" if busy == "restoring" else "available")
        s.add(backup)
        s.flush()
        backup_id = backup.id
        if busy == "replicating":
            s.add(ReplicationRecord(project_id=project, status="replicating", vault_id=vid,
                                    source_backup_id=backup_id, created_at=NOW,
                                    updated_at=NOW))
        if busy == "image":
            s.add(Image(project_id=project, name="i", status="creating", backup_id=backup_id,
                        disk_backup_id=backup_id, agent_id="a", path="/x", task_id="t",
                        created_at=NOW, updated_at=NOW))
    for start in (lambda s: deletions.start_vault_delete(s, project, vid, NOW),
                  lambda s: deletions.start_remove_resources(s, project, vid, [server], NOW)):
        with pytest.raises(errors.Conflict, match=backup_id), app.db.begin() as s:
            start(s)
    with app.db.begin() as s:
        vault = vaults.get_vault(s, project, vid)
        assert vault.status == "available" and [r.protectable_id for r in vault.resources] \
            == [server]
        stored = s.get(Backup, backup_id)
        assert stored is not None and stored.status in ("available", "restoring")
        assert s.scalar(select(func.count()).select_from(Task).where(
            Task.vault_id == vid)) == 0
