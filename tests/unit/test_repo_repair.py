"""Repair (storage format section 13.1) on a real local vault: damage costs
only what it destroyed, the rest reads again, the lost chunks come back with
the next backup that holds them, and a dry run writes nothing."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from cbr.repo import Repository
from cbr.repo.content.blob import BlobType
from cbr.repo.maintenance.prune import delete_backup, prune
from cbr.repo.maintenance.repair import repair
from cbr.repo.maintenance.verify import verify
from cbr.repo.maintenance.walk import complete_manifests, iter_reachable
from cbr.repo.objects.manifest import TreeContent
from cbr.repo.objects.tree import EntryType, TreeEntry, encode_tree
from cbr.storage.local import TEMP_PREFIX, LocalBackend
from tests.unit.test_repo_prune import BLOCK, _blocks, _disk, _manifest, _open
from tests.unit.test_repo_repository import WRAPPER
from tests.unit.test_repo_verify import _location, _pack_path


@pytest.fixture
def vault(tmp_path: Path) -> Repository:
    return Repository.init(LocalBackend(tmp_path / "vault"), vault_id="v1", encrypted=False,
                           pack_size=4 * BLOCK)


def _whole(root: Path) -> list[str]:
    """The finished backups every blob of which loads and verifies."""
    repo = _open(root)
    manifests, _ = complete_manifests(repo)
    whole = []
    for m in manifests:
        try:
            for _t, cid in iter_reachable(repo, m):
                repo.load_blob(cid, key_id=m.chunk_key_id)
        except Exception:
            continue
        whole.append(m.backup_id)
    return whole


def _snapshot(root: Path) -> dict[str, str]:
    """Every file of the vault but its locks, by content."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((root / "vault").rglob("*"))
            if p.is_file() and "locks" not in p.parts}


def _flip(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))


def test_a_flipped_blob_costs_only_the_backups_reaching_it_and_the_next_backup_heals_them(
        tmp_path: Path, vault: Repository) -> None:
    shared = _blocks(1)[0]
    neighbours = _blocks(3)  # same pack as the flipped blob: they must survive
    _disk(vault, "b1", [shared, *neighbours])
    _disk(vault, "b2", [shared])
    _disk(vault, "b3", neighbours)
    _cid, loc = _location(tmp_path, shared)
    bad_pack = _pack_path(tmp_path, loc.pack_id)
    _flip(bad_pack, loc.offset + 10)

    report = repair(_open(tmp_path))
    assert report.damaged_packs == [loc.pack_id.hex()] and report.packs_deleted == 1
    assert report.blobs_salvaged >= 3 and report.chunks_lost == 1
    assert report.damaged_backups == ["b1", "b2"]
    assert not bad_pack.exists()
    assert sorted(_whole(tmp_path)) == ["b3"]
    after = verify(_open(tmp_path), read_data=True)
    assert {p.kind for p in after.problems} == {"missing-chunk"}
    assert after.damaged_backups == ["b1", "b2"]

    # The lost chunk is in no index now: a backup that holds it stores it again.
    _disk(_open(tmp_path), "b4", [shared])
    assert sorted(_whole(tmp_path)) == ["b1", "b2", "b3", "b4"]
    assert verify(_open(tmp_path), read_data=True).ok
    assert repair(_open(tmp_path)).damaged_backups == []


def test_a_pack_whose_header_is_damaged_is_salvaged_whole_through_the_index(
        tmp_path: Path, vault: Repository) -> None:
    blocks = _blocks(3)
    _disk(vault, "b1", blocks)
    _cid, loc = _location(tmp_path, blocks[0])
    pack = _pack_path(tmp_path, loc.pack_id)
    _flip(pack, pack.stat().st_size - 40)  # in the header
    assert not verify(_open(tmp_path), read_data=True).ok

    report = repair(_open(tmp_path))
    assert report.damaged_packs == [loc.pack_id.hex()] and report.chunks_lost == 0
    assert report.damaged_backups == []
    # Gone, or (unencrypted packs are deterministic) made again whole by the salvage.
    assert not pack.exists() or hashlib.sha256(pack.read_bytes()).digest() == loc.pack_id
    assert verify(_open(tmp_path), read_data=True).ok
    assert _whole(tmp_path) == ["b1"]


def test_a_dry_run_reports_what_repair_would_do_and_writes_nothing(
        tmp_path: Path, vault: Repository) -> None:
    shared = _blocks(1)[0]
    _disk(vault, "b1", [shared, *_blocks(2)])
    _disk(vault, "b2", _blocks(2))
    index_file = sorted((tmp_path / "vault" / "index").iterdir())[0]
    _flip(index_file, 40)
    _cid, loc = _location(tmp_path, shared)
    _flip(_pack_path(tmp_path, loc.pack_id), loc.offset + 5)
    temp = tmp_path / "vault" / "data" / f"{TEMP_PREFIX}killed"
    temp.write_bytes(b"x" * 100)
    old = time.time() - 3 * 3600
    os.utime(temp, (old, old))
    before = _snapshot(tmp_path)

    planned = repair(_open(tmp_path), dry_run=True)
    assert _snapshot(tmp_path) == before
    assert planned.dry_run and planned.damaged_index_files == [index_file.name]
    assert planned.damaged_packs == [loc.pack_id.hex()] and planned.chunks_lost == 1
    assert planned.abandoned_writes == 1 and planned.abandoned_bytes == 100
    assert planned.damaged_backups == ["b1"]

    done = repair(_open(tmp_path))
    assert done.damaged_backups == planned.damaged_backups
    assert done.chunks_lost == planned.chunks_lost
    assert not temp.exists() and not index_file.exists()
    assert _open(tmp_path).damaged_index_files == {}
    assert _whole(tmp_path) == ["b2"]
    # Clean but for the one lost chunk, which verify names with its backup.
    after = verify(_open(tmp_path), read_data=True)
    assert [(p.kind, p.backups) for p in after.problems] == [("missing-chunk", ["b1"])]


def test_a_missing_pack_leaves_the_index_and_prune_goes_on(
        tmp_path: Path, vault: Repository) -> None:
    gone = _blocks(1)[0]
    _disk(vault, "b1", [gone])
    _disk(vault, "b2", _blocks(2))
    _cid, loc = _location(tmp_path, gone)
    _pack_path(tmp_path, loc.pack_id).unlink()

    report = repair(_open(tmp_path))
    assert report.missing_packs == [loc.pack_id.hex()] and report.damaged_backups == ["b1"]
    assert loc.pack_id not in _open(tmp_path).index.pack_ids()
    pruned = prune(_open(tmp_path))
    assert pruned.backups == 2
    assert _whole(tmp_path) == ["b2"]


def test_a_lost_tree_costs_only_what_lies_below_it_and_prune_keeps_the_rest(
        tmp_path: Path, vault: Repository) -> None:
    """Prune used to stop for good on a backup with an unreadable tree; now
    it walks past a tree found nowhere and keeps every chunk still reached."""
    kept_block, lost_block = _blocks(2)
    kept_sub = vault.save_blob(BlobType.META, encode_tree([TreeEntry(
        b"f", EntryType.FILE, content=[vault.save_blob(BlobType.DATA, kept_block)])]))
    vault.flush()  # the lost subtree goes to a pack of its own
    lost_sub = vault.save_blob(BlobType.META, encode_tree([TreeEntry(
        b"g", EntryType.FILE, content=[vault.save_blob(BlobType.DATA, lost_block)])]))
    root = vault.save_blob(BlobType.META, encode_tree([
        TreeEntry(b"a", EntryType.DIR, subtree=lost_sub),
        TreeEntry(b"b", EntryType.DIR, subtree=kept_sub)]))
    vault.save_manifest(_manifest(vault, "t1", TreeContent(root)))
    repo = _open(tmp_path)
    loc = repo.index.lookup(repo.config.chunk_key_id, lost_sub)
    assert loc is not None
    _flip(_pack_path(tmp_path, loc.pack_id), loc.offset + 3)

    with pytest.raises(Exception, match="cbr vault repair"):
        prune(_open(tmp_path))  # present but damaged: prune stops, naming repair
    assert repair(_open(tmp_path)).damaged_backups == ["t1"]
    prune(_open(tmp_path))
    kept = _open(tmp_path)
    assert kept.load_blob(kept_sub) and kept.load_blob(kept.hasher().chunk_id(kept_block))


def test_repair_indexes_the_packs_of_a_writer_still_running_and_its_backup_finishes_whole(
        tmp_path: Path, vault: Repository) -> None:
    vault.close()
    writer = Repository.open(LocalBackend(tmp_path / "vault"))
    writer.save_blob(BlobType.DATA, os.urandom(5 * BLOCK))  # a whole pack, stored at once
    writer.content._wait_uploads()
    assert _open(tmp_path).list_unindexed_packs()
    report = repair(_open(tmp_path))
    assert report.packs_reindexed == 1 and report.damaged_packs == []
    _disk(writer, "b1", _blocks(2))  # the writer goes on and finishes
    writer.close()
    assert verify(_open(tmp_path), read_data=True).ok
    assert _whole(tmp_path) == ["b1"]


def test_an_encrypted_vault_is_repaired_the_same_way(tmp_path: Path) -> None:
    def opened() -> Repository:
        return Repository.open(LocalBackend(tmp_path / "vault"), unwrap=WRAPPER.unwrap)

    vault = Repository.init(LocalBackend(tmp_path / "vault"), vault_id="v1", encrypted=True,
                            key_wrapper=WRAPPER, pack_size=4 * BLOCK)
    shared = _blocks(1)[0]
    _disk(vault, "b1", [shared, *_blocks(2)])
    _disk(vault, "b2", _blocks(2))
    repo = opened()
    loc = repo.index.lookup(repo.config.chunk_key_id, repo.hasher().chunk_id(shared))
    assert loc is not None
    _flip(_pack_path(tmp_path, loc.pack_id), loc.offset + 20)
    report = repair(opened())
    assert report.damaged_backups == ["b1"] and report.chunks_lost == 1
    assert report.packs_deleted == 1 and report.blobs_salvaged >= 1
    _disk(opened(), "b3", [shared])
    assert verify(opened(), read_data=True).ok


def test_a_damaged_manifest_costs_only_its_own_backup(tmp_path: Path,
                                                      vault: Repository) -> None:
    """Verify used to stop at the first manifest that did not read, checking
    no other backup; prune must stop (what it reaches is unknown) until the
    damaged backup is deleted."""
    _disk(vault, "b1", _blocks(2))
    _disk(vault, "b2", _blocks(2))
    _flip(tmp_path / "vault" / "manifests" / "b1", 30)
    report = verify(_open(tmp_path), read_data=True)
    assert report.damaged_backups == ["b1"] and report.backups == 1
    assert [(p.kind, p.backups) for p in report.problems] == [("bad-manifest", ["b1"])]
    assert repair(_open(tmp_path)).damaged_backups == ["b1"]
    with pytest.raises(Exception, match="deleting it lets prune run"):
        prune(_open(tmp_path))
    delete_backup(_open(tmp_path), "b1")
    assert prune(_open(tmp_path)).backups == 1
    assert verify(_open(tmp_path), read_data=True).ok and _whole(tmp_path) == ["b2"]
