"""The target cloud's side of replication on SQLite and PostgreSQL: which
imports it allows, and how a committed import becomes a replica."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from cbr import errors
from cbr.v1 import agent_pb2
from controller.app import App
from controller.persistence.models import Agent, Backup, Checkpoint, ReplicationRecord, Vault
from controller.services import actions, imports, tasks, vaults
from controller.services.vaults import VaultSpec
from tests.state.conftest import NOW

REGIONS = (("region-1", True), ("region-2", False))


@pytest.fixture
def importer(app: App, project: str) -> str:
    with app.db.begin() as s:
        agent = Agent(project_id=project, name="importer-1", role="importer",
                      certificate_fingerprint="1" * 64, enrolled_at=NOW,
                      endpoint="127.0.0.1:7444")
        s.add(agent)
        s.flush()
        return agent.id


def _vault(app: App, project: str, object_type: str = "server",
           protect_type: str = "replication") -> str:
    with app.db.begin() as s:
        return vaults.create_vault(s, project, "region-1", VaultSpec(
            name=f"r-{object_type}-{protect_type}", object_type=object_type, size_gb=100,
            protect_type=protect_type), NOW).id


def _server_doc(source_id: str = "src-server", system: bool = True) -> dict[str, Any]:
    return {"sourceBackupId": source_id, "name": "manualbk_0001", "resourceId": "res-1",
            "resourceName": "web-1", "resourceType": "server", "resourceSizeBytes": "30",
            "protectedAt": "2026-11-25T11:00:00Z",
            "children": [{"sourceBackupId": f"{source_id}-sys", "resourceId": "sys",
                          "resourceName": "system", "resourceType": "disk",
                          "systemDisk": system},
                         {"sourceBackupId": f"{source_id}-data", "resourceId": "data",
                          "resourceName": "data", "resourceType": "disk"}]}


def _request(vault_id: str, doc: dict[str, Any] | None = None, *, record: str = "rec-1",
             region: str = "region-1", encrypted: bool = False) -> imports.ImportRequest:
    return imports.ImportRequest(
        source_record_id=record, source_cloud="cloud-a", source_region="region-a",
        source_project_id="acct-a", source_vault_id="src-vault", source_checkpoint_id="cp-a",
        destination_region=region, destination_vault_id=vault_id,
        backup=doc or _server_doc(), encrypted=encrypted, auto_trigger=False)


def _prepare(app: App, project: str, req: imports.ImportRequest,
             online: set[str], **kw: Any) -> imports.ImportPlan:
    with app.db.begin() as s:
        plan = imports.prepare_import(s, app.keyring, project, req, regions=REGIONS,
                                      online=online, now=NOW, **kw)
        s.flush()
        s.expunge_all()
        return plan


def test_the_nine_actions_are_required_and_the_missing_one_is_named() -> None:
    granted = frozenset(actions.REPLICATION_TARGET_ACTIONS) - {"cbr::createThirdAuth"}
    with pytest.raises(errors.PermissionDenied, match="cbr::createThirdAuth"):
        imports.require_replication_actions(granted)
    imports.require_replication_actions(frozenset(actions.REPLICATION_TARGET_ACTIONS))


def test_imports_are_refused_with_the_reference_codes(app: App, project: str,
                                                      importer: str) -> None:
    server_vault = _vault(app, project)
    online = {importer}
    cases: list[tuple[imports.ImportRequest, type[errors.CbrError]]] = [
        (_request(server_vault, region="region-2"), errors.RegionNotSupported),
        (_request(server_vault, region="region-9"), errors.RegionNotSupported),
        (_request(_vault(app, project, "turbo")), errors.ResourceTypeMismatch),
        (_request(_vault(app, project, protect_type="backup")),
         errors.ReplicationNotAllowedForType),
        (_request(server_vault, _server_doc(system=False)), errors.NotEcsBackup),
        (_request(server_vault, {**_server_doc(), "resourceType": "disk"}),
         errors.ReplicationNotAllowedForType),
        (_request(server_vault, encrypted=True), errors.ReplicaEncryptionMismatch),
        (_request("no-such-vault"), errors.VaultNotFound),
    ]
    for req, error in cases:
        with pytest.raises(error):
            _prepare(app, project, req, online)
    with pytest.raises(errors.NoImporter):
        _prepare(app, project, _request(server_vault), set())


def test_the_same_source_record_gets_the_same_import(app: App, project: str,
                                                     importer: str) -> None:
    vault = _vault(app, project)
    first = _prepare(app, project, _request(vault), {importer})
    again = _prepare(app, project, _request(vault), {importer})
    assert again.record.id == first.record.id and again.token == first.token
    assert again.task.id == first.task.id
    # Another record for the same source backup while the first is on its way: rule 6.
    with pytest.raises(errors.AlreadyReplicated):
        _prepare(app, project, _request(vault, record="rec-2"), {importer})


def test_an_import_lives_as_long_as_the_controller_allows(app: App, project: str,
                                                          importer: str) -> None:
    vault = _vault(app, project)
    default = _prepare(app, project, _request(vault), {importer})
    assert default.record.extra_info["expires_at"] == (NOW + imports.IMPORT_TTL).isoformat()
    longer = _prepare(app, project, _request(vault, record="rec-2",
                                             doc=_server_doc("src-server-2")),
                      {importer}, ttl=dt.timedelta(hours=96))
    assert longer.record.extra_info["expires_at"] == \
        (NOW + dt.timedelta(hours=96)).isoformat()


def _commit(app: App, plan: imports.ImportPlan, *, success: bool = True) -> None:
    ids = plan.record.extra_info["replica_ids"]
    with app.db.begin() as s:
        tasks.finish_task(s, plan.task.id, "success" if success else "failed", NOW,
                          error_code="" if success else "BackupService.0504",
                          error_message="" if success else "storage gone")
        task = s.get(type(plan.task), plan.task.id)
        assert task is not None
        result = agent_pb2.ImportResult(manifest_sha256={i: "ab" * 32 for i in ids.values()},
                                        bytes_stored=4096) if success else None
        imports.finish_import(s, task, result, NOW)


def test_a_committed_import_becomes_a_replica_with_its_disks(app: App, project: str,
                                                              importer: str) -> None:
    vault = _vault(app, project)
    plan = _prepare(app, project, _request(vault), {importer})
    with app.db.begin() as s:  # nothing shows before the commit
        assert s.query(Backup).count() == 0
    _commit(app, plan)
    ids = plan.record.extra_info["replica_ids"]
    with app.db.begin() as s:
        top = s.get(Backup, ids["src-server"])
        assert top is not None and top.image_type == "replication"
        assert top.status == "available" and top.stored_bytes == 4096
        assert top.extend_info["source_backup_id"] == "src-server"
        assert top.extend_info["source_cloud"] == "cloud-a"
        disks = {b.extend_info["disk_id"]: b for b in
                 s.query(Backup).filter(Backup.parent_id == top.id)}
        assert set(disks) == {"sys", "data"} and disks["sys"].extend_info["system_disk"]
        assert all(d.manifest_sha256 == "ab" * 32 for d in disks.values())
        checkpoint = s.get(Checkpoint, plan.record.destination_checkpoint_id)
        assert checkpoint is not None and checkpoint.vault_id == vault
        record = s.get(ReplicationRecord, plan.record.id)
        assert record is not None and record.status == "success"
        stored = s.get(Vault, vault)
        assert stored is not None and stored.used_bytes == 4096
    # Rule 6: the region has a replica of that backup now.
    with pytest.raises(errors.AlreadyReplicated):
        _prepare(app, project, _request(vault, record="rec-3"), {importer})


def test_a_failed_or_aborted_import_leaves_no_replica(app: App, project: str,
                                                      importer: str) -> None:
    vault = _vault(app, project)
    plan = _prepare(app, project, _request(vault), {importer})
    _commit(app, plan, success=False)
    with app.db.begin() as s:
        assert s.query(Backup).count() == 0
        record = s.get(ReplicationRecord, plan.record.id)
        assert record is not None and record.status == "fail"
        assert record.extra_info["fail_code"] == "BackupService.0504"
    other = _prepare(app, project, _request(vault, _server_doc("src-2"), record="rec-4"),
                     {importer})
    with app.db.begin() as s:
        task = imports.abort_import(s, project, other.record.id, "the source gave up", NOW)
        assert task is not None and task.status == "failed"
        record = s.get(ReplicationRecord, other.record.id)
        assert record is not None and record.status == "fail"
    with app.db.begin() as s:  # aborting twice changes nothing
        assert imports.abort_import(s, project, other.record.id, "again", NOW) is None


def _sealed_vault(app: App, project: str) -> str:
    """A replication vault encrypted with a key of the account."""
    from tests.state.test_keys import _key

    key = _key(app, project)
    with app.db.begin() as s:
        return vaults.create_vault(s, project, "region-1", VaultSpec(
            name="r-sealed", object_type="server", size_gb=100, protect_type="replication",
            encrypted=True, kms_key_id=key), NOW).id


@pytest.mark.parametrize("first_sealed", [False, True], ids=["plain-first", "sealed-first"])
def test_an_import_on_its_way_fixes_the_encryption_of_the_resources_next_ones(
        app: App, project: str, importer: str, first_sealed: bool) -> None:
    """Issue 20: the encryption rule counted only finished replicas, so b1 of
    a file system to an encrypted vault and b2 to a plain one, both in flight,
    were both allowed (and every later backup of it refused for both)."""
    sealed, plain = _sealed_vault(app, project), _vault(app, project)
    first, second = (sealed, plain) if first_sealed else (plain, sealed)
    _prepare(app, project, _request(first, _server_doc("src-1"), record="rec-1"), {importer})
    with pytest.raises(errors.ReplicaEncryptionMismatch, match="res-1"):
        _prepare(app, project, _request(second, _server_doc("src-2"), record="rec-2"),
                 {importer})
    # The same kind of vault as the one on its way stays allowed.
    _prepare(app, project, _request(first, _server_doc("src-3"), record="rec-3"), {importer})


def test_two_imports_racing_into_vaults_of_each_kind_are_decided_one_at_a_time(
        app: App, project: str, importer: str) -> None:
    import threading

    sealed, plain = _sealed_vault(app, project), _vault(app, project)
    start = threading.Barrier(2)
    outcomes: list[str] = []

    def race(vault: str, n: int) -> None:
        start.wait()
        try:
            _prepare(app, project, _request(vault, _server_doc(f"src-{n}"), record=f"r{n}"),
                     {importer})
            outcomes.append("allowed")
        except errors.ReplicaEncryptionMismatch:
            outcomes.append("refused")

    for _ in range(5):
        threads = [threading.Thread(target=race, args=(v, n))
                   for n, v in enumerate((sealed, plain), start=len(outcomes))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        with app.db.begin() as s:  # start each round afresh
            for record in s.query(ReplicationRecord):
                s.delete(record)
    assert sorted(outcomes) == ["allowed"] * 5 + ["refused"] * 5


def test_an_unknown_region_is_not_called_a_region_of_the_target(
        app: App, project: str, importer: str) -> None:
    vault = _vault(app, project)
    with pytest.raises(errors.RegionNotSupported, match="has no region 'region-9'"):
        _prepare(app, project, _request(vault, region="region-9"), {importer})
    with pytest.raises(errors.RegionNotSupported, match="'region-2' of the target cloud does "
                                                        "not accept"):
        _prepare(app, project, _request(vault, region="region-2"), {importer})
