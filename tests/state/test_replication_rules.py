"""The source cloud's replication rules (reference rules 1, 2, 5, 6 and 7) on
SQLite and PostgreSQL, each with its code."""

from __future__ import annotations

from typing import Any

import pytest

from cbr import errors
from controller.app import App
from controller.persistence.models import Backup, Credential, ReplicationRecord
from controller.services import replication, vaults
from controller.services.vaults import VaultSpec
from tests.state.conftest import NOW


@pytest.fixture
def vault(app: App, project: str) -> str:
    with app.db.begin() as s:
        return vaults.create_vault(s, project, "region-1", VaultSpec(
            name="v", object_type="server", size_gb=10), NOW).id


def _backup(app: App, project: str, vault: str, kind: str = "server", *,
            status: str = "available", system: bool = True, image_type: str = "backup",
            **info: Any) -> str:
    with app.db.begin() as s:
        top = Backup(project_id=project, vault_id=vault, name="b",
                     resource_id="res", resource_type=kind, status=status,
                     image_type=image_type, created_at=NOW, updated_at=NOW,
                     extend_info={"contain_system_disk": system, **info})
        s.add(top)
        s.flush()
        if kind == "server":
            s.add(Backup(project_id=project, vault_id=top.vault_id, parent_id=top.id, name="b",
                         resource_id="res", resource_type="disk", status=status,
                         created_at=NOW, updated_at=NOW,
                         extend_info={"system_disk": system, "disk_id": "sys"}))
        return top.id


def _credential(app: App, project: str, cloud: str = "cloud-b",
                account: str = "acct-b") -> Credential:
    with app.db.begin() as s:
        cred = Credential(project_id=project, name=f"c-{cloud}-{account}", target_cloud=cloud,
                          target_endpoint="127.0.0.1:1", target_account_id=account,
                          access_key_id="AK", secret_sealed=b"x", created_at=NOW,
                          updated_at=NOW)
        s.add(cred)
        s.flush()
        s.expunge(cred)
        return cred


def _check(app: App, project: str, backup_id: str, cred: Credential,
           region: str = "region-b") -> None:
    with app.db.begin() as s:
        backup = s.get(Backup, backup_id)
        assert backup is not None
        replication.check_replicable(s, backup, cred, region)


def _record(app: App, project: str, backup_id: str, status: str, account: str,
            region: str = "region-b") -> None:
    with app.db.begin() as s:
        s.add(ReplicationRecord(project_id=project, status=status, source_backup_id=backup_id,
                                destination_region=region, destination_project_id=account,
                                extra_info={"side": "source"}, created_at=NOW,
                                updated_at=NOW))


def test_only_available_server_and_file_system_backups_replicate(app: App, project: str,
                                                                 vault: str) -> None:
    cred = _credential(app, project)
    cases: list[tuple[str, type[errors.CbrError]]] = [
        (_backup(app, project, vault, "disk"), errors.ReplicationNotAllowedForType),
        (_backup(app, project, vault, status="protecting"), errors.BackupStatusIllegal),
        (_backup(app, project, vault, status="error"), errors.BackupStatusIllegal),
        (_backup(app, project, vault, system=False), errors.NotEcsBackup),
    ]
    for backup_id, error in cases:
        with pytest.raises(error):
            _check(app, project, backup_id, cred)
    server = _backup(app, project, vault)
    with app.db.begin() as s:
        [disk] = s.query(Backup).filter(Backup.parent_id == server).all()
        disk_id = disk.id
    with pytest.raises(errors.ReplicationNotAllowedForType, match="one disk"):
        _check(app, project, disk_id, cred)
    _check(app, project, server, cred)
    _check(app, project, _backup(app, project, vault, "turbo"), cred)


def test_a_backup_goes_to_one_account_and_once_at_a_time_per_region(app: App, project: str,
                                                                   vault: str) -> None:
    cred = _credential(app, project)
    backup = _backup(app, project, vault)
    _record(app, project, backup, "replicating", "acct-b")
    with pytest.raises(errors.AlreadyReplicated):
        _check(app, project, backup, cred)
    _check(app, project, backup, cred, region="region-c")  # another region may go
    other_account = _credential(app, project, account="acct-x")
    with pytest.raises(errors.ProjectNotSupported):
        _check(app, project, backup, other_account, region="region-c")
    # A failed record does not count.
    fresh = _backup(app, project, vault)
    _record(app, project, fresh, "fail", "acct-x")
    _check(app, project, fresh, cred)


def test_a_replica_goes_only_back_to_its_source_cloud(app: App, project: str,
                                                      vault: str) -> None:
    replica = _backup(app, project, vault, image_type="replication", source_cloud="cloud-a")
    with pytest.raises(errors.ReplicationNotAllowedForType, match="not onward"):
        _check(app, project, replica, _credential(app, project, cloud="cloud-c"))
    _check(app, project, replica, _credential(app, project, cloud="cloud-a"))


def test_a_vault_replication_never_sends_a_backup_to_a_region_twice(app: App, project: str,
                                                                   vault: str) -> None:
    backup = _backup(app, project, vault)
    _record(app, project, backup, "success", "acct-b")
    with app.db.begin() as s:
        row = s.get(Backup, backup)
        assert row is not None
        assert replication.vault_replicated_before(s, row, "region-b")
        assert not replication.vault_replicated_before(s, row, "region-c")
