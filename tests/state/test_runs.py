"""Backup runs, restores and deletions in the catalog, on SQLite and PostgreSQL.

The agent side is faked only in the sense that these tests apply the result
an agent would report; the rules under test are the controller's.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from cbr import errors
from cbr.v1 import agent_pb2
from controller.app import App
from controller.persistence.models import (
    Account,
    Agent,
    Backup,
    Checkpoint,
    Task,
    Vault,
    VaultResource,
)
from controller.services import deletions, images, restores, runs, tasks
from tests.state.conftest import NOW, Inventory
from tests.state.test_vaults import add, make_vault


def _checkpoint(app: App, project: str, vault_id: str, online: set[str], **kw: Any
                ) -> tuple[str, list[runs.Dispatch]]:
    with app.db.begin() as s:
        cp, dispatches = runs.create_checkpoint(
            s, project, vault_id, kw.pop("resource_ids", []), name=kw.pop("name", ""),
            description="", full=kw.pop("full", False), now=NOW, online=online, **kw)
        return cp.id, dispatches


def _succeed(app: App, task_id: str, stored: int = 1000,
             protected_at: dt.datetime = NOW) -> None:
    with app.db.begin() as s:
        task = s.get(Task, task_id)
        assert task is not None
        top = str(task.extra_info["backup_id"])
        ids = [top, *[b.id for b in s.query(Backup).filter(Backup.parent_id == top)]]
        result = agent_pb2.BackupResult()
        for i in ids:
            result.backups.add(backup_id=i, stored_bytes=stored).protected_at.FromDatetime(
                protected_at)
        done = tasks.finish_task(s, task_id, "success", NOW)
        assert done is not None
        runs.finish_backup(s, done, True, result, NOW)


def _fail(app: App, task_id: str) -> None:
    with app.db.begin() as s:
        done = tasks.finish_task(s, task_id, "failed", NOW, error_code="BackupService.0503",
                                 error_message="agent restarted")
        assert done is not None
        runs.finish_backup(s, done, False, None, NOW)


def test_a_checkpoint_makes_one_protecting_backup_and_task_per_resource(
        app: App, project: str, inventory: Inventory) -> None:
    a, b = inventory.add("vol-a", "disk"), inventory.add("vol-b", "disk")
    vid = make_vault(app, project, object_type="disk")
    add(app, project, vid, a, b)
    cp_id, dispatches = _checkpoint(app, project, vid, {inventory.agent_id})
    assert len(dispatches) == 2
    with app.db.begin() as s:
        backups = s.query(Backup).filter(Backup.checkpoint_id == cp_id).all()
        assert {x.status for x in backups} == {"protecting"}
        assert all(x.name.startswith("manualbk_") for x in backups)
        assert len({x.name for x in backups}) == 1
        task = s.get(Task, dispatches[0].task_id)
        assert task is not None and task.operation_type == "backup"
        assert task.command["backup"]["resourceLocalId"] in ("disk:vol-a", "disk:vol-b")
        assert "storage" not in task.command["backup"]  # credentials are added at send time


def test_a_server_backup_has_one_child_per_disk_and_names_the_system_disk(
        app: App, project: str, inventory: Inventory) -> None:
    server = inventory.add("web", "server")
    vid = make_vault(app, project)
    add(app, project, vid, server)
    _, [d] = _checkpoint(app, project, vid, {inventory.agent_id})
    with app.db.begin() as s:
        task = s.get(Task, d.task_id)
        assert task is not None
        disks = task.command["backup"]["disks"]
        assert [(x["name"], x["systemDisk"]) for x in disks] == [("system", True),
                                                                  ("data", False)]
        top = s.get(Backup, task.extra_info["backup_id"])
        assert top is not None and top.extend_info["contain_system_disk"]


def test_resources_of_offline_agents_are_skipped_with_a_code_and_reason(
        app: App, project: str, inventory: Inventory) -> None:
    vid = make_vault(app, project, object_type="disk")
    add(app, project, vid, inventory.add("vol", "disk"))
    cp_id, dispatches = _checkpoint(app, project, vid, online=set())
    assert dispatches == []
    with app.db.begin() as s:
        cp = s.get(Checkpoint, cp_id)
        assert cp is not None and cp.status == "error"
        [skipped] = cp.skipped_resources
        assert skipped["code"] == "BackupService.0503" and "offline" in skipped["reason"]


def test_success_makes_backups_available_and_counts_usage_then_next_is_incremental(
        app: App, project: str, inventory: Inventory) -> None:
    vol = inventory.add("vol", "disk")
    vid = make_vault(app, project, object_type="disk")
    add(app, project, vid, vol)
    cp_id, [d] = _checkpoint(app, project, vid, {inventory.agent_id})
    _succeed(app, d.task_id, stored=5000)
    with app.db.begin() as s:
        [b] = s.query(Backup).filter(Backup.checkpoint_id == cp_id).all()
        assert (b.status, b.stored_bytes, b.incremental) == ("available", 5000, False)
        vault = s.get(Vault, vid)
        assert vault is not None and vault.used_bytes == 5000
        resource = s.query(VaultResource).filter(VaultResource.vault_id == vid).one()
        assert (resource.protect_status, resource.backup_count) == ("available", 1)
        cp = s.get(Checkpoint, cp_id)
        assert cp is not None and cp.status == "available"
    _, [d2] = _checkpoint(app, project, vid, {inventory.agent_id})
    with app.db.begin() as s:
        task = s.get(Task, d2.task_id)
        assert task is not None and task.command["backup"]["parentBackupId"] == b.id
    _fail(app, d2.task_id)
    _, [d3] = _checkpoint(app, project, vid, {inventory.agent_id}, full=True)
    with app.db.begin() as s:
        task = s.get(Task, d3.task_id)
        assert task is not None and task.command["backup"]["parentBackupId"] == ""


def test_a_failed_task_leaves_its_backups_error_never_available(
        app: App, project: str, inventory: Inventory) -> None:
    vid = make_vault(app, project)
    add(app, project, vid, inventory.add("web", "server"))
    cp_id, [d] = _checkpoint(app, project, vid, {inventory.agent_id})
    _fail(app, d.task_id)
    with app.db.begin() as s:
        statuses = {b.status for b in s.query(Backup).filter(Backup.checkpoint_id == cp_id)}
        assert statuses == {"error"}


def test_a_resource_being_backed_up_is_skipped_then_refuses_restore_with_2002(
        app: App, project: str, inventory: Inventory) -> None:
    vol = inventory.add("vol", "disk")
    vid = make_vault(app, project, object_type="disk")
    add(app, project, vid, vol)
    _, [d] = _checkpoint(app, project, vid, {inventory.agent_id})
    _succeed(app, d.task_id)
    _checkpoint(app, project, vid, {inventory.agent_id})
    cp3, none = _checkpoint(app, project, vid, {inventory.agent_id})
    assert none == []
    with app.db.begin() as s:
        cp = s.get(Checkpoint, cp3)
        assert cp is not None and cp.skipped_resources[0]["code"] == "BackupService.2002"
        done = s.query(Backup).filter(Backup.status == "available").one()
    with pytest.raises(errors.ResourceBeingBackedUp), app.db.begin() as s:
        restores.create_restore(s, project, restores.RestoreRequest(done.id), NOW,
                            {inventory.agent_id})


def test_restore_refusals_use_the_reference_codes(
        app: App, project: str, inventory: Inventory) -> None:
    big, small = inventory.add("big", "disk"), inventory.add("small", "disk")
    vid = make_vault(app, project, object_type="disk")
    add(app, project, vid, big)
    _, [d] = _checkpoint(app, project, vid, {inventory.agent_id})
    with app.db.begin() as s:
        backup_id = str(s.get(Task, d.task_id).extra_info["backup_id"])  # type: ignore[union-attr]
    with pytest.raises(errors.BackupStatusIllegal), app.db.begin() as s:
        restores.create_restore(s, project, restores.RestoreRequest(backup_id), NOW,
                            {inventory.agent_id})
    _succeed(app, d.task_id)
    with app.db.begin() as s:
        target = s.get(Backup, backup_id)
        assert target is not None
        target.resource_size_bytes = 40 << 30  # bigger than "small" (30 GiB)
    with pytest.raises(errors.RestoreTargetTooSmall), app.db.begin() as s:
        restores.create_restore(s, project, restores.RestoreRequest(backup_id, small), NOW,
                            {inventory.agent_id})
    with pytest.raises(errors.AgentUnavailable), app.db.begin() as s:
        restores.create_restore(s, project, restores.RestoreRequest(
            backup_id, target_path="/restore/x.img"), NOW, set())
    with pytest.raises(errors.InvalidParameter), app.db.begin() as s:
        restores.create_restore(s, project, restores.RestoreRequest(
            backup_id, target_path="relative.img"), NOW, {inventory.agent_id})


def test_restore_marks_the_backup_restoring_until_the_task_ends(
        app: App, project: str, inventory: Inventory) -> None:
    backup_id = _available_disk_backup(app, project, inventory)
    with app.db.begin() as s:
        dispatch = restores.create_restore(s, project, restores.RestoreRequest(backup_id), NOW,
                                       {inventory.agent_id})
        restore = s.get(Task, dispatch.task_id)
        assert restore is not None and restore.command["restore"]["targetPath"]
        assert s.get(Backup, backup_id).status == "restoring"  # type: ignore[union-attr]
    with pytest.raises(errors.BackupStatusIllegal), app.db.begin() as s:
        deletions.start_delete(s, project, backup_id, NOW)
    with app.db.begin() as s:
        done = tasks.finish_task(s, dispatch.task_id, "success", NOW)
        assert done is not None
        restores.finish_restore(s, done, True, NOW)
        assert s.get(Backup, backup_id).status == "available"  # type: ignore[union-attr]


def test_deleting_forgets_the_backup_and_its_usage(
        app: App, project: str, inventory: Inventory) -> None:
    vol = inventory.add("vol", "disk")
    vid = make_vault(app, project, object_type="disk")
    add(app, project, vid, vol)
    _, [d] = _checkpoint(app, project, vid, {inventory.agent_id})
    _succeed(app, d.task_id, stored=700)
    with app.db.begin() as s:
        backup_id = str(s.get(Task, d.task_id).extra_info["backup_id"])  # type: ignore[union-attr]
        task = deletions.start_delete(s, project, backup_id, NOW)
        assert task.operation_type == "delete" and task.agent_id == ""
        assert s.get(Backup, backup_id).status == "deleting"  # type: ignore[union-attr]
    with app.db.begin() as s:
        assert deletions.forget_backup(s, backup_id) == 700
    with app.db.begin() as s:
        assert s.get(Backup, backup_id) is None
        resource = s.query(VaultResource).filter(VaultResource.vault_id == vid).one()
        assert resource.backup_count == 0


def test_a_full_vault_refuses_new_backups_with_6114(
        app: App, project: str, inventory: Inventory) -> None:
    vid = make_vault(app, project, object_type="disk")
    add(app, project, vid, inventory.add("vol", "disk"))
    with app.db.begin() as s:
        vault = s.get(Vault, vid)
        assert vault is not None
        vault.used_bytes = vault.size_gb * 1024**3
    with pytest.raises(errors.VaultCapacityExceeded):
        _checkpoint(app, project, vid, {inventory.agent_id})


def _foreign_agent(app: App) -> str:
    """A host agent of another account, with the same restore roots."""
    with app.db.begin() as s:
        other = Account(name="other", created_at=NOW)
        s.add(other)
        s.flush()
        foreign = Agent(project_id=other.id, name="their-host", role="host",
                        certificate_fingerprint="1" * 64, enrolled_at=NOW,
                        restore_roots=["/restore"])
        s.add(foreign)
        s.flush()
        return foreign.id


def _available_disk_backup(app: App, project: str, inventory: Inventory) -> str:
    vol = inventory.add("vol", "disk")
    vid = make_vault(app, project, object_type="disk")
    add(app, project, vid, vol)
    _, [d] = _checkpoint(app, project, vid, {inventory.agent_id})
    _succeed(app, d.task_id)
    with app.db.begin() as s:
        return str(s.get(Task, d.task_id).extra_info["backup_id"])  # type: ignore[union-attr]


def test_a_restore_never_runs_on_another_accounts_agent(
        app: App, project: str, inventory: Inventory) -> None:
    backup_id = _available_disk_backup(app, project, inventory)
    foreign_id = _foreign_agent(app)
    with pytest.raises(errors.ResourceNotFound, match="No agent") as caught, \
            app.db.begin() as s:
        restores.create_restore(s, project, restores.RestoreRequest(
            backup_id, target_agent_id=foreign_id, target_path="/restore/x.img"), NOW,
            {inventory.agent_id, foreign_id})
    assert caught.value.code == "BackupService.0404"
    with app.db.begin() as s:
        assert s.get(Backup, backup_id).status == "available"  # type: ignore[union-attr]
        assert s.query(Task).filter(Task.operation_type == "restore").count() == 0


@pytest.mark.parametrize("target", ["/etc/x.img", "/restore/../etc/x.img", "/restorex/a.img",
                                    "/dev/sda", "/img/other.img"])
def test_a_restore_outside_the_hosts_roots_is_refused_naming_them(
        app: App, project: str, inventory: Inventory, target: str) -> None:
    backup_id = _available_disk_backup(app, project, inventory)
    with pytest.raises(errors.RestoreTargetNotAllowed, match=r"restore roots \(/restore\)") \
            as caught, app.db.begin() as s:
        restores.create_restore(s, project, restores.RestoreRequest(
            backup_id, target_agent_id=inventory.agent_id, target_path=target), NOW,
            {inventory.agent_id})
    assert caught.value.code == "BackupService.2004"


@pytest.mark.parametrize("target", ["/restore/x.img", "/restore/deep/er/x.img",
                                    "/img/vol.img"])
def test_a_restore_under_a_root_or_onto_a_protected_disk_is_accepted(
        app: App, project: str, inventory: Inventory, target: str) -> None:
    backup_id = _available_disk_backup(app, project, inventory)
    with app.db.begin() as s:
        dispatch = restores.create_restore(s, project, restores.RestoreRequest(
            backup_id, target_agent_id=inventory.agent_id, target_path=target), NOW,
            {inventory.agent_id})
        task = s.get(Task, dispatch.task_id)
        assert task is not None and task.command["restore"]["targetPath"] == target


def test_an_image_is_made_only_on_the_callers_agent_and_under_its_roots(
        app: App, project: str, inventory: Inventory) -> None:
    server = inventory.add("web", "server")
    vid = make_vault(app, project)
    add(app, project, vid, server)
    _, [d] = _checkpoint(app, project, vid, {inventory.agent_id})
    _succeed(app, d.task_id)
    with app.db.begin() as s:
        backup_id = str(s.get(Task, d.task_id).extra_info["backup_id"])  # type: ignore[union-attr]
    foreign_id = _foreign_agent(app)
    online = {inventory.agent_id, foreign_id}
    for agent_id, path, refusal in ((foreign_id, "/restore/web.img", errors.ResourceNotFound),
                                    (inventory.agent_id, "/boot/web.img",
                                     errors.RestoreTargetNotAllowed)):
        with pytest.raises(refusal), app.db.begin() as s:
            images.create_image(s, project, backup_id=backup_id, name="web-image",
                                description="", target_agent_id=agent_id, target_path=path,
                                encrypted=False, now=NOW, online=online)
    with app.db.begin() as s:
        image, _ = images.create_image(
            s, project, backup_id=backup_id, name="web-image", description="",
            target_agent_id=inventory.agent_id, target_path="/restore/web.img",
            encrypted=False, now=NOW, online=online)
        assert image.status == "creating"


def test_a_nul_in_a_restore_path_is_called_a_nul(
        app: App, project: str, inventory: Inventory) -> None:
    """Issue 20: a NUL was reported as '..' or as a path that is not absolute."""
    backup_id = _available_disk_backup(app, project, inventory)
    with pytest.raises(errors.InvalidParameter, match="target_path may not contain a NUL"), \
            app.db.begin() as s:
        restores.create_restore(s, project, restores.RestoreRequest(
            backup_id, target_agent_id=inventory.agent_id, target_path="/restore/x\x00.img"),
            NOW, {inventory.agent_id})


def test_an_in_place_restore_whose_agent_was_deleted_says_so_not_offline(
        app: App, project: str, inventory: Inventory) -> None:
    from controller.persistence.models import Agent

    backup_id = _available_disk_backup(app, project, inventory)
    with app.db.begin() as s:
        s.get(Agent, inventory.agent_id).revoked = True  # type: ignore[union-attr]
    with pytest.raises(errors.ResourceNotFound, match="was deleted"), app.db.begin() as s:
        restores.create_restore(s, project, restores.RestoreRequest(backup_id), NOW, set())
