"""Index files and the in-memory index (``docs/storage-format.md`` section 7).

This module owns the binary index-file plaintext (48-byte records grouped by
pack) and :class:`Index`, the merged map ``(chunk-id key id, chunk id) ->
location`` held in flat sorted arrays (58 bytes per chunk) rather than Python
objects per chunk. It must not read or write storage; the content store
(``files``) loads and stores index files through the envelope.
"""

from __future__ import annotations

import struct
import sys
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from cbr.repo.content.blob import BlobType, check_flags, parse_blob_type
from cbr.repo.content.ids import ID_SIZE, KEY_ID_SIZE
from cbr.repo.content.pack import PackEntry
from cbr.repo.errors import FormatError

INDEX_PLAIN_MAGIC = b"CBRX"
MAX_BLOBS_PER_INDEX_FILE = 65536
_FILE_HEADER = struct.Struct("<4sB3xI")  # magic, key count, reserved, pack count
_PACK_HEADER = struct.Struct("<32sI")
_RECORD = struct.Struct("<BBBxIII32s")
RECORD_SIZE = _RECORD.size  # 48
# The same record cut where a location (_LOC) needs its parts: type and
# flags, key ordinal, the three lengths, chunk id.
_SPLIT = struct.Struct("<2sBx12s32s")

_LOC = struct.Struct("<IIIIBB")  # pack ordinal, offset, stored, raw, type, flags
LOC_SIZE = _LOC.size  # 18
BYTES_PER_CHUNK = 8 + ID_SIZE + LOC_SIZE  # 58: prefix + id + location
_MIN_TAIL = 4096


@dataclass(frozen=True, slots=True)
class Location:
    """Where a blob is: its pack and its place there."""

    pack_id: bytes
    type: BlobType
    offset: int
    stored_length: int
    raw_length: int
    flags: int


# -- index files ------------------------------------------------------------------------------


def encode_index(packs: Iterable[tuple[bytes, list[PackEntry]]]) -> bytes:
    """Index-file plaintext for ``packs`` (pack id, entries)."""
    pack_list = list(packs)
    key_ids: dict[bytes, int] = {}
    for _pid, entries in pack_list:
        for e in entries:
            key_ids.setdefault(e.key_id, len(key_ids))
    if len(key_ids) > 255:
        raise ValueError("an index file holds at most 255 namespaces")
    parts = [_FILE_HEADER.pack(INDEX_PLAIN_MAGIC, len(key_ids), len(pack_list))]
    parts.extend(key_ids)
    for pack_id, entries in pack_list:
        parts.append(_PACK_HEADER.pack(pack_id, len(entries)))
        parts.extend(
            _RECORD.pack(
                e.type, e.flags, key_ids[e.key_id], e.offset, e.stored_length, e.raw_length,
                e.chunk_id,
            )
            for e in entries
        )
    return b"".join(parts)


def _layout(data: bytes, label: str) -> tuple[list[bytes], list[tuple[bytes, int, int]]]:
    """An index file's key ids and, per pack, (pack id, start, end) of its
    records; :class:`FormatError` if it is truncated or has bytes left over."""
    if len(data) < _FILE_HEADER.size:
        raise FormatError(f"{label}: truncated")
    magic, key_count, pack_count = _FILE_HEADER.unpack_from(data)
    if magic != INDEX_PLAIN_MAGIC:
        raise FormatError(f"{label}: bad magic")
    pos = _FILE_HEADER.size
    keys = [data[pos + i * KEY_ID_SIZE : pos + (i + 1) * KEY_ID_SIZE] for i in range(key_count)]
    pos += KEY_ID_SIZE * key_count
    packs = []
    for _ in range(pack_count):
        if pos + _PACK_HEADER.size > len(data):
            raise FormatError(f"{label}: truncated pack list")
        pack_id, count = _PACK_HEADER.unpack_from(data, pos)
        pos += _PACK_HEADER.size
        end = pos + count * RECORD_SIZE
        if end > len(data):
            raise FormatError(f"{label}: truncated records of pack {pack_id.hex()}")
        packs.append((pack_id, pos, end))
        pos = end
    if pos != len(data):
        raise FormatError(f"{label}: {len(data) - pos} trailing bytes")
    return keys, packs


def decode_index(data: bytes, label: str = "index") -> list[tuple[bytes, list[PackEntry]]]:
    """Inverse of :func:`encode_index`; :class:`FormatError` on any inconsistency."""
    keys, packs = _layout(data, label)
    out: list[tuple[bytes, list[PackEntry]]] = []
    for pack_id, start, end in packs:
        entries = []
        for kind, flags, ordinal, offset, stored, raw, chunk_id in _RECORD.iter_unpack(
            data[start:end]
        ):
            check_flags(flags)
            if ordinal >= len(keys):
                raise FormatError(f"{label}: key ordinal {ordinal} out of range")
            entries.append(
                PackEntry(parse_blob_type(kind), keys[ordinal], chunk_id, offset, stored, raw,
                          flags)
            )
        out.append((pack_id, entries))
    return out


# -- in memory --------------------------------------------------------------------------------


class ChunkTable:
    """Chunk id -> packed location for one namespace.

    Sorted part: ``_prefix`` (first 8 id bytes as big-endian ``array('Q')``,
    searched with C ``bisect``), ``_ids`` (32 bytes each) and ``_locs`` (18
    bytes each), in the same order. New entries go to ``_tail`` (a dict) and
    are merged when it grows past a quarter of the sorted part.
    """

    __slots__ = ("_ids", "_locs", "_prefix", "_stage_ids", "_stage_locs", "_tail")

    def __init__(self) -> None:
        self._prefix = array("Q")
        self._ids = bytearray()
        self._locs = bytearray()
        self._tail: dict[bytes, bytes] = {}
        self._stage_ids = bytearray()
        self._stage_locs = bytearray()

    def __len__(self) -> int:
        return len(self._prefix) + len(self._tail) + len(self._stage_ids) // ID_SIZE

    def add(self, chunk_id: bytes, loc: bytes) -> None:
        """Adds one entry, keeping an existing one for the same id."""
        if self.get(chunk_id) is not None:
            return
        self._tail[chunk_id] = loc
        if len(self._tail) > max(_MIN_TAIL, len(self._prefix) // 4):
            self.compact()

    def stage(self, chunk_id: bytes, loc: bytes) -> None:
        """Adds without a lookup (bulk load); call :meth:`compact` before reading."""
        self._stage_ids += chunk_id
        self._stage_locs += loc

    def get(self, chunk_id: bytes) -> bytes | None:
        """The packed location of ``chunk_id``, or None."""
        loc = self._tail.get(chunk_id)
        if loc is not None:
            return loc
        prefix = int.from_bytes(chunk_id[:8], "big")
        keys = self._prefix
        i = bisect_left(keys, prefix)
        n = len(keys)
        ids = self._ids
        while i < n and keys[i] == prefix:
            if ids[i * ID_SIZE : (i + 1) * ID_SIZE] == chunk_id:
                return bytes(self._locs[i * LOC_SIZE : (i + 1) * LOC_SIZE])
            i += 1
        return None

    def compact(self) -> None:
        """Merges staged and tail entries into the sorted arrays, dropping duplicate ids.

        Sorts bucket by bucket (first id byte), so the transient cost is 4
        bytes per entry for the buckets plus one bucket's sort, not a Python
        object per entry.
        """
        if not self._tail and not self._stage_ids:
            return
        ids, locs = self._ids, self._locs
        self._ids, self._locs = bytearray(), bytearray()
        ids += self._stage_ids
        ids += b"".join(self._tail)
        locs += self._stage_locs
        locs += b"".join(self._tail.values())
        self._tail.clear()
        self._stage_ids, self._stage_locs = bytearray(), bytearray()
        prefix = array("Q")
        with memoryview(ids) as view, view.cast("Q") as words:
            prefix.frombytes(words[:: ID_SIZE // 8].tobytes())
        if sys.byteorder == "little":
            prefix.byteswap()
        buckets = [array("I") for _ in range(256)]
        for i, p in enumerate(prefix):
            buckets[p >> 56].append(i)
        new_prefix = array("Q")
        new_ids = bytearray()
        new_locs = bytearray()
        for k, bucket in enumerate(buckets):
            buckets[k] = array("I")  # free the bucket once sorted
            order = sorted(bucket, key=prefix.__getitem__)
            keys = [prefix[i] for i in order]
            if len(set(keys)) == len(keys):
                # No two ids share a prefix here (the usual case): no duplicates.
                new_prefix.extend(keys)
                new_ids += b"".join([ids[i * ID_SIZE : (i + 1) * ID_SIZE] for i in order])
                new_locs += b"".join([locs[i * LOC_SIZE : (i + 1) * LOC_SIZE] for i in order])
                continue
            for i, p in zip(order, keys, strict=True):
                cid = ids[i * ID_SIZE : (i + 1) * ID_SIZE]
                if new_prefix and new_prefix[-1] == p and self._dup(cid, new_ids, new_prefix):
                    continue
                new_prefix.append(p)
                new_ids += cid
                new_locs += locs[i * LOC_SIZE : (i + 1) * LOC_SIZE]
        self._prefix = new_prefix
        self._ids = new_ids
        self._locs = new_locs

    @staticmethod
    def _dup(cid: bytearray, ids: bytearray, prefix: array[int]) -> bool:
        p = prefix[-1]
        j = len(prefix) - 1
        while j >= 0 and prefix[j] == p:
            if ids[j * ID_SIZE : (j + 1) * ID_SIZE] == cid:
                return True
            j -= 1
        return False

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        self.compact()
        for i in range(len(self._prefix)):
            yield (
                bytes(self._ids[i * ID_SIZE : (i + 1) * ID_SIZE]),
                bytes(self._locs[i * LOC_SIZE : (i + 1) * LOC_SIZE]),
            )


class Index:
    """The merged index of a vault: one :class:`ChunkTable` per namespace."""

    def __init__(self) -> None:
        self._tables: dict[bytes, ChunkTable] = {}
        self._packs: list[bytes] = []
        self._pack_ordinals: dict[bytes, int] = {}

    def _pack_ordinal(self, pack_id: bytes) -> int:
        ordinal = self._pack_ordinals.get(pack_id)
        if ordinal is None:
            ordinal = self._pack_ordinals[pack_id] = len(self._packs)
            self._packs.append(pack_id)
        return ordinal

    def _table(self, key_id: bytes) -> ChunkTable:
        table = self._tables.get(key_id)
        if table is None:
            table = self._tables[key_id] = ChunkTable()
        return table

    def add_pack(self, pack_id: bytes, entries: Iterable[PackEntry], *, bulk: bool = False) -> None:
        """Adds every blob of a pack. With ``bulk``, entries are staged and
        :meth:`compact` must be called before lookups."""
        ordinal = self._pack_ordinal(pack_id)
        for e in entries:
            loc = _LOC.pack(ordinal, e.offset, e.stored_length, e.raw_length, e.type, e.flags)
            table = self._table(e.key_id)
            if bulk:
                table.stage(e.chunk_id, loc)
            else:
                table.add(e.chunk_id, loc)

    def merge_encoded(self, data: bytes, label: str = "index") -> None:
        """Stages every blob of an index file's plaintext, as
        ``merge_file(decode_index(data))`` does and refusing what it refuses,
        but without an object per blob: opening a vault reads every index
        file, and per-blob objects made that most of an incremental's start.
        Nothing is staged unless the whole file is valid."""
        keys, packs = _layout(data, label)
        staged_ids = [bytearray() for _ in keys]
        staged_locs = [bytearray() for _ in keys]
        new_packs: dict[bytes, int] = {}
        with memoryview(data) as view:
            for pack_id, start, end in packs:
                records = data[start:end]
                for kind in set(records[0::RECORD_SIZE]):
                    parse_blob_type(kind)
                for flags in set(records[1::RECORD_SIZE]):
                    check_flags(flags)
                ordinals = set(records[2::RECORD_SIZE])
                if ordinals and max(ordinals) >= len(keys):
                    raise FormatError(f"{label}: key ordinal {max(ordinals)} out of range")
                # A location is the pack's ordinal, then the record's offset,
                # stored and raw lengths, then its type and flags (_LOC).
                ordinal = self._pack_ordinals.get(pack_id)
                if ordinal is None:
                    ordinal = new_packs.setdefault(pack_id, len(self._packs) + len(new_packs))
                head = ordinal.to_bytes(4, "little")
                split = _SPLIT.iter_unpack(view[start:end])
                if len(ordinals) == 1:
                    (k,) = ordinals
                    ids, locs = staged_ids[k], staged_locs[k]
                    for kind_flags, _key, lengths, chunk_id in split:
                        ids += chunk_id
                        locs += head + lengths + kind_flags
                else:
                    for kind_flags, k, lengths, chunk_id in split:
                        staged_ids[k] += chunk_id
                        staged_locs[k] += head + lengths + kind_flags
        for pack_id, ordinal in new_packs.items():  # in ordinal order
            self._pack_ordinals[pack_id] = ordinal
            self._packs.append(pack_id)
        for key_id, ids, locs in zip(keys, staged_ids, staged_locs, strict=True):
            if ids:
                table = self._table(key_id)
                table._stage_ids += ids
                table._stage_locs += locs

    def merge_file(self, packs: Iterable[tuple[bytes, list[PackEntry]]]) -> None:
        """Stages every pack of a decoded index file (call :meth:`compact` after the last)."""
        for pack_id, entries in packs:
            self.add_pack(pack_id, entries, bulk=True)

    def compact(self) -> None:
        for table in self._tables.values():
            table.compact()

    def lookup(self, key_id: bytes, chunk_id: bytes) -> Location | None:
        table = self._tables.get(key_id)
        if table is None:
            return None
        loc = table.get(chunk_id)
        if loc is None:
            return None
        ordinal, offset, stored, raw, kind, flags = _LOC.unpack(loc)
        return Location(self._packs[ordinal], BlobType(kind), offset, stored, raw, flags)

    def contains(self, key_id: bytes, chunk_id: bytes) -> bool:
        table = self._tables.get(key_id)
        return table is not None and table.get(chunk_id) is not None

    def __len__(self) -> int:
        return sum(len(t) for t in self._tables.values())

    @property
    def key_ids(self) -> list[bytes]:
        return list(self._tables)

    def pack_ids(self) -> set[bytes]:
        """Packs at least one entry points into."""
        return set(self._packs)

    def entries(self) -> Iterator[tuple[bytes, bytes, Location]]:
        """(key id, chunk id, location) of every entry, sorted by chunk id per namespace."""
        for key_id, table in self._tables.items():
            for chunk_id, loc in table.items():
                ordinal, offset, stored, raw, kind, flags = _LOC.unpack(loc)
                yield key_id, chunk_id, Location(
                    self._packs[ordinal], BlobType(kind), offset, stored, raw, flags
                )
