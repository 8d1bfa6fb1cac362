"""Deletion, prune and verify on a real local vault, including a backup racing prune."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest

from agent.dataplane import Progress
from agent.dataplane.disk import backup_disk, restore_disk
from cbr.repo import Manifest, Repository, Resource, layout
from cbr.repo.locks import Lock, LockConflict, live_locks
from cbr.repo.prune import delete_backup, prune
from cbr.repo.verify import verify
from cbr.storage.local import LocalBackend

MiB = 1 << 20
NOW = dt.datetime(2026, 11, 25, tzinfo=dt.UTC)


def _open(tmp_path: Path) -> Repository:
    return Repository.open(LocalBackend(tmp_path / "vault"))


def _backup(repo: Repository, img: Path, backup_id: str) -> Manifest:
    result = backup_disk(repo, img, progress=Progress())
    manifest = Manifest(backup_id=backup_id, name=backup_id, checkpoint_id="cp",
                        vault_id="v1", resource=Resource("r", "disk", "disk", img.stat().st_size),
                        created_at=NOW, chunk_key_id=repo.config.chunk_key_id,
                        content=result.content)
    repo.save_manifest(manifest)
    return manifest


def _packs(tmp_path: Path) -> set[str]:
    return {p.name for p in (tmp_path / "vault" / "data").rglob("*") if p.is_file()}


@pytest.fixture
def vault(tmp_path: Path) -> Repository:
    return Repository.init(LocalBackend(tmp_path / "vault"), vault_id="v1", encrypted=False,
                           pack_size=2 * MiB)


def test_prune_frees_only_what_no_backup_needs(tmp_path: Path, vault: Repository) -> None:
    old = tmp_path / "old.img"
    old.write_bytes(os.urandom(8 * MiB))
    _backup(vault, old, "b1")
    img = tmp_path / "d.img"
    img.write_bytes(old.read_bytes()[:4 * MiB] + os.urandom(4 * MiB))
    second = _backup(vault, img, "b2")
    before = _packs(tmp_path)
    delete_backup(vault, "b1")
    report = prune(_open(tmp_path))
    # Packs holding only b1's last four blocks go; packs shared with b2 stay.
    assert report.packs_deleted >= 1 and report.bytes_freed >= MiB
    assert len(_packs(tmp_path)) < len(before)
    repo = _open(tmp_path)
    out = tmp_path / "out.img"
    assert second.content is not None
    restore_disk(repo, second.content, out, progress=Progress())  # type: ignore[arg-type]
    assert out.read_bytes() == img.read_bytes()
    assert verify(repo, read_data=True).ok


def test_a_backup_racing_prune_keeps_the_chunks_it_reused(tmp_path: Path,
                                                           vault: Repository) -> None:
    img = tmp_path / "d.img"
    img.write_bytes(os.urandom(4 * MiB))
    _backup(vault, img, "b1")
    # A backup starts: lock first, then the index (storage format section 11).
    with Lock.acquire(vault.backend, kind="backup") as lock:
        writer = _open(tmp_path)
        delete_backup(vault, "b1")
        report = prune(_open(tmp_path))  # marks b1's packs, but must not delete them
        assert report.packs_condemned >= 1 and report.packs_deleted == 0
        assert report.pending_sweeps == 1
        # The writer deduplicates against what it loaded: every block is known.
        late = _backup(writer, img, "b2")
        assert lock is not None
    report = prune(_open(tmp_path))  # the lock is gone: the sweep resurrects
    assert report.packs_deleted == 0 and report.packs_resurrected >= 1
    repo = _open(tmp_path)
    out = tmp_path / "out.img"
    restore_disk(repo, late.content, out, progress=Progress())  # type: ignore[arg-type]
    assert out.read_bytes() == img.read_bytes()
    assert verify(repo, read_data=True).ok


def test_a_second_prune_is_refused_while_one_runs(vault: Repository) -> None:
    with Lock.acquire(vault.backend, kind="prune"), pytest.raises(LockConflict):
        prune(vault)
    assert live_locks(vault.backend) == []


def test_verify_names_the_damaged_backup_chunk_and_pack(tmp_path: Path,
                                                        vault: Repository) -> None:
    img = tmp_path / "d.img"
    img.write_bytes(os.urandom(6 * MiB))
    _backup(vault, img, "b1")
    other = tmp_path / "e.img"
    other.write_bytes(os.urandom(MiB))
    _backup(vault, other, "b2")
    repo = _open(tmp_path)
    loc = next(loc for _k, _c, loc in repo.index.entries() if loc.raw_length == MiB)
    pack = tmp_path / "vault" / layout.pack_name(loc.pack_id).replace(
        "data/", f"data/{loc.pack_id.hex()[:2]}/")
    raw = bytearray(pack.read_bytes())
    raw[loc.offset + 10] ^= 0xFF
    pack.write_bytes(bytes(raw))
    assert verify(_open(tmp_path)).ok  # structure intact: only reading finds it
    report = verify(_open(tmp_path), read_data=True)
    assert not report.ok
    assert loc.pack_id.hex() in " ".join(report.problems)
    assert report.damaged_backups in (["b1"], ["b2"], ["b1", "b2"])
    pack.unlink()
    report = verify(_open(tmp_path))
    assert any("missing" in p for p in report.problems)
