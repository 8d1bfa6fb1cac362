"""Disk backup and restore on real files: holes, zeros, dedup, incrementals, damage."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from agent.dataplane import Progress
from agent.dataplane.disk import backup_disk, data_ranges, restore_disk
from cbr.repo import IntegrityError, Repository
from cbr.storage.local import LocalBackend

MiB = 1 << 20


def _repo(tmp_path: Path) -> Repository:
    return Repository.init(LocalBackend(tmp_path / "vault"), vault_id="v1", encrypted=False)


def _write(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(data)


def _image(path: Path, size: int) -> Path:
    with open(path, "wb") as fh:
        fh.truncate(size)
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_holes_and_zero_blocks_are_not_read_or_stored_and_restore_is_sparse(
        tmp_path: Path) -> None:
    img = _image(tmp_path / "d.img", 64 * MiB + 12345)  # odd last block
    _write(img, 3 * MiB + 7, os.urandom(MiB))
    _write(img, 20 * MiB, b"\0" * (4 * MiB))  # allocated zeros
    _write(img, 64 * MiB, os.urandom(12345))
    repo = _repo(tmp_path)
    result = backup_disk(repo, img, progress=Progress())
    assert result.stats["blocks"] == 3  # 2 for the unaligned MiB, 1 for the tail
    assert result.stats["bytes_read"] <= 8 * MiB  # the hole was never read
    assert result.stats["bytes_scanned"] == img.stat().st_size
    out = tmp_path / "out.img"
    restore_disk(repo, result.content, out, progress=Progress())
    assert _sha(out) == _sha(img)
    assert out.stat().st_blocks * 512 <= 4 * MiB
    assert not list(tmp_path.glob(".out.img.cbr-partial-*"))


def test_duplicate_blocks_are_stored_once(tmp_path: Path) -> None:
    img = _image(tmp_path / "d.img", 16 * MiB)
    block = os.urandom(MiB)
    for i in range(0, 16, 2):
        _write(img, i * MiB, block)
    repo = _repo(tmp_path)
    result = backup_disk(repo, img, progress=Progress())
    assert result.stats["blocks"] == 8
    assert result.stats["bytes_new"] == MiB


def test_hash_scan_incremental_sends_only_changed_blocks(tmp_path: Path) -> None:
    img = tmp_path / "d.img"
    img.write_bytes(os.urandom(32 * MiB))
    repo = _repo(tmp_path)
    first = backup_disk(repo, img, progress=Progress())
    _write(img, 5 * MiB + 100, b"x" * 10)
    _write(img, 30 * MiB, b"y" * (MiB + 1))
    second = backup_disk(repo, img, parent=first.content, progress=Progress())
    assert second.stats["bytes_new"] == 3 * MiB
    out = tmp_path / "out.img"
    restore_disk(repo, second.content, out, progress=Progress())
    assert _sha(out) == _sha(img)


def test_changed_ranges_read_exactly_the_blocks_they_touch(tmp_path: Path) -> None:
    img = tmp_path / "d.img"
    img.write_bytes(os.urandom(20 * MiB))
    repo = _repo(tmp_path)
    first = backup_disk(repo, img, progress=Progress())
    _write(img, 7 * MiB + 5, b"z" * 3)
    log: list[tuple[int, int]] = []
    second = backup_disk(repo, img, parent=first.content, changed=[(7 * MiB + 5, 7 * MiB + 8)],
                         progress=Progress(), read_log=log)
    assert log == [(7 * MiB, 8 * MiB)]
    out = tmp_path / "out.img"
    restore_disk(repo, second.content, out, progress=Progress())
    assert _sha(out) == _sha(img)


def test_a_parent_chunk_missing_from_the_index_is_read_again(tmp_path: Path) -> None:
    img = tmp_path / "d.img"
    img.write_bytes(os.urandom(4 * MiB))
    repo = _repo(tmp_path)
    first = backup_disk(repo, img, progress=Progress())
    fresh = _repo(tmp_path / "other")  # a vault that lacks the parent's chunks
    log: list[tuple[int, int]] = []
    second = backup_disk(fresh, img, parent=first.content, changed=[], progress=Progress(),
                         read_log=log)
    assert log == [(0, 4 * MiB)]
    out = tmp_path / "out.img"
    restore_disk(fresh, second.content, out, progress=Progress())
    assert _sha(out) == _sha(img)


def test_restore_onto_the_original_punches_what_the_backup_does_not_hold(
        tmp_path: Path) -> None:
    img = _image(tmp_path / "d.img", 8 * MiB)
    _write(img, 0, os.urandom(MiB))
    repo = _repo(tmp_path)
    result = backup_disk(repo, img, progress=Progress())
    original = img.read_bytes()
    _write(img, 4 * MiB, os.urandom(2 * MiB))
    restore_disk(repo, result.content, img, progress=Progress())
    assert img.read_bytes() == original


def test_a_corrupt_pack_fails_the_restore_naming_the_chunk_and_leaves_no_file(
        tmp_path: Path) -> None:
    img = tmp_path / "d.img"
    img.write_bytes(os.urandom(3 * MiB))
    repo = _repo(tmp_path)
    result = backup_disk(repo, img, progress=Progress())
    [pack] = [p for p in (tmp_path / "vault" / "data").rglob("*") if p.is_file()
              and p.stat().st_size > MiB]
    raw = bytearray(pack.read_bytes())
    raw[100] ^= 1
    pack.write_bytes(bytes(raw))
    out = tmp_path / "out.img"
    with pytest.raises(IntegrityError) as err:
        restore_disk(repo, result.content, out, progress=Progress())
    assert "chunk" in str(err.value)
    assert not out.exists()
    assert not list(tmp_path.glob(".out.img.cbr-partial-*"))


def test_data_ranges_skip_holes(tmp_path: Path) -> None:
    img = _image(tmp_path / "d.img", 16 * MiB)
    _write(img, 8 * MiB, b"x")
    fd = os.open(img, os.O_RDONLY)
    try:
        ranges = list(data_ranges(fd, 16 * MiB))
    finally:
        os.close(fd)
    assert sum(b - a for a, b in ranges) < 2 * MiB
    assert any(a <= 8 * MiB < b for a, b in ranges)
