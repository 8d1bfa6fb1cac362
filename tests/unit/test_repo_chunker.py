"""Windowed chunking must cut exactly where a stream cut does: chunk ids of
files backed up before and after the change have to match for dedup."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from cbr.repo.config import ChunkerParams
from cbr.repo.content.ids import ChunkHasher
from cbr.repo.objects.chunker import cut_range, make_chunker, window_size

SMALL = ChunkerParams(min_size=2048, avg_size=8192, max_size=32768)


def _stream_cuts(params: ChunkerParams, hasher: ChunkHasher, data: bytes) -> list[bytes]:
    import io

    chunker = make_chunker(params, hasher)
    return [bytes(c.data) for c in chunker.cut_stream(io.BytesIO(data))]


def _data(size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    # Runs of repeated bytes among random ones, so some cuts fall at max_size.
    parts = []
    while sum(map(len, parts)) < size:
        n = rng.randrange(1, 70000)
        parts.append(bytes([rng.randrange(256)]) * n if rng.random() < 0.3
                     else rng.randbytes(n))
    return b"".join(parts)[:size]


@pytest.mark.parametrize("size", [0, 1, 2047, 32768, 3 * 32768, 3 * 32768 + 1, 700_001])
def test_windowed_cuts_equal_stream_cuts(tmp_path: Path, size: int) -> None:
    hasher = ChunkHasher(b"k" * 16, b"s" * 32)
    data = _data(size, size)
    path = tmp_path / "f"
    path.write_bytes(b"head" + data + b"tail")
    fd = os.open(path, os.O_RDONLY)
    try:
        window = bytearray(window_size(SMALL))
        got = [bytes(v) for v in cut_range(make_chunker(SMALL, hasher), fd, 4, size, window)]
    finally:
        os.close(fd)
    assert b"".join(got) == data
    assert got == _stream_cuts(SMALL, hasher, data)


def test_a_file_that_shrank_ends_the_chunks_where_it_ends(tmp_path: Path) -> None:
    hasher = ChunkHasher(b"k" * 16, b"s" * 32)
    data = _data(200_000, 7)
    path = tmp_path / "f"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        window = bytearray(window_size(SMALL))
        got = b"".join(bytes(v) for v in cut_range(make_chunker(SMALL, hasher), fd, 0,
                                                    300_000, window))
    finally:
        os.close(fd)
    assert got == data
