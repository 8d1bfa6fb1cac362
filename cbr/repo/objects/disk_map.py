"""Segmented disk maps: block number -> chunk id (``docs/storage-format.md`` section 8).

This module owns the segment byte layout and the two streaming halves:
:class:`DiskMapBuilder` (fed blocks in increasing order while a disk is
read; holds one segment) and :func:`iter_disk_map` / :class:`DiskMapReader`
(read back one segment at a time). Holes and all-zero blocks are simply not
added. Memory is one segment (at most ``segment_entries`` entries), never the
disk. It must not read disks or decide what changed; the agent does.
"""

from __future__ import annotations

import itertools
import struct
import sys
from array import array
from collections.abc import Iterator
from typing import Protocol

from cbr.repo.content.blob import BlobType
from cbr.repo.content.ids import ID_SIZE
from cbr.repo.errors import FormatError, UnsupportedVersion
from cbr.repo.objects.manifest import DiskContent

SEGMENT_MAGIC = b"CBRS"
SEGMENT_VERSION = 1
_HEADER = struct.Struct("<4sB3xQII")  # magic, version, segment number, E, k
HEADER_SIZE = _HEADER.size  # 24


class BlobStore(Protocol):
    """What the disk map needs of a repository."""

    def save_blob(
        self, blob_type: BlobType, data: bytes, *, key_id: bytes | None = None,
        chunk_id: bytes | None = None,
    ) -> bytes: ...

    def load_blob(self, chunk_id: bytes, *, key_id: bytes | None = None) -> bytes: ...


def block_count(size: int, block_size: int) -> int:
    """Blocks of a disk of ``size`` bytes (the last may be short)."""
    return (size + block_size - 1) // block_size


def _u16le(values: array[int]) -> bytes:
    if sys.byteorder == "big":
        values = array("H", values)
        values.byteswap()
    return values.tobytes()


def encode_segment(number: int, segment_entries: int, blocks: array[int], ids: bytes) -> bytes:
    """Segment plaintext: ``blocks`` are in-segment block numbers, strictly increasing."""
    if len(ids) != ID_SIZE * len(blocks) or not blocks:
        raise ValueError("a segment holds 1..E blocks, one 32-byte id each")
    return _HEADER.pack(SEGMENT_MAGIC, SEGMENT_VERSION, number, segment_entries, len(blocks)) + (
        _u16le(blocks) + ids
    )


def decode_segment(
    data: bytes, number: int, segment_entries: int, label: str = "segment"
) -> tuple[array[int], bytes]:
    """(in-segment block numbers, concatenated chunk ids) of a segment blob."""
    if len(data) < HEADER_SIZE:
        raise FormatError(f"{label}: truncated")
    magic, version, got_number, entries, k = _HEADER.unpack_from(data)
    if magic != SEGMENT_MAGIC:
        raise FormatError(f"{label}: bad magic")
    if version > SEGMENT_VERSION:
        raise UnsupportedVersion(f"{label}: version {version} is newer than {SEGMENT_VERSION}")
    if got_number != number or entries != segment_entries:
        raise FormatError(
            f"{label}: is segment {got_number} of {entries}, expected {number} of "
            f"{segment_entries}"
        )
    if not 1 <= k <= segment_entries or len(data) != HEADER_SIZE + k * (2 + ID_SIZE):
        raise FormatError(f"{label}: bad entry count {k} for {len(data)} bytes")
    blocks = array("H")
    blocks.frombytes(data[HEADER_SIZE : HEADER_SIZE + 2 * k])
    if sys.byteorder == "big":
        blocks.byteswap()
    if any(b >= segment_entries for b in (blocks[0], blocks[-1])) or any(
        a >= b for a, b in itertools.pairwise(blocks)
    ):
        raise FormatError(f"{label}: block numbers out of order or range")
    return blocks, data[HEADER_SIZE + 2 * k :]


class DiskMapBuilder:
    """Builds a disk's map while its blocks stream by, one segment in memory.

    Call :meth:`add` for each stored block in increasing block order (skip
    holes and zero blocks), :meth:`reuse_segment` for a whole segment taken
    unchanged from the parent backup, then :meth:`finish`.
    """

    def __init__(
        self,
        store: BlobStore,
        *,
        size: int,
        block_size: int,
        segment_entries: int,
        key_id: bytes | None = None,
    ) -> None:
        if not 1 <= segment_entries <= 65536:
            raise ValueError("segment_entries must be 1..65536")
        self._store = store
        self._key_id = key_id
        self.size = size
        self.block_size = block_size
        self.segment_entries = segment_entries
        self._blocks_total = block_count(size, block_size)
        self._segments: list[tuple[int, bytes]] = []
        self._current = -1
        self._blocks = array("H")
        self._ids = bytearray()
        self._last_block = -1
        self.stored_blocks = 0

    def add(self, block: int, chunk_id: bytes) -> None:
        if block <= self._last_block:
            raise ValueError(f"blocks must be added in increasing order ({block} after "
                             f"{self._last_block})")
        if block >= self._blocks_total:
            raise ValueError(f"block {block} beyond the disk's {self._blocks_total} blocks")
        if len(chunk_id) != ID_SIZE:
            raise ValueError("chunk id must be 32 bytes")
        number = block // self.segment_entries
        if number != self._current:
            self._close_segment()
            self._current = number
        self._blocks.append(block - number * self.segment_entries)
        self._ids += chunk_id
        self._last_block = block
        self.stored_blocks += 1

    def reuse_segment(self, number: int, segment_id: bytes, stored_blocks: int = 0) -> None:
        """References an unchanged parent segment by id (the caller has checked
        it is in the index, section 11)."""
        first = number * self.segment_entries
        if first <= self._last_block:
            raise ValueError("segments must be added in increasing order")
        self._close_segment()
        self._segments.append((number, segment_id))
        self._current = number
        self._last_block = first + self.segment_entries - 1
        self.stored_blocks += stored_blocks

    def _close_segment(self) -> None:
        if self._blocks:
            data = encode_segment(self._current, self.segment_entries, self._blocks,
                                  bytes(self._ids))
            segment_id = self._store.save_blob(BlobType.META, data, key_id=self._key_id)
            self._segments.append((self._current, segment_id))
        self._blocks = array("H")
        self._ids = bytearray()

    def finish(self) -> DiskContent:
        self._close_segment()
        return DiskContent(self.size, self.block_size, self.segment_entries, list(self._segments))


class DiskMapReader:
    """Reads a disk map back one segment at a time (keeps the last one loaded)."""

    def __init__(
        self, store: BlobStore, content: DiskContent, *, key_id: bytes | None = None
    ) -> None:
        self._store = store
        self._content = content
        self._key_id = key_id
        self._by_number = dict(content.segments)
        self._cached: tuple[int, dict[int, bytes]] | None = None

    def segment(self, number: int) -> Iterator[tuple[int, bytes]]:
        """(absolute block, chunk id) of one segment, in order; empty if not stored."""
        segment_id = self._by_number.get(number)
        if segment_id is None:
            return
        e = self._content.segment_entries
        data = self._store.load_blob(segment_id, key_id=self._key_id)
        blocks, ids = decode_segment(data, number, e, f"segment {number} ({segment_id.hex()})")
        base = number * e
        for i, b in enumerate(blocks):
            yield base + b, ids[i * ID_SIZE : (i + 1) * ID_SIZE]

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        """Every stored block in increasing order; absent blocks are holes/zeros."""
        last = -1
        for number, _ in self._content.segments:
            if number <= last:
                raise FormatError(f"disk map segments out of order at {number}")
            last = number
            yield from self.segment(number)

    def lookup(self, block: int) -> bytes | None:
        """Chunk id of one block, or None for a hole (loads its segment)."""
        number = block // self._content.segment_entries
        if self._cached is None or self._cached[0] != number:
            self._cached = (number, dict(self.segment(number)))
        return self._cached[1].get(block)


def iter_disk_map(
    store: BlobStore, content: DiskContent, *, key_id: bytes | None = None
) -> Iterator[tuple[int, bytes]]:
    """(block, chunk id) of every stored block, in order, one segment in memory."""
    return iter(DiskMapReader(store, content, key_id=key_id))


def is_zero(block: bytes | memoryview) -> bool:
    """Whether a block is all zero bytes (native comparison, no Python loop)."""
    return not block or (block[0] == 0 and block == bytes(len(block)))
