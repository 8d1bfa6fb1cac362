"""DiffBackups and WalkBackupFiles on the wire, and `cbr backup diff` on top of
them: only the caller's file-system backups are read, across vaults of the
account, and the CLI prints restic's marks or JSON lines."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import grpc
import pytest

from agent.dataplane import Progress
from agent.dataplane.tree_backup import backup_tree
from cbr import errors
from cbr.client import Client, error_from_rpc
from cbr.repo import Manifest, Resource
from cbr.v1 import backup_pb2, common_pb2, iam_pb2, vault_pb2
from cli.main import main
from controller.persistence.models import Backup
from tests.support.inproc import RunningController


def _vault(client: Client, name: str, kind: int = common_pb2.OBJECT_TYPE_TURBO) -> str:
    return client.vaults.CreateVault(vault_pb2.CreateVaultRequest(
        name=name, object_type=kind, size_gb=10)).vault.id  # type: ignore[arg-type]


def _backup(rc: RunningController, project: str, vault_id: str, src: Path, *,
            kind: str = "turbo", status: str = "available") -> str:
    """A backup of ``src`` written into the vault's storage and catalogued,
    as an agent's backup task would leave it."""
    app = rc.app
    now = app.clock.now()
    with app.db.begin() as s:
        row = Backup(project_id=project, vault_id=vault_id, name="b", resource_id="fs",
                     resource_type=kind, status=status, created_at=now, updated_at=now)
        s.add(row)
        s.flush()
        backup_id = row.id
        from controller.persistence.models import Vault
        vault = s.get(Vault, vault_id)
        assert vault is not None
        url = vault.storage_url
    with app.storage.repository(url) as repo:
        content = backup_tree(repo, src, progress=Progress()).content
        digest = repo.save_manifest(Manifest(
            backup_id=backup_id, name="b", checkpoint_id="cp", vault_id=vault_id,
            resource=Resource("fs", "fs", "OS::Sfs::Turbo", 0), created_at=now,
            chunk_key_id=repo.config.chunk_key_id, content=content))
    with app.db.begin() as s:
        stored = s.get(Backup, backup_id)
        assert stored is not None
        stored.manifest_sha256 = digest
    return backup_id


def _tree(root: Path) -> Path:
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "hosts").write_bytes(b"127.0.0.1 localhost\n")
    (root / "etc" / "gone").write_bytes(b"removed later")
    (root / "var").mkdir()
    (root / "var" / "log").write_bytes(b"log")
    return root


def _change(root: Path) -> None:
    (root / "etc" / "gone").unlink()
    (root / "etc" / "hosts").write_bytes(b"127.0.0.1 localhost and more\n")
    (root / "etc" / os.fsdecode(b"new-\xff")).write_bytes(b"added")


def _refused(call: object, request: object) -> tuple[grpc.StatusCode, str, str]:
    with pytest.raises(grpc.RpcError) as exc:
        list(call(request))  # type: ignore[operator]
    err = error_from_rpc(exc.value)
    return exc.value.code(), err.code if err else "", exc.value.details() or ""


def _diff(client: Client, a: str, b: str, path: str = "") -> list[backup_pb2.DiffBackupsResponse]:
    return list(client.backups.DiffBackups(backup_pb2.DiffBackupsRequest(
        backup_id=a, other_backup_id=b, path=path)))


def test_two_backups_in_one_vault_differ_by_what_changed_between_them(
        api: RunningController, tmp_path: Path) -> None:
    client = api.client()
    vault = _vault(client, "fs")
    src = _tree(tmp_path / "src")
    first = _backup(api, api.account_id, vault, src)
    _change(src)
    second = _backup(api, api.account_id, vault, src)
    responses = _diff(client, first, second)
    changes = {c.raw_path: c for r in responses for c in r.changes}
    assert set(changes) == {b"/etc", b"/etc/gone", b"/etc/hosts", b"/etc/new-\xff"}
    assert changes[b"/etc/gone"].kind == backup_pb2.CHANGE_KIND_REMOVED
    assert changes[b"/etc/new-\xff"].kind == backup_pb2.CHANGE_KIND_ADDED
    assert changes[b"/etc/new-\xff"].path == "/etc/new-\\xff"
    assert list(changes[b"/etc/hosts"].changed)[:2] == ["content", "size"]
    summary = responses[-1].summary
    assert (summary.added, summary.removed, summary.modified) == (1, 1, 2)
    assert not summary.content_by_metadata
    only_var = _diff(client, first, second, "var")
    assert [c for r in only_var for c in r.changes] == []


def test_backups_in_two_vaults_of_the_account_compare_by_metadata(
        sqlite_api: RunningController, tmp_path: Path) -> None:
    client = sqlite_api.client()
    src = _tree(tmp_path / "src")
    first = _backup(sqlite_api, sqlite_api.account_id, _vault(client, "one"), src)
    second = _backup(sqlite_api, sqlite_api.account_id, _vault(client, "two"), src)
    responses = _diff(client, first, second)
    assert [c for r in responses for c in r.changes] == []
    assert responses[-1].summary.content_by_metadata


def test_another_accounts_backup_is_not_found_and_bad_input_is_refused_with_its_code(
        sqlite_api: RunningController, tmp_path: Path) -> None:
    admin = sqlite_api.client()
    made = admin.iam.CreateAccount(iam_pb2.CreateAccountRequest(name="tenant-b",
                                                                admin_user_name="bob"))
    bob = Client(sqlite_api.endpoint, made.access_key.access_key_id,
                 made.access_key.secret_access_key, insecure=True)
    src = _tree(tmp_path / "src")
    mine = _backup(sqlite_api, sqlite_api.account_id, _vault(admin, "fs"), src)
    theirs = _backup(sqlite_api, made.account.id, _vault(bob, "fs-b"), src)
    disk = _backup(sqlite_api, sqlite_api.account_id,
                   _vault(admin, "disks", common_pb2.OBJECT_TYPE_DISK), src, kind="disk")
    failed = _backup(sqlite_api, sqlite_api.account_id, _vault(admin, "fs-2"), src,
                     status="error")
    diff, walk = admin.backups.DiffBackups, admin.backups.WalkBackupFiles
    cases = [
        (diff, backup_pb2.DiffBackupsRequest(backup_id=mine, other_backup_id=theirs),
         grpc.StatusCode.NOT_FOUND, errors.ResourceNotFound.code, theirs),
        (diff, backup_pb2.DiffBackupsRequest(backup_id=theirs, other_backup_id=mine),
         grpc.StatusCode.NOT_FOUND, errors.ResourceNotFound.code, theirs),
        (walk, backup_pb2.WalkBackupFilesRequest(backup_id=theirs),
         grpc.StatusCode.NOT_FOUND, errors.ResourceNotFound.code, theirs),
        (diff, backup_pb2.DiffBackupsRequest(backup_id=mine, other_backup_id=disk),
         grpc.StatusCode.INVALID_ARGUMENT, errors.InvalidParameter.code, "only file-system"),
        (diff, backup_pb2.DiffBackupsRequest(backup_id=mine),
         grpc.StatusCode.INVALID_ARGUMENT, errors.InvalidParameter.code, "other_backup_id"),
        (diff, backup_pb2.DiffBackupsRequest(backup_id=mine, other_backup_id=mine,
                                             path="etc/hosts"),
         grpc.StatusCode.INVALID_ARGUMENT, errors.InvalidParameter.code, "give a directory"),
        (diff, backup_pb2.DiffBackupsRequest(backup_id=mine, other_backup_id=mine,
                                             path="nowhere"),
         grpc.StatusCode.NOT_FOUND, errors.PathNotInBackup.code, "/nowhere"),
        (diff, backup_pb2.DiffBackupsRequest(backup_id=mine, other_backup_id=failed),
         grpc.StatusCode.FAILED_PRECONDITION, errors.BackupStatusIllegal.code, "error"),
    ]
    for call, request, status, code, words in cases:
        got = _refused(call, request)
        assert got[:2] == (status, code), (request, got)
        assert words in got[2]
    assert [c for r in _diff(bob, theirs, theirs) for c in r.changes] == []
    bob.close()


def _cli(rc: RunningController, *argv: str) -> int:
    return main(["--endpoint", rc.endpoint, "--access-key", rc.access_key,
                 "--secret-key", rc.secret_key, "--insecure", *argv])


def test_cli_prints_marks_and_a_summary_or_json_lines(
        sqlite_api: RunningController, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    client = sqlite_api.client()
    vault = _vault(client, "fs")
    src = _tree(tmp_path / "src")
    first = _backup(sqlite_api, sqlite_api.account_id, vault, src)
    _change(src)
    second = _backup(sqlite_api, sqlite_api.account_id, vault, src)

    assert _cli(sqlite_api, "backup", "diff", first, second) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:4] == ["U    /etc/", "-    /etc/gone", "M    /etc/hosts", "+    /etc/new-\\xff"]
    assert "Added:    1 entries, 34 B" in out and "Changed:  2 entries" in out

    assert _cli(sqlite_api, "backup", "diff", first, second, "--output", "json") == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    added = next(d for d in lines if d.get("kind") == "added")
    assert base64.b64decode(added["raw_path"]) == b"/etc/new-\xff" and added["size"] == 5
    assert lines[-1]["summary"]["removed"] == 1
    assert lines[-1]["summary"]["bytes_removed"] == len(b"removed later") + 20


def test_cli_compares_a_backup_with_a_local_directory_without_reading_content(
        sqlite_api: RunningController, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    client = sqlite_api.client()
    src = _tree(tmp_path / "src")
    os.symlink("/etc/passwd", src / "var" / "outside")  # compared, never followed
    backup = _backup(sqlite_api, sqlite_api.account_id, _vault(client, "fs"), src)
    assert _cli(sqlite_api, "backup", "diff", backup, "--against", str(src)) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines()[1:] == ["Added:    0 entries, 0 B",
                                             "Removed:  0 entries, 0 B",
                                             "Changed:  0 entries"]
    assert "size and mtime" in captured.err
    _change(src)
    assert _cli(sqlite_api, "-o", "json", "backup", "diff", backup, "--path", "etc",
                "--against", str(src / "etc")) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    marks = {d["path"]: (d["kind"], d["changed"]) for d in lines[:-1]}
    assert marks["/etc/gone"][0] == "removed" and marks["/etc/new-\\xff"][0] == "added"
    assert marks["/etc/hosts"] == ("modified", ["content", "size", "mtime"])
    assert lines[-1]["summary"]["content_by_metadata"] is True
    assert _cli(sqlite_api, "backup", "diff", backup) == 2
