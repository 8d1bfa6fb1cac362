"""Deletion and prune on a real local vault: exact freeing, repacking, crashes
between steps, and backups racing prune (storage format section 12)."""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
import time
from contextlib import suppress
from pathlib import Path

import pytest

from cbr.repo import Manifest, Repository, Resource, layout
from cbr.repo.content.blob import BlobType
from cbr.repo.maintenance.locks import Lock, LockConflict, live_locks
from cbr.repo.maintenance.prune import delete_backup, prune
from cbr.repo.maintenance.verify import verify
from cbr.repo.maintenance.walk import complete_manifests, iter_reachable
from cbr.repo.objects.disk_map import DiskMapBuilder
from cbr.repo.objects.manifest import TreeContent
from cbr.repo.objects.tree import EntryType, TreeEntry, encode_chunk_list, encode_tree
from cbr.storage import StorageError
from cbr.storage.local import LocalBackend
from tests.support.faulty import Fault, FaultyBackend

KiB = 1 << 10
BLOCK = 64 * KiB
NOW = dt.datetime(2026, 11, 25, tzinfo=dt.UTC)


def _open(root: Path, backend: object = None) -> Repository:
    return Repository.open(backend or LocalBackend(root / "vault"))  # type: ignore[arg-type]


def _manifest(repo: Repository, backup_id: str, content: object, *,
              parent_id: str | None = None, children: list[str] | None = None) -> Manifest:
    return Manifest(backup_id=backup_id, name=backup_id, checkpoint_id="cp", vault_id="v1",
                    resource=Resource("r", "disk", "disk", 0), created_at=NOW,
                    chunk_key_id=repo.config.chunk_key_id, content=content,  # type: ignore[arg-type]
                    parent_id=parent_id, children=children or [])


def _disk(repo: Repository, backup_id: str, blocks: list[bytes], *,
          parent_id: str | None = None, save: bool = True) -> Manifest:
    """A disk backup of ``blocks`` (block i at index i), as the agent writes one."""
    builder = DiskMapBuilder(repo, size=len(blocks) * BLOCK, block_size=BLOCK,
                             segment_entries=4)
    for n, block in enumerate(blocks):
        builder.add(n, repo.save_blob(BlobType.DATA, block))
    manifest = _manifest(repo, backup_id, builder.finish(), parent_id=parent_id)
    if save:
        repo.save_manifest(manifest)
    return manifest


def _tree(repo: Repository, backup_id: str, files: dict[bytes, list[bytes]]) -> Manifest:
    """A file-system backup: one subdirectory, files with inline content and one
    with a chunk list."""
    entries = []
    for name, chunks in sorted(files.items()):
        ids = [repo.save_blob(BlobType.DATA, c) for c in chunks]
        if name.startswith(b"big"):
            lst = repo.save_blob(BlobType.META, encode_chunk_list(ids))
            entries.append(TreeEntry(name, EntryType.FILE, content_list=[lst]))
        else:
            entries.append(TreeEntry(name, EntryType.FILE, content=ids))
    sub = repo.save_blob(BlobType.META, encode_tree(entries))
    root = repo.save_blob(BlobType.META, encode_tree([TreeEntry(b"d", EntryType.DIR,
                                                                subtree=sub)]))
    manifest = _manifest(repo, backup_id, TreeContent(root))
    repo.save_manifest(manifest)
    return manifest


def _blocks(n: int) -> list[bytes]:
    return [os.urandom(BLOCK) for _ in range(n)]


def _reachable(repo: Repository) -> set[bytes]:
    manifests, _ = complete_manifests(repo)
    return {cid for m in manifests for _t, cid in iter_reachable(repo, m)}


def _assert_every_backup_restores(root: Path) -> None:
    """What a restore needs: every blob every finished backup reaches loads and
    verifies from a freshly opened vault."""
    repo = _open(root)
    manifests, _ = complete_manifests(repo)
    for m in manifests:
        for _t, cid in iter_reachable(repo, m):
            repo.load_blob(cid, key_id=m.chunk_key_id)
    assert verify(repo, read_data=True).ok


def _stored_chunks(root: Path) -> set[bytes]:
    """Chunk ids in every pack header in storage (indexed or not)."""
    repo = _open(root)
    return {e.chunk_id for p in repo.list_packs() for e in repo.read_pack_header(p)}


def _packs(root: Path) -> set[str]:
    return {p.name for p in (root / "vault" / "data").rglob("*") if p.is_file()}


@pytest.fixture
def vault(tmp_path: Path) -> Repository:
    return Repository.init(LocalBackend(tmp_path / "vault"), vault_id="v1", encrypted=False,
                           pack_size=4 * BLOCK)


# -- deleting -----------------------------------------------------------------------------------


def test_deleting_a_server_backup_removes_its_disks_and_is_idempotent(vault: Repository) -> None:
    _disk(vault, "disk-a", _blocks(2), parent_id="srv")
    _disk(vault, "disk-b", _blocks(2), parent_id="srv")
    vault.save_manifest(_manifest(vault, "srv", None, children=["disk-a", "disk-b"]))
    _disk(vault, "other", _blocks(1))
    assert delete_backup(vault, "srv") == ["disk-a", "disk-b", "srv"]
    assert sorted(vault.list_manifests()) == ["other"]
    assert delete_backup(vault, "srv") == ["srv"]  # again: nothing left, no error


# -- what prune frees ------------------------------------------------------------------------


def test_prune_frees_exactly_the_dead_chunks_and_every_backup_still_restores(
        tmp_path: Path, vault: Repository) -> None:
    shared = _blocks(3)
    _disk(vault, "b1", shared + _blocks(5))
    _disk(vault, "b2", shared + _blocks(2))
    _tree(vault, "t1", {b"a": _blocks(2), b"big": _blocks(3)})
    _tree(vault, "t2", {b"a": _blocks(1)})
    delete_backup(vault, "b1")
    delete_backup(vault, "t1")
    live = _reachable(_open(tmp_path))
    report = prune(_open(tmp_path), repack_dead_fraction=0.0)
    assert report.packs_deleted >= 1 and report.bytes_freed > 0
    assert report.live_blobs == len(live) and report.dead_blobs > 0
    assert report.pending_sweeps == 0
    assert _stored_chunks(tmp_path) == live  # nothing dead left, nothing live lost
    assert not list((tmp_path / "vault" / "condemned").glob("*"))
    _assert_every_backup_restores(tmp_path)
    again = prune(_open(tmp_path))
    assert again.packs_condemned == 0 and again.packs_deleted == 0


def test_a_mostly_dead_pack_is_repacked_and_a_mostly_live_one_kept(
        tmp_path: Path, vault: Repository) -> None:
    blocks = _blocks(8)  # two data packs of four blocks
    _disk(vault, "b1", blocks)
    _disk(vault, "b2", [*blocks[:3], blocks[4]])  # pack 1: 1/4 dead; pack 2: 3/4 dead
    delete_backup(vault, "b1")
    before = _packs(tmp_path)
    report = prune(_open(tmp_path))
    assert report.packs_repacked == 1 and report.bytes_repacked > 0
    after = _packs(tmp_path)
    assert len(before - after) >= 2  # the repacked pack and b1's meta pack
    assert _stored_chunks(tmp_path) == _reachable(_open(tmp_path)) | {
        _open(tmp_path).hasher().chunk_id(blocks[3])}  # the quarter-dead pack stays whole
    _assert_every_backup_restores(tmp_path)


def test_an_unfinished_server_backups_disks_count_as_deleted(tmp_path: Path,
                                                              vault: Repository) -> None:
    _disk(vault, "orphan-disk", _blocks(4), parent_id="srv-never-written")
    report = prune(_open(tmp_path))
    assert report.backups_unfinished == 1 and report.packs_deleted >= 1
    assert _stored_chunks(tmp_path) == set()


def test_an_unindexed_pack_holding_live_chunks_is_reindexed_not_deleted(
        tmp_path: Path, vault: Repository) -> None:
    _disk(vault, "b1", _blocks(4))
    for index_file in (tmp_path / "vault" / "index").iterdir():
        index_file.unlink()  # as an interrupted earlier prune could leave it
    report = prune(_open(tmp_path))
    assert report.packs_reindexed >= 2 and report.packs_deleted == 0
    _assert_every_backup_restores(tmp_path)


def test_a_second_prune_is_refused_while_one_runs(vault: Repository) -> None:
    with Lock.acquire(vault.backend, kind="prune"), pytest.raises(LockConflict):
        prune(vault)
    assert live_locks(vault.backend) == []


# -- racing backups ----------------------------------------------------------------------------


def test_a_writer_that_loaded_the_index_before_the_mark_gets_its_packs_resurrected(
        tmp_path: Path, vault: Repository) -> None:
    blocks = _blocks(6)
    _disk(vault, "b1", blocks)
    # A backup starts: lock first, then the index (section 11).
    with Lock.acquire(vault.backend, kind="backup") as lock:
        writer = _open(tmp_path)
        delete_backup(vault, "b1")
        report = prune(_open(tmp_path))  # condemns b1's packs but must not delete them
        assert report.packs_condemned >= 2 and report.packs_deleted == 0
        assert report.pending_sweeps == 1
        # The writer deduplicates against what it loaded: no block is stored again.
        _disk(writer, "b2", blocks)
        assert writer.has_blob(_open(tmp_path).hasher().chunk_id(blocks[0]))
        lock.check()
    report = prune(_open(tmp_path))  # the lock is gone: the sweep resurrects
    assert report.packs_deleted == 0 and report.packs_resurrected >= 1
    assert report.pending_sweeps == 0
    _assert_every_backup_restores(tmp_path)


def test_a_server_backup_finishing_after_the_mark_keeps_its_disks(
        tmp_path: Path, vault: Repository) -> None:
    with Lock.acquire(vault.backend, kind="backup"):
        writer = _open(tmp_path)
        _disk(writer, "disk-1", _blocks(4), parent_id="srv")  # child first
        prune(_open(tmp_path))  # sees a child without its parent: condemns its packs
        writer.save_manifest(_manifest(writer, "srv", None, children=["disk-1"]))
    report = prune(_open(tmp_path))
    assert report.packs_resurrected >= 1 and report.packs_deleted == 0
    _assert_every_backup_restores(tmp_path)


def test_a_sweep_waits_for_the_recorded_locks_when_asked(tmp_path: Path,
                                                         vault: Repository) -> None:
    _disk(vault, "b1", _blocks(4))
    delete_backup(vault, "b1")
    lock = Lock(vault.backend, "backup").start()
    threading.Timer(0.3, lock.release).start()
    started = time.monotonic()
    report = prune(_open(tmp_path), sweep_wait=10, poll=0.05)
    assert report.pending_sweeps == 0 and report.packs_deleted >= 2
    assert 0.25 < time.monotonic() - started < 5


def test_a_pack_written_again_after_the_mark_is_not_deleted(tmp_path: Path,
                                                            vault: Repository) -> None:
    blocks = _blocks(4)  # exactly one data pack: a writer storing them again makes it again
    _disk(vault, "b1", blocks)
    delete_backup(vault, "b1")
    with Lock.acquire(vault.backend, kind="backup"):
        prune(_open(tmp_path))  # marks; the sweep waits for this lock
    with Lock.acquire(vault.backend, kind="backup"):
        late = _open(tmp_path)  # started after the mark: b1's blocks are in no index
        for block in blocks:
            late.save_blob(BlobType.DATA, block)
        late.content._wait_uploads()  # the same pack id, stored again, not yet indexed
        report = prune(_open(tmp_path))  # sweeps the first record: the pack stays
        assert any("rewritten after the mark" in n for n in report.notes)
        assert report.pending_sweeps == 1  # its own mark waits for this writer
        _disk(late, "b2", blocks)
    prune(_open(tmp_path))
    _assert_every_backup_restores(tmp_path)


# -- crashes between steps -------------------------------------------------------------------


@pytest.mark.parametrize(("method", "prefix", "skip"), [
    ("delete", "index/", 0),       # mark step 5: new index files written, an old one not deleted
    ("put", "condemned/", 1),      # mark step 6: the record never gets its locks
    ("delete", "data/", 1),        # sweep step 4: some packs deleted, not all
    ("delete", "condemned/", 0),   # sweep step 5: packs gone, record left
    ("put_stream", "data/", 0),    # repack: the copy fails to upload
])
def test_a_prune_that_fails_midway_is_finished_by_the_next_run(
        tmp_path: Path, vault: Repository, method: str, prefix: str, skip: int) -> None:
    shared = _blocks(2)
    _disk(vault, "b1", shared + _blocks(6))
    _disk(vault, "b2", shared + _blocks(1))
    _tree(vault, "t1", {b"big": _blocks(3)})
    delete_backup(vault, "b1")
    live = _reachable(_open(tmp_path))
    faulty = FaultyBackend(LocalBackend(tmp_path / "vault"))
    faulty.add(method, Fault(error=StorageError("injected"), name_prefix=prefix, skip=skip))
    with pytest.raises(StorageError):
        prune(_open(tmp_path, faulty), repack_dead_fraction=0.0)
    _assert_every_backup_restores(tmp_path)  # no gap, even mid-way
    prune(_open(tmp_path), repack_dead_fraction=0.0)
    prune(_open(tmp_path), repack_dead_fraction=0.0)
    assert _stored_chunks(tmp_path) == live
    assert not list((tmp_path / "vault" / "condemned").glob("*"))
    _assert_every_backup_restores(tmp_path)


def test_an_unfinished_condemned_record_is_dropped_without_deleting(
        tmp_path: Path, vault: Repository) -> None:
    _disk(vault, "b1", _blocks(2))
    pack = next(iter(_open(tmp_path).index.pack_ids()))
    record = {"prune_id": "x", "packs": [pack.hex()], "created_at": "", "locks": None}
    vault.backend.put(layout.CONDEMNED + "ab" * 16, json.dumps(record).encode())
    report = prune(_open(tmp_path))
    assert report.packs_deleted == 0 and any("unfinished" in n for n in report.notes)
    _assert_every_backup_restores(tmp_path)


def test_prune_leaves_objects_the_format_does_not_name_alone(
        tmp_path: Path, vault: Repository) -> None:
    """A file a vault did not write (someone else's, in its directory) is never
    deleted, even under condemned/, where prune deletes what it finds."""
    _disk(vault, "b1", _blocks(2))
    foreign = {layout.CONDEMNED + "passwd": b"root:x:0:0\n",
               layout.CONDEMNED + "ab" * 15: b"{}", "notes.txt": b"mine\n",
               layout.INDEX + "readme": b"x", layout.MANIFESTS + "x/../../y": b"x"}
    for name, data in foreign.items():
        with suppress(StorageError, ValueError):
            vault.backend.put(name, data)
    written = {n for n in foreign if _exists(vault, n)}
    assert layout.CONDEMNED + "passwd" in written
    report = prune(_open(tmp_path))
    assert any("foreign object" in n for n in report.notes)
    for name in written:
        assert vault.backend.get(name) == foreign[name]
    _assert_every_backup_restores(tmp_path)


def _exists(vault: Repository, name: str) -> bool:
    try:
        vault.backend.get(name)
    except (StorageError, ValueError):
        return False
    return True


def test_prune_removes_what_killed_writers_left_unfinished_once_it_is_old(
        tmp_path: Path, vault: Repository) -> None:
    """Issue 19: temp files of killed writers stayed for ever."""
    from cbr.storage.local import TEMP_PREFIX

    _disk(vault, "b1", _blocks(2))
    pack_dir = next(p for p in (tmp_path / "vault" / "data").iterdir() if p.is_dir())
    old = pack_dir / f"{TEMP_PREFIX}killed"
    old.write_bytes(b"k" * 5000)
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    fresh = pack_dir / f"{TEMP_PREFIX}writing"
    fresh.write_bytes(b"w" * 10)
    report = prune(_open(tmp_path))
    assert (report.abandoned_writes, report.abandoned_bytes) == (1, 5000)
    assert report.to_dict()["abandoned_bytes_freed"] == 5000
    assert not old.exists() and fresh.exists()
    _assert_every_backup_restores(tmp_path)
