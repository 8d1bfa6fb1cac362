"""Disk backup and restore on real files: holes, zeros, dedup, incrementals, damage.

Most tests shrink the vault's block size and segment length in memory (a
fresh vault, before any backup) so that a few MiB of disk spans many blocks
and several disk-map segments; the code paths are those of 1 MiB blocks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.dataplane import (
    BackupResult,
    Cancelled,
    Progress,
    SourceUnreadable,
    TargetTooSmall,
    UnsafeTarget,
    disk,
)
from agent.dataplane.disk import backup_disk, data_ranges, disk_size, restore_disk
from cbr.repo import (
    BlobType,
    ChunkNotFound,
    DiskContent,
    IntegrityError,
    Repository,
    TreeContent,
)
from cbr.repo.objects.disk_map import DiskMapReader
from cbr.storage.local import LocalBackend
from tests.support.environment import unavailable

KiB = 1 << 10
MiB = 1 << 20
BS = 64 * KiB  # block size of the small vaults


def _repo(path: Path, *, block_size: int = MiB, segment_entries: int = 4096,
          chunk_key: tuple[bytes, bytes] | None = None) -> Repository:
    repo = Repository.init(LocalBackend(path), vault_id="v1", encrypted=False,
                           chunk_key=chunk_key)
    repo.config = dataclasses.replace(repo.config, block_size=block_size,
                                      segment_entries=segment_entries)
    return repo


def _small(path: Path, chunk_key: tuple[bytes, bytes] | None = None) -> Repository:
    """64 KiB blocks, 8 blocks per segment."""
    return _repo(path, block_size=BS, segment_entries=8, chunk_key=chunk_key)


def _write(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(data)


def _image(path: Path, size: int) -> Path:
    with open(path, "wb") as fh:
        fh.truncate(size)
    return path


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(MiB):
            h.update(chunk)
    return h.hexdigest()


def _allocated(path: Path) -> int:
    return path.stat().st_blocks * 512


def _blocks_read(log: list[tuple[int, int]], bs: int) -> list[int]:
    return [b for start, end in log for b in range(start // bs, -(-end // bs))]


def _content(result: BackupResult) -> DiskContent:
    assert isinstance(result.content, DiskContent)
    return result.content


def _restored_equal(repo: Repository, content: DiskContent | TreeContent, source: Path,
                    out: Path) -> None:
    assert isinstance(content, DiskContent)
    restore_disk(repo, content, out, progress=Progress())
    assert _sha(out) == _sha(source)


# -- full backups -------------------------------------------------------------------------------

def test_holes_and_zero_blocks_are_not_read_or_stored_and_restore_is_sparse(
        tmp_path: Path) -> None:
    img = _image(tmp_path / "d.img", 64 * MiB + 12345)  # odd last block
    _write(img, 3 * MiB + 7, os.urandom(MiB))
    _write(img, 20 * MiB, b"\0" * (4 * MiB))  # allocated zeros
    _write(img, 64 * MiB, os.urandom(12345))
    repo = _repo(tmp_path / "vault")
    log: list[tuple[int, int]] = []
    result = backup_disk(repo, img, progress=Progress(), read_log=log)
    assert result.stats["blocks"] == 3  # 2 for the unaligned MiB, 1 for the tail
    assert result.stats["bytes_new"] == 2 * MiB + 12345
    # Only blocks with data were read: the unaligned MiB, the zeros, the tail.
    assert result.stats["bytes_read"] == sum(b - a for a, b in log)
    assert _blocks_read(log, MiB) == [3, 4, 20, 21, 22, 23, 64]
    assert result.stats["bytes_scanned"] == img.stat().st_size
    assert [b for b, _cid in DiskMapReader(repo, result.content)] == [3, 4, 64]
    out = tmp_path / "out.img"
    _restored_equal(repo, result.content, img, out)
    assert _allocated(out) <= 3 * MiB  # zeros and holes stayed holes
    assert not list(tmp_path.glob(".out.img.cbr-partial-*"))


def test_an_empty_and_a_hole_only_disk_back_up_to_an_empty_map(tmp_path: Path) -> None:
    repo = _repo(tmp_path / "vault")
    for name, size in (("empty.img", 0), ("holes.img", 10 * MiB + 1)):
        img = _image(tmp_path / name, size)
        result = backup_disk(repo, img, progress=Progress())
        assert result.content.segments == [] and result.stats["bytes_read"] == 0
        assert result.content.size == size
        _restored_equal(repo, result.content, img, tmp_path / f"out-{name}")


def test_duplicate_blocks_are_stored_once(tmp_path: Path) -> None:
    img = _image(tmp_path / "d.img", 16 * MiB)
    block = os.urandom(MiB)
    for i in range(0, 16, 2):
        _write(img, i * MiB, block)
    repo = _repo(tmp_path / "vault")
    result = backup_disk(repo, img, progress=Progress())
    assert result.stats["blocks"] == 8
    assert result.stats["bytes_new"] == MiB


def test_many_segments_and_progress_reach_the_disk_size(tmp_path: Path) -> None:
    img = _image(tmp_path / "d.img", 100 * BS + 999)
    for b in (0, 1, 7, 8, 9, 40, 63, 64, 99):
        _write(img, b * BS + 5, os.urandom(BS - 5))
    _write(img, 100 * BS, b"t" * 999)
    repo = _small(tmp_path / "vault")
    progress = Progress(total=100 * BS + 999)
    result = backup_disk(repo, img, progress=progress, workers=3)
    assert [n for n, _ in result.content.segments] == [0, 1, 5, 7, 8, 12]
    assert result.stats["blocks"] == 10
    assert progress.snapshot()["bytes_scanned"] == 100 * BS + 999
    assert progress.snapshot()["bytes_read"] == result.stats["bytes_read"]
    _restored_equal(repo, result.content, img, tmp_path / "out.img")


def test_a_cancelled_backup_raises_cancelled(tmp_path: Path) -> None:
    img = tmp_path / "d.img"
    img.write_bytes(os.urandom(8 * MiB))
    progress = Progress()
    progress.cancelled.set()
    with pytest.raises(Cancelled):
        backup_disk(_repo(tmp_path / "vault"), img, progress=progress)


class _CancelAfter(Progress):
    """Progress whose reader asks to stop once ``limit`` bytes were read, as a
    user cancelling mid-backup would."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def add(self, *, scanned: int = 0, read: int = 0, sent: int = 0, new: int = 0) -> None:
        super().add(scanned=scanned, read=read, sent=sent, new=new)
        if self.read >= self.limit:
            self.cancelled.set()


def test_a_backup_cancelled_midway_stops_reading_and_restore_stops_writing(
        tmp_path: Path) -> None:
    img = tmp_path / "d.img"
    img.write_bytes(os.urandom(64 * MiB))
    repo = _repo(tmp_path / "vault")
    progress = _CancelAfter(4 * MiB)
    with pytest.raises(Cancelled):
        backup_disk(repo, img, progress=progress)
    assert progress.read < 16 * MiB
    result = backup_disk(repo, img, progress=Progress())
    restoring = _CancelAfter(4 * MiB)
    with pytest.raises(Cancelled):
        restore_disk(repo, _content(result), tmp_path / "out.img", progress=restoring)
    assert restoring.read < 32 * MiB
    assert list(tmp_path.glob("*out.img*")) == []


def test_a_missing_source_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(SourceUnreadable):
        backup_disk(_repo(tmp_path / "vault"), tmp_path / "nope.img", progress=Progress())


def test_a_disk_that_shrinks_while_read_fails_instead_of_storing_a_short_map(
        tmp_path: Path) -> None:
    img = tmp_path / "d.img"
    img.write_bytes(os.urandom(4 * MiB))
    with pytest.raises(SourceUnreadable, match="shrink"):
        backup_disk(_repo(tmp_path / "vault"), img, size=6 * MiB, progress=Progress())


# -- incrementals -------------------------------------------------------------------------------

def test_hash_scan_incremental_sends_only_changed_blocks(tmp_path: Path) -> None:
    img = tmp_path / "d.img"
    img.write_bytes(os.urandom(32 * MiB))
    repo = _repo(tmp_path / "vault")
    first = backup_disk(repo, img, progress=Progress())
    _write(img, 5 * MiB + 100, b"x" * 10)
    _write(img, 30 * MiB, b"y" * (MiB + 1))
    second = backup_disk(repo, img, parent=first.content, progress=Progress())
    assert second.stats["bytes_new"] == 3 * MiB
    assert second.stats["bytes_read"] == 32 * MiB
    _restored_equal(repo, second.content, img, tmp_path / "out.img")


def test_changed_ranges_read_exactly_the_blocks_they_touch(tmp_path: Path) -> None:
    img = _image(tmp_path / "d.img", 61 * BS + 100)
    for b in range(0, 62, 2):
        _write(img, b * BS, os.urandom(BS // 2))
    repo = _small(tmp_path / "vault")
    first = backup_disk(repo, img, progress=Progress())
    writes = [(3 * BS + 5, 3), (16 * BS - 1, 2), (33 * BS, BS), (61 * BS + 99, 1),
              (45 * BS + 10, 20)]
    for offset, n in writes:
        _write(img, offset, b"z" * n)
    _write(img, 20 * BS, b"\0" * BS)  # data that became zeros
    changed = [(o, o + n) for o, n in writes] + [(20 * BS, 21 * BS)]
    log: list[tuple[int, int]] = []
    second = backup_disk(repo, img, parent=first.content, changed=changed,
                         progress=Progress(), read_log=log)
    assert _blocks_read(log, BS) == [3, 15, 16, 20, 33, 45, 61]
    assert second.stats["blocks_read"] == 7
    assert second.stats["bytes_read"] == 6 * BS + 100
    # Blocks 3, 15, 33, 45 and 61 are new in the map, 20 is gone (zeros).
    assert second.stats["blocks"] == first.stats["blocks"] + 5 - 1
    _restored_equal(repo, second.content, img, tmp_path / "out.img")


def test_changed_blocks_are_asked_of_the_kernel_ahead_within_the_window(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """CBT tells the kernel which blocks it will read (so the device gets them
    all queued), only those, and never more than the window ahead of the
    reader; what is read and stored does not change."""
    img = _image(tmp_path / "d.img", 64 * BS)
    for b in range(64):
        _write(img, b * BS, os.urandom(BS))
    repo = _small(tmp_path / "vault")
    first = backup_disk(repo, img, progress=Progress())
    dirty = [2, 3, 9, 17, 30, 31, 32, 50, 63]
    for b in dirty:
        _write(img, b * BS + 7, b"x" * 100)
    monkeypatch.setattr(disk, "ADVISE_AHEAD", 4 * BS)
    advised: list[tuple[int, int]] = []
    log: list[tuple[int, int]] = []
    real_fadvise = os.posix_fadvise

    def fadvise(fd: int, offset: int, length: int, advice: int) -> None:
        if advice == os.POSIX_FADV_WILLNEED:
            advised.append((offset, offset + length))
            # asked for but not yet read: the window, plus the run that crossed it
            waiting = sum(b - a for a, b in advised) - sum(b - a for a, b in log)
            assert waiting <= 4 * BS + BS
        real_fadvise(fd, offset, length, advice)

    monkeypatch.setattr(disk.os, "posix_fadvise", fadvise)
    second = backup_disk(repo, img, parent=first.content,
                         changed=[(b * BS + 7, b * BS + 107) for b in dirty],
                         progress=Progress(), read_log=log)
    assert _blocks_read(advised, BS) == dirty
    assert _blocks_read(log, BS) == dirty
    assert second.stats["blocks_read"] == len(dirty)
    _restored_equal(repo, second.content, img, tmp_path / "out.img")


def test_no_changes_reuse_every_segment_and_read_nothing(tmp_path: Path) -> None:
    img = tmp_path / "d.img"
    img.write_bytes(os.urandom(40 * BS))
    repo = _small(tmp_path / "vault")
    first = backup_disk(repo, img, progress=Progress())
    log: list[tuple[int, int]] = []
    second = backup_disk(repo, img, parent=first.content, changed=[], progress=Progress(),
                         read_log=log)
    assert log == [] and second.stats["bytes_sent"] == 0
    assert second.content == first.content


def test_a_parent_chunk_missing_from_the_index_is_read_again(tmp_path: Path) -> None:
    img = tmp_path / "d.img"
    img.write_bytes(os.urandom(20 * BS))
    key = (os.urandom(16), os.urandom(32))
    repo = _small(tmp_path / "vault", key)
    first = backup_disk(repo, img, progress=Progress())
    # A vault of the same namespace holding the segments and every block but
    # 5 and 12: what the next backup sees after a prune removed those two.
    other = _small(tmp_path / "other", key)
    for block, cid in DiskMapReader(repo, first.content):
        if block not in (5, 12):
            other.save_blob(BlobType.DATA, repo.load_blob(cid))
    for _number, segment_id in first.content.segments:
        other.save_blob(BlobType.META, repo.load_blob(segment_id))
    other.flush()
    log: list[tuple[int, int]] = []
    second = backup_disk(other, img, parent=first.content, changed=[], progress=Progress(),
                         read_log=log)
    assert _blocks_read(log, BS) == [5, 12]
    assert second.stats["bytes_new"] == 2 * BS
    _restored_equal(other, second.content, img, tmp_path / "out.img")


def test_a_parent_segment_missing_from_the_index_rereads_that_segment(tmp_path: Path) -> None:
    img = tmp_path / "d.img"
    img.write_bytes(os.urandom(20 * BS))
    repo = _small(tmp_path / "vault")
    first = backup_disk(repo, img, progress=Progress())
    fresh = _small(tmp_path / "fresh")  # lacks everything of the parent
    log: list[tuple[int, int]] = []
    second = backup_disk(fresh, img, parent=first.content, changed=[(BS, BS + 1)],
                         progress=Progress(), read_log=log)
    assert log == [(0, 20 * BS)]
    _restored_equal(fresh, second.content, img, tmp_path / "out.img")


def test_changed_ranges_are_ignored_when_the_disk_was_resized(tmp_path: Path) -> None:
    img = tmp_path / "d.img"
    img.write_bytes(os.urandom(8 * BS))
    repo = _small(tmp_path / "vault")
    first = backup_disk(repo, img, progress=Progress())
    with open(img, "ab") as fh:
        fh.write(os.urandom(3 * BS))
    log: list[tuple[int, int]] = []
    second = backup_disk(repo, img, parent=first.content, changed=[], progress=Progress(),
                         read_log=log)
    assert log == [(0, 11 * BS)]
    _restored_equal(repo, second.content, img, tmp_path / "out.img")


# -- restore ------------------------------------------------------------------------------------

def test_restore_onto_the_original_punches_what_the_backup_does_not_hold(
        tmp_path: Path) -> None:
    img = _image(tmp_path / "d.img", 8 * MiB)
    _write(img, 0, os.urandom(MiB))
    repo = _repo(tmp_path / "vault")
    result = backup_disk(repo, img, progress=Progress())
    original = img.read_bytes()
    _write(img, 4 * MiB, os.urandom(2 * MiB))
    _write(img, 0, b"changed")
    with open(img, "ab") as fh:
        fh.write(b"grown")
    restore_disk(repo, result.content, img, progress=Progress())
    assert img.read_bytes() == original
    assert _allocated(img) <= 2 * MiB  # the overwritten hole is a hole again


def test_restore_onto_a_shorter_original_extends_it(tmp_path: Path) -> None:
    img = tmp_path / "d.img"
    img.write_bytes(os.urandom(3 * MiB + 17))
    repo = _repo(tmp_path / "vault")
    result = backup_disk(repo, img, progress=Progress())
    original = img.read_bytes()
    with open(img, "r+b") as fh:
        fh.truncate(MiB)
    restore_disk(repo, result.content, img, progress=Progress())
    assert img.read_bytes() == original


def test_a_corrupt_pack_fails_the_restore_naming_the_chunk_and_leaves_no_file(
        tmp_path: Path) -> None:
    img = tmp_path / "d.img"
    img.write_bytes(os.urandom(3 * MiB))
    repo = _repo(tmp_path / "vault")
    result = backup_disk(repo, img, progress=Progress())
    # Flip one byte inside block 1's blob (blobs land in packs in the order
    # the pool finishes them, so ask the index where it is).
    damaged = dict(DiskMapReader(repo, _content(result)))[1]
    where = repo.index.lookup(repo.config.chunk_key_id, damaged)
    assert where is not None
    [pack] = [p for p in (tmp_path / "vault" / "data").rglob(where.pack_id.hex())]
    raw = bytearray(pack.read_bytes())
    raw[where.offset + 100] ^= 1
    pack.write_bytes(bytes(raw))
    out = tmp_path / "out.img"
    with pytest.raises(IntegrityError) as err:
        restore_disk(repo, result.content, out, progress=Progress())
    assert damaged.hex() in str(err.value)
    assert not out.exists()
    assert not list(tmp_path.glob(".out.img.cbr-partial-*"))


def test_a_chunk_missing_from_the_index_fails_the_restore_naming_it(tmp_path: Path) -> None:
    img = tmp_path / "d.img"
    img.write_bytes(os.urandom(2 * MiB))
    repo = _repo(tmp_path / "vault")
    result = backup_disk(repo, img, progress=Progress())
    shutil.rmtree(tmp_path / "vault" / "index")
    (tmp_path / "vault" / "index").mkdir()
    repo.load_index()
    segment_id = result.content.segments[0][1]
    with pytest.raises(ChunkNotFound) as err:
        restore_disk(repo, result.content, tmp_path / "out.img", progress=Progress())
    assert segment_id.hex() in str(err.value)
    assert not (tmp_path / "out.img").exists()


def test_a_cancelled_restore_leaves_no_file(tmp_path: Path) -> None:
    img = tmp_path / "d.img"
    img.write_bytes(os.urandom(4 * MiB))
    repo = _repo(tmp_path / "vault")
    result = backup_disk(repo, img, progress=Progress())
    progress = Progress()
    progress.cancelled.set()
    with pytest.raises(Cancelled):
        restore_disk(repo, result.content, tmp_path / "out.img", progress=progress)
    assert list(tmp_path.glob("*out.img*")) == []


def test_a_restore_onto_a_symlink_or_directory_is_refused(tmp_path: Path) -> None:
    img = tmp_path / "d.img"
    img.write_bytes(os.urandom(MiB))
    repo = _repo(tmp_path / "vault")
    result = backup_disk(repo, img, progress=Progress())
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    (tmp_path / "link.img").symlink_to(victim)
    with pytest.raises(UnsafeTarget):
        restore_disk(repo, result.content, tmp_path / "link.img", progress=Progress())
    with pytest.raises(UnsafeTarget):
        restore_disk(repo, result.content, tmp_path, progress=Progress())
    assert victim.read_bytes() == b"keep me"


def test_parallel_backups_into_one_vault_store_shared_blocks_once(tmp_path: Path) -> None:
    shared = os.urandom(4 * MiB)
    disks = []
    for i in range(3):
        img = tmp_path / f"d{i}.img"
        img.write_bytes(shared + os.urandom(MiB))
        disks.append(img)
    repo = _repo(tmp_path / "vault")
    results: dict[int, BackupResult] = {}

    def run(i: int) -> None:
        results[i] = backup_disk(repo, disks[i], progress=Progress())

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r.stats["bytes_new"] for r in results.values()) == 7 * MiB
    for i, img in enumerate(disks):
        _restored_equal(repo, results[i].content, img, tmp_path / f"out{i}.img")


def test_data_ranges_skip_holes(tmp_path: Path) -> None:
    img = _image(tmp_path / "d.img", 16 * MiB)
    _write(img, 8 * MiB, b"x")
    fd = os.open(img, os.O_RDONLY)
    try:
        ranges = list(data_ranges(fd, 16 * MiB))
        later = list(data_ranges(fd, 16 * MiB, 10 * MiB))
    finally:
        os.close(fd)
    assert sum(b - a for a, b in ranges) < 2 * MiB
    assert any(a <= 8 * MiB < b for a, b in ranges)
    assert later == []


# -- block devices ------------------------------------------------------------------------------

@pytest.fixture
def loop_devices(tmp_path: Path) -> Iterator[list[Path]]:
    """Two loop devices (8 MiB and 4 MiB) over files, detached afterwards."""
    if os.geteuid() != 0 or shutil.which("losetup") is None:
        unavailable("loop devices need root and losetup")
    devices: list[Path] = []
    try:
        for name, size in (("big", 8 * MiB), ("small", 4 * MiB)):
            backing = _image(tmp_path / f"{name}.backing", size)
            done = subprocess.run(["losetup", "--find", "--show", str(backing)],
                                  capture_output=True, text=True, check=False)
            if done.returncode != 0:
                unavailable(f"cannot attach a loop device here: {done.stderr.strip()}")
            devices.append(Path(done.stdout.strip()))
        yield devices
    finally:
        for dev in devices:
            subprocess.run(["losetup", "-d", str(dev)], check=False)


def test_a_block_device_backs_up_and_restores_with_zeros_for_absent_blocks(
        tmp_path: Path, loop_devices: list[Path]) -> None:
    big, small = loop_devices
    assert disk_size(big) == 8 * MiB
    payload = os.urandom(MiB)
    fd = os.open(big, os.O_WRONLY)
    try:
        os.pwrite(fd, payload, 2 * MiB)
        os.fsync(fd)
    finally:
        os.close(fd)
    repo = _repo(tmp_path / "vault")
    result = backup_disk(repo, big, progress=Progress())
    assert result.stats["bytes_read"] == 8 * MiB  # a device has no holes to skip
    assert result.stats["blocks"] == 1
    # Scribble over the device, then restore: the zeros come back too.
    fd = os.open(big, os.O_WRONLY)
    try:
        os.pwrite(fd, os.urandom(8 * MiB), 0)
    finally:
        os.close(fd)
    restore_disk(repo, result.content, big, progress=Progress())
    with open(big, "rb") as fh:
        data = fh.read()
    assert data == bytes(2 * MiB) + payload + bytes(5 * MiB)
    with pytest.raises(TargetTooSmall):
        restore_disk(repo, result.content, small, progress=Progress())
