"""Packs: many blobs of one type, a header listing them, a fixed trailer
(``docs/storage-format.md`` section 6).

This module owns the pack byte layout: :class:`PackWriter` accumulates
encoded blobs up to a target size and emits the pack as parts plus its id
(SHA-256, computed incrementally) and entries; :func:`read_pack_header`
parses a stored pack's header from its tail with range reads. It must not
decide which blobs go where (the content store does) nor keep an index.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping
from dataclasses import dataclass

from cbr.repo.content.blob import (
    FLAG_COMPRESSED,
    FLAG_ENCRYPTED,
    BlobType,
    EncodedBlob,
    check_flags,
    compress,
    decompress,
    parse_blob_type,
)
from cbr.repo.content.crypto import DataKey, DecryptFailed
from cbr.repo.content.ids import KEY_ID_SIZE
from cbr.repo.errors import FormatError, IntegrityError, KeyUnavailable, UnsupportedVersion
from cbr.storage.backend import Backend

PACK_VERSION = 1
PACK_MAGIC = b"CBRPACK\x00"
HEADER_MAGIC = b"CBRH"
DEFAULT_PACK_SIZE = 16 * 1024 * 1024
RUN_BLOB_MAX = 64 * 1024
"""Stored blobs smaller than this are copied into a run (see :class:`PackWriter`)."""
RUN_SIZE = 256 * 1024
TAIL_READ = 64 * 1024
"""Bytes read from a pack's end in the first range request."""

MAX_HEADER_RAW = 256 * 1024 * 1024

_TRAILER = struct.Struct("<16sIBBH8s")
TRAILER_SIZE = _TRAILER.size  # 32
_HEADER_FIXED = struct.Struct("<4sBBHI")  # magic, type, key count, reserved, blob count
_ENTRY = struct.Struct("<BBHII32s")  # flags, key ordinal, reserved, stored, raw, chunk id
ENTRY_SIZE = _ENTRY.size  # 44
_ZERO_KEY = bytes(KEY_ID_SIZE)
_HEADER_AAD = b"cbr/pack-header/v1"


@dataclass(frozen=True, slots=True)
class PackEntry:
    """Where one blob sits in a pack."""

    type: BlobType
    key_id: bytes
    chunk_id: bytes
    offset: int
    stored_length: int
    raw_length: int
    flags: int


@dataclass(frozen=True, slots=True)
class FinishedPack:
    """A closed pack: upload ``parts`` (in order) as ``data/<hex(pack_id)>``."""

    pack_id: bytes
    parts: list[bytes | memoryview]
    size: int
    blob_type: BlobType
    entries: list[PackEntry]


def _header_aad(key_id: bytes, flags: int) -> bytes:
    return _HEADER_AAD + key_id + bytes((flags, PACK_VERSION))


def encode_header(
    blob_type: BlobType, entries: list[PackEntry], data_key: DataKey | None
) -> tuple[bytes, bytes]:
    """(stored header, trailer) for ``entries``."""
    key_ids: dict[bytes, int] = {}
    for entry in entries:
        key_ids.setdefault(entry.key_id, len(key_ids))
    if len(key_ids) > 255:
        raise ValueError("a pack holds blobs of at most 255 namespaces")
    parts = [_HEADER_FIXED.pack(HEADER_MAGIC, blob_type, len(key_ids), 0, len(entries))]
    parts.extend(key_ids)
    parts.extend(
        _ENTRY.pack(e.flags, key_ids[e.key_id], 0, e.stored_length, e.raw_length, e.chunk_id)
        for e in entries
    )
    stored = compress(b"".join(parts))
    flags = FLAG_COMPRESSED
    key_id = _ZERO_KEY
    if data_key is not None:
        flags |= FLAG_ENCRYPTED
        key_id = data_key.key_id
        stored = data_key.seal(stored, _header_aad(key_id, flags))
    trailer = _TRAILER.pack(key_id, len(stored), flags, PACK_VERSION, 0, PACK_MAGIC)
    return stored, trailer


@dataclass(frozen=True, slots=True)
class Trailer:
    key_id: bytes
    header_length: int
    flags: int


def parse_trailer(tail: bytes, pack: str = "") -> Trailer:
    """The trailer at the end of ``tail`` (the last bytes of a pack)."""
    if len(tail) < TRAILER_SIZE:
        raise FormatError(f"truncated pack {pack}: shorter than its trailer")
    key_id, header_length, flags, version, _reserved, magic = _TRAILER.unpack_from(
        tail, len(tail) - TRAILER_SIZE
    )
    if magic != PACK_MAGIC:
        raise FormatError(f"pack {pack}: bad magic (truncated or not a pack)")
    if version > PACK_VERSION:
        raise UnsupportedVersion(f"pack {pack}: version {version} is newer than {PACK_VERSION}")
    check_flags(flags)
    return Trailer(key_id, header_length, flags)


def decode_header(
    stored: bytes,
    trailer: Trailer,
    data_keys: Mapping[bytes, DataKey],
    pack: str = "",
) -> tuple[BlobType, list[PackEntry]]:
    """Blob type and entries (with offsets) of a stored header."""
    body: bytes = stored
    if trailer.flags & FLAG_ENCRYPTED:
        data_key = data_keys.get(trailer.key_id)
        if data_key is None:
            raise KeyUnavailable(f"pack {pack}: data key {trailer.key_id.hex()} is not loaded")
        try:
            body = data_key.open(stored, _header_aad(trailer.key_id, trailer.flags))
        except DecryptFailed:
            raise IntegrityError(
                f"pack {pack}: header fails authentication", pack_id=pack
            ) from None
    if trailer.flags & FLAG_COMPRESSED:
        try:
            body = decompress(body, MAX_HEADER_RAW)
        except Exception as exc:
            raise FormatError(f"pack {pack}: cannot decompress header ({exc})") from None
    if len(body) < _HEADER_FIXED.size:
        raise FormatError(f"pack {pack}: header too short")
    magic, blob_type, key_count, _r, count = _HEADER_FIXED.unpack_from(body)
    if magic != HEADER_MAGIC:
        raise FormatError(f"pack {pack}: bad header magic")
    expected = _HEADER_FIXED.size + KEY_ID_SIZE * key_count + ENTRY_SIZE * count
    if len(body) != expected:
        raise FormatError(f"pack {pack}: header length {len(body)} != {expected}")
    kind = parse_blob_type(blob_type)
    pos = _HEADER_FIXED.size
    keys = [body[pos + i * KEY_ID_SIZE : pos + (i + 1) * KEY_ID_SIZE] for i in range(key_count)]
    pos += KEY_ID_SIZE * key_count
    entries: list[PackEntry] = []
    offset = 0
    for flags, ordinal, _r2, stored_len, raw_len, chunk_id in _ENTRY.iter_unpack(body[pos:]):
        check_flags(flags)
        if ordinal >= key_count:
            raise FormatError(f"pack {pack}: key ordinal {ordinal} out of range")
        entries.append(
            PackEntry(kind, keys[ordinal], chunk_id, offset, stored_len, raw_len, flags)
        )
        offset += stored_len
    return kind, entries


class PackWriter:
    """Accumulates encoded blobs of one type into one pack.

    Memory: the blobs added so far (at most about ``target_size``).

    Blobs smaller than :data:`RUN_BLOB_MAX` are copied into *runs*, buffers
    of :data:`RUN_SIZE` that become one part each: the pack's hash is then
    updated, and storage written, once per run instead of once per blob.
    Each such update or write released the GIL, and on a tree of small files
    every release is a hand-off between threads (a futex wake and a context
    switch), a cost several times the work itself. A run's place in the
    pack is fixed when it is full or the pack is finished, so a large blob
    added meanwhile goes before it; entries are kept in byte order either way.
    """

    def __init__(
        self, blob_type: BlobType, data_key: DataKey | None, target_size: int = DEFAULT_PACK_SIZE
    ) -> None:
        self.blob_type = blob_type
        self.target_size = target_size
        self._data_key = data_key
        self._parts: list[bytes | memoryview] = []
        self._entries: list[PackEntry] = []
        self._hash = hashlib.sha256()
        self._size = 0  # bytes added, whether placed yet or still in the run
        self._placed = 0  # bytes in ``_parts``
        self._run: bytearray | None = None
        self._run_used = 0
        self._run_blobs: list[EncodedBlob] = []  # in the open run, as held
        self.chunk_ids: set[tuple[bytes, bytes]] = set()
        """(key id, chunk id) of the blobs in this open pack."""

    @property
    def size(self) -> int:
        return self._size

    @property
    def count(self) -> int:
        return len(self._entries) + len(self._run_blobs)

    def fits(self, stored_length: int) -> bool:
        """Whether a blob of this stored length goes into this pack (an empty pack
        takes any blob)."""
        return not self.count or self._size + stored_length <= self.target_size

    def add(self, blob: EncodedBlob) -> EncodedBlob:
        """Adds ``blob``; returns it as the pack holds it, which is what a
        reader of the open pack should use: a small blob is then a view of
        its run, and the caller need keep no second copy of its bytes."""
        if blob.type != self.blob_type:
            raise ValueError(f"a {self.blob_type.name} pack cannot hold a {blob.type.name} blob")
        length = len(blob.stored)
        if self._size + length >= 2**32:
            raise ValueError("pack would exceed 4 GiB")
        self._size += length
        self.chunk_ids.add((blob.key_id, blob.chunk_id))
        if length >= RUN_BLOB_MAX:
            self._place(blob, blob.stored)
            return blob
        if self._run is None or self._run_used + length > len(self._run):
            self._seal_run()
            self._run = bytearray(RUN_SIZE)
        start = self._run_used
        self._run[start:start + length] = blob.stored
        self._run_used += length
        held = EncodedBlob(blob.type, blob.key_id, blob.chunk_id,
                           memoryview(self._run)[start:start + length],  # type: ignore[arg-type]
                           blob.flags, blob.raw_length)
        self._run_blobs.append(held)
        return held

    def _place(self, blob: EncodedBlob, data: bytes | memoryview) -> None:
        self._entries.append(PackEntry(blob.type, blob.key_id, blob.chunk_id, self._placed,
                                       len(data), blob.raw_length, blob.flags))
        self._parts.append(data)
        self._hash.update(data)
        self._placed += len(data)

    def _seal_run(self) -> None:
        """Places the open run after everything placed so far."""
        if self._run is None or not self._run_used:
            return
        offset = self._placed
        for blob in self._run_blobs:
            length = len(blob.stored)
            self._entries.append(PackEntry(blob.type, blob.key_id, blob.chunk_id, offset,
                                           length, blob.raw_length, blob.flags))
            offset += length
        part = memoryview(self._run)[:self._run_used]
        self._parts.append(part)
        self._hash.update(part)
        self._placed += len(part)
        self._run, self._run_used, self._run_blobs = None, 0, []

    def finish(self) -> FinishedPack:
        """Closes the pack: appends header and trailer and computes the pack id."""
        self._seal_run()
        if not self._entries:
            raise ValueError("empty pack")
        header, trailer = encode_header(self.blob_type, self._entries, self._data_key)
        self._hash.update(header)
        self._hash.update(trailer)
        parts = [*self._parts, header, trailer]
        size = self._placed + len(header) + len(trailer)
        return FinishedPack(self._hash.digest(), parts, size, self.blob_type, list(self._entries))


def read_pack_header(
    backend: Backend,
    name: str,
    data_keys: Mapping[bytes, DataKey],
    pack_id: bytes = b"",
) -> tuple[BlobType, list[PackEntry], int]:
    """Blob type, entries and size of the stored pack ``name``, from its tail.

    One range read of the last :data:`TAIL_READ` bytes, a second one only
    when the header is longer. Raises :class:`FormatError` for a truncated or
    malformed pack.
    """
    label = pack_id.hex() if pack_id else name
    size = backend.stat(name).size
    if size < TRAILER_SIZE:
        raise FormatError(f"truncated pack {label}: {size} bytes")
    first = min(size, TAIL_READ)
    tail = backend.get(name, size - first, first)
    if len(tail) != first:
        raise FormatError(f"truncated pack {label}: short read")
    trailer = parse_trailer(tail, label)
    header_end = size - TRAILER_SIZE
    header_start = header_end - trailer.header_length
    if header_start < 0:
        raise FormatError(f"truncated pack {label}: header longer than the pack")
    if trailer.header_length <= first - TRAILER_SIZE:
        stored = tail[first - TRAILER_SIZE - trailer.header_length : first - TRAILER_SIZE]
    else:
        stored = backend.get(name, header_start, trailer.header_length)
        if len(stored) != trailer.header_length:
            raise FormatError(f"truncated pack {label}: short header read")
    kind, entries = decode_header(stored, trailer, data_keys, label)
    blobs_end = entries[-1].offset + entries[-1].stored_length if entries else 0
    if blobs_end != header_start:
        raise FormatError(
            f"pack {label}: blobs end at {blobs_end} but the header starts at {header_start}"
        )
    return kind, entries, size
