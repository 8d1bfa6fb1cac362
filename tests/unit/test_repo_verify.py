"""verify (storage format section 13): every problem names the backups, the
chunk and the pack, on a real local vault."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cbr.repo import Repository, layout
from cbr.repo.content.blob import BlobType
from cbr.repo.content.index import Location
from cbr.repo.maintenance.verify import verify
from cbr.storage.backend import BackendWrapper
from cbr.storage.local import LocalBackend
from tests.unit.test_repo_prune import BLOCK, _blocks, _disk, _manifest, _open, _tree


@pytest.fixture
def vault(tmp_path: Path) -> Repository:
    return Repository.init(LocalBackend(tmp_path / "vault"), vault_id="v1", encrypted=False,
                           pack_size=4 * BLOCK)


def _pack_path(root: Path, pack_id: bytes) -> Path:
    return root / "vault" / "data" / pack_id.hex()[:2] / pack_id.hex()


def _location(root: Path, block: bytes) -> tuple[bytes, Location]:
    repo = _open(root)
    cid = repo.hasher().chunk_id(block)
    loc = repo.index.lookup(repo.config.chunk_key_id, cid)
    assert loc is not None
    return cid, loc


def test_a_healthy_vault_verifies_with_and_without_reading_data(tmp_path: Path,
                                                                vault: Repository) -> None:
    _disk(vault, "b1", _blocks(5))
    _tree(vault, "t1", {b"a": _blocks(2), b"big": _blocks(2)})
    report = verify(_open(tmp_path), read_data=True)
    assert report.ok and report.backups == 2
    assert report.blobs_read >= 9 and report.bytes_read > 9 * BLOCK
    assert verify(_open(tmp_path)).ok


def test_a_flipped_bit_names_every_backup_reaching_the_chunk_and_its_pack(
        tmp_path: Path, vault: Repository) -> None:
    shared = _blocks(1)[0]
    _disk(vault, "b1", [shared, *_blocks(2)])
    _disk(vault, "b2", [shared])
    _disk(vault, "b3", _blocks(1))
    cid, loc = _location(tmp_path, shared)
    path = _pack_path(tmp_path, loc.pack_id)
    raw = bytearray(path.read_bytes())
    raw[loc.offset + 10] ^= 0x01
    path.write_bytes(bytes(raw))
    assert verify(_open(tmp_path)).ok  # structure intact: only reading finds it
    report = verify(_open(tmp_path), read_data=True)
    assert report.damaged_backups == ["b1", "b2"]
    blob = next(p for p in report.problems if p.kind == "bad-blob")
    assert blob.chunk_id == cid.hex() and blob.pack_id == loc.pack_id.hex()
    assert blob.backups == ["b1", "b2"]
    assert any(p.kind == "pack-hash" and p.pack_id == loc.pack_id.hex()
               for p in report.problems)
    assert f"chunk {cid.hex()}" in str(blob) and "backup b1, b2" in str(blob)
    assert "cbr vault repair" in str(blob)  # what to do about it


def test_a_deleted_pack_names_the_backup_and_the_pack(tmp_path: Path,
                                                      vault: Repository) -> None:
    block = _blocks(1)[0]
    _disk(vault, "b1", [block])
    _disk(vault, "b2", _blocks(1))
    cid, loc = _location(tmp_path, block)
    _pack_path(tmp_path, loc.pack_id).unlink()
    report = verify(_open(tmp_path))
    problem = next(p for p in report.problems if p.kind == "missing-pack")
    assert problem.pack_id == loc.pack_id.hex() and problem.backups == ["b1"]
    assert problem.chunk_id == cid.hex()
    assert report.damaged_backups == ["b1"]


def test_a_truncated_pack_is_found_without_reading_data(tmp_path: Path,
                                                        vault: Repository) -> None:
    _disk(vault, "b1", _blocks(3))
    pack = next(iter(_open(tmp_path).index.pack_ids()))
    path = _pack_path(tmp_path, pack)
    path.write_bytes(path.read_bytes()[:100])
    report = verify(_open(tmp_path))
    assert any(p.kind == "truncated-pack" and p.pack_id == pack.hex() for p in report.problems)
    assert report.damaged_backups == ["b1"]


def test_a_missing_index_entry_names_the_chunk_and_the_pack_that_still_holds_it(
        tmp_path: Path, vault: Repository) -> None:
    blocks = _blocks(2)
    _disk(vault, "b1", blocks)
    repo = _open(tmp_path)
    cid, loc = _location(tmp_path, blocks[0])
    # Rewrite the index without the pack holding the block.
    kept = [(p, e) for f in repo.list_index_files() for p, e in repo.read_index_file(f)
            if p != loc.pack_id]
    for f in repo.list_index_files():
        repo.backend.delete(layout.index_name(f))
    repo.write_index_files(kept)
    report = verify(_open(tmp_path))
    problem = next(p for p in report.problems if p.kind == "missing-chunk"
                   and p.chunk_id == cid.hex())
    assert problem.backups == ["b1"] and problem.pack_id == loc.pack_id.hex()
    assert report.damaged_backups == ["b1"] and report.unindexed_packs == 1


def test_a_damaged_disk_names_its_server_backup(tmp_path: Path, vault: Repository) -> None:
    block = _blocks(1)[0]
    _disk(vault, "disk-1", [block], parent_id="srv")
    vault.save_manifest(_manifest(vault, "srv", None, children=["disk-1"]))
    _cid, loc = _location(tmp_path, block)
    _pack_path(tmp_path, loc.pack_id).unlink()
    report = verify(_open(tmp_path))
    assert report.damaged_backups == ["srv"]
    assert report.problems[0].backups == ["disk-1"]  # the problem names the disk itself


def test_unreferenced_damage_is_reported_without_a_damaged_backup(
        tmp_path: Path, vault: Repository) -> None:
    vault.save_blob(BlobType.DATA, os.urandom(BLOCK))
    vault.flush()  # indexed, reached by no manifest
    pack = next(iter(_open(tmp_path).index.pack_ids()))
    _pack_path(tmp_path, pack).unlink()
    report = verify(_open(tmp_path))
    assert not report.ok and report.damaged_backups == []


class _BackupMidway(BackendWrapper):
    """Runs ``action`` (a backup finishing) when verify first reads a pack."""

    def __init__(self, inner: LocalBackend, action: Callable[[], None]) -> None:
        super().__init__(inner)
        self.action: Callable[[], None] | None = action

    def _maybe(self, name: str) -> None:
        if self.action is not None and name.startswith(layout.DATA):
            action, self.action = self.action, None
            action()

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        self._maybe(name)
        return super().get(name, offset, length)

    def iter_get(self, name: str, offset: int = 0, length: int | None = None,
                 chunk_size: int = 1 << 20) -> Iterator[bytes]:
        self._maybe(name)
        return super().iter_get(name, offset, length, chunk_size)


def test_a_backup_finishing_while_verify_runs_is_not_reported_damaged(
        tmp_path: Path, vault: Repository) -> None:
    """Issue 19: 5 of 5 healthy backups that finished during verify --read-data
    were reported as chunks in no index."""
    _disk(vault, "b1", _blocks(5))
    backend = _BackupMidway(LocalBackend(tmp_path / "vault"),
                            lambda: _disk(_open(tmp_path), "b2", _blocks(6)) and None)
    report = verify(Repository.open(backend), read_data=True)
    assert backend.action is None  # the second backup did finish mid-verify
    assert report.ok, report.problems
    assert report.backups == 1  # b2 was not listed yet: wholly unseen, not half seen
    assert verify(_open(tmp_path), read_data=True).ok  # and the next verify sees it whole
    assert verify(_open(tmp_path)).backups == 2
