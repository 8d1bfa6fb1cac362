"""Segmented disk maps: streaming build and read-back, bounded memory, reuse."""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

import pytest

from cbr.repo.content.blob import BlobType
from cbr.repo.errors import FormatError
from cbr.repo.objects.disk_map import (
    DiskMapBuilder,
    DiskMapReader,
    block_count,
    decode_segment,
    is_zero,
    iter_disk_map,
)
from cbr.repo.repository import Repository
from cbr.storage.local import LocalBackend

MiB = 1 << 20
TiB = 1 << 40


def _repo(root: Path) -> Repository:
    return Repository.init(LocalBackend(root), vault_id="v", encrypted=False)


def _fake_id(block: int) -> bytes:
    return block.to_bytes(8, "little") * 4


def test_disk_map_round_trips_with_holes_and_a_short_last_block(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    size = 10 * MiB + 123
    blocks = {0: os.urandom(MiB), 3: os.urandom(MiB), 10: os.urandom(123)}
    builder = DiskMapBuilder(repo, size=size, block_size=MiB, segment_entries=4)
    for n in sorted(blocks):
        builder.add(n, repo.save_blob(BlobType.DATA, blocks[n]))
    content = builder.finish()
    assert [n for n, _ in content.segments] == [0, 2]  # segment 1 (blocks 4-7) all holes
    repo.flush()
    got = {n: repo.load_blob(cid) for n, cid in iter_disk_map(Repository.open(
        LocalBackend(tmp_path)), content)}
    assert got == blocks
    reader = DiskMapReader(repo, content)
    assert reader.lookup(5) is None and reader.lookup(3) == repo.hasher().chunk_id(blocks[3])
    assert block_count(size, MiB) == 11


def test_large_sparse_disk_map_stays_bounded_while_built_and_read(tmp_path: Path) -> None:
    """A 64 TiB disk with a block every 16 GiB + one dense 4 GiB region: many
    segments, never more than one in memory."""
    repo = _repo(tmp_path)
    size = 64 * TiB
    dense = range(4096 * 100, 4096 * 101)  # one full segment
    sparse = range(0, size // MiB, 16 * 1024)
    wanted = sorted(set(dense) | set(sparse))
    tracemalloc.start()
    builder = DiskMapBuilder(repo, size=size, block_size=MiB, segment_entries=4096)
    for n in wanted:
        builder.add(n, _fake_id(n))
    content = builder.finish()
    _, peak_build = tracemalloc.get_traced_memory()
    repo.flush()
    tracemalloc.reset_peak()
    count = 0
    last = -1
    for n, cid in iter_disk_map(repo, content):
        assert n > last and cid == _fake_id(n)
        last = n
        count += 1
    _, peak_read = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert count == len(wanted) and builder.stored_blocks == len(wanted)
    assert len(content.segments) > 4000
    # one segment is ~139 KiB plain; allow packs in flight (target 16 MiB of tiny blobs here)
    assert peak_read < 8 * MiB, peak_read
    assert peak_build < 24 * MiB, peak_build


def test_unchanged_segments_dedup_and_can_be_reused(tmp_path: Path) -> None:
    repo = _repo(tmp_path)

    def build(changed: int | None) -> list[tuple[int, bytes]]:
        b = DiskMapBuilder(repo, size=16 * 4 * MiB, block_size=MiB, segment_entries=4)
        for n in range(16):
            b.add(n, _fake_id(n + 1000 if n == changed else n))
        return b.finish().segments

    first = build(None)
    second = build(5)
    assert [s for s in first if s not in second] == [first[1]]  # only segment 1 differs
    b = DiskMapBuilder(repo, size=16 * 4 * MiB, block_size=MiB, segment_entries=4)
    b.reuse_segment(0, first[0][1], stored_blocks=4)
    b.add(4, _fake_id(4))
    assert b.finish().segments[0] == first[0]


def test_blocks_out_of_order_or_past_the_end_are_refused(tmp_path: Path) -> None:
    b = DiskMapBuilder(_repo(tmp_path), size=4 * MiB, block_size=MiB, segment_entries=4)
    b.add(2, _fake_id(2))
    with pytest.raises(ValueError):
        b.add(1, _fake_id(1))
    with pytest.raises(ValueError):
        b.add(4, _fake_id(4))


def test_a_segment_read_at_the_wrong_position_is_refused(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    b = DiskMapBuilder(repo, size=8 * MiB, block_size=MiB, segment_entries=4)
    b.add(5, _fake_id(5))
    (number, cid), = b.finish().segments
    data = repo.load_blob(cid)
    assert decode_segment(data, number, 4)[0].tolist() == [1]
    with pytest.raises(FormatError):
        decode_segment(data, 0, 4)
    with pytest.raises(FormatError):
        decode_segment(data[:-1], number, 4)


def test_zero_blocks_are_recognised() -> None:
    assert is_zero(bytes(MiB)) and is_zero(b"")
    assert not is_zero(bytes(MiB - 1) + b"\1")
