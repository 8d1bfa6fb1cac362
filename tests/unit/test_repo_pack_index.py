"""Packs and index files: layout round trips, truncation refused, merged index."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cbr.repo.content.blob import FLAG_COMPRESSED, BlobType, decode_blob, encode_blob
from cbr.repo.content.crypto import DataKey, new_data_key
from cbr.repo.content.ids import ChunkHasher, new_chunk_key, new_key_id, object_id_of_parts
from cbr.repo.content.index import BYTES_PER_CHUNK, Index, decode_index, encode_index
from cbr.repo.content.pack import TAIL_READ, PackEntry, PackWriter, read_pack_header
from cbr.repo.errors import FormatError
from cbr.storage.local import LocalBackend

HASHER = ChunkHasher(new_key_id(), new_chunk_key())


def _pack(n: int, data_key: DataKey | None = None, size: int = 4096):
    writer = PackWriter(BlobType.DATA, data_key, target_size=1 << 30)
    payloads = [os.urandom(size) for _ in range(n)]
    for p in payloads:
        writer.add(encode_blob(p, blob_type=BlobType.DATA, hasher=HASHER, data_key=data_key))
    return writer.finish(), payloads


@pytest.mark.parametrize("encrypted", [False, True])
@pytest.mark.parametrize("count", [1, 5, 3000])  # 3000 entries: header beyond the first tail read
def test_pack_header_is_read_back_from_the_tail(
    tmp_path: Path, encrypted: bool, count: int
) -> None:
    key = DataKey(new_key_id(), new_data_key()) if encrypted else None
    pack, payloads = _pack(count, key, size=64)
    backend = LocalBackend(tmp_path)
    backend.put_stream("p", pack.parts)
    assert pack.pack_id == object_id_of_parts(pack.parts)
    if count == 3000:
        assert len(pack.parts[-2]) > TAIL_READ or count * 44 > TAIL_READ
    kind, entries, size = read_pack_header(backend, "p", {key.key_id: key} if key else {})
    assert kind is BlobType.DATA and size == pack.size
    assert entries == pack.entries
    assert [e.chunk_id for e in entries] == [HASHER.chunk_id(p) for p in payloads]


def test_truncated_pack_is_refused(tmp_path: Path) -> None:
    pack, _ = _pack(3)
    data = b"".join(pack.parts)
    backend = LocalBackend(tmp_path)
    for cut in (1, 10, 40, len(data) - 20):
        backend.put("p", data[:-cut])
        with pytest.raises(FormatError):
            read_pack_header(backend, "p", {})
    backend.put("p", data[:20])
    with pytest.raises(FormatError, match="truncated"):
        read_pack_header(backend, "p", {})


def test_pack_with_a_damaged_header_is_refused(tmp_path: Path) -> None:
    pack, _ = _pack(3)
    data = bytearray(b"".join(pack.parts))
    data[-33] ^= 0xFF  # last byte of the header
    backend = LocalBackend(tmp_path)
    backend.put("p", bytes(data))
    with pytest.raises(FormatError):
        read_pack_header(backend, "p", {})


def test_pack_of_one_type_refuses_another() -> None:
    writer = PackWriter(BlobType.META, None)
    with pytest.raises(ValueError):
        writer.add(encode_blob(b"x", blob_type=BlobType.DATA, hasher=HASHER, data_key=None))


def test_index_file_round_trips() -> None:
    p1, _ = _pack(4)
    p2, _ = _pack(2)
    other_ns = ChunkHasher(new_key_id(), new_chunk_key())
    extra = PackEntry(BlobType.META, other_ns.key_id, other_ns.chunk_id(b"m"), 0, 10, 1, 0)
    packs = [(p1.pack_id, p1.entries), (p2.pack_id, [*p2.entries, extra])]
    encoded = encode_index(packs)
    assert decode_index(encoded) == packs
    with pytest.raises(FormatError):
        decode_index(encoded[:-1])
    with pytest.raises(FormatError):
        decode_index(encoded + b"\0")


def test_merged_index_finds_every_blob_in_every_namespace_and_ignores_duplicates() -> None:
    p1, _ = _pack(10)
    p2, _ = _pack(10)
    index = Index()
    index.merge_file([(p1.pack_id, p1.entries)])
    index.merge_file([(p2.pack_id, p2.entries), (p1.pack_id, p1.entries)])  # p1 twice
    index.compact()
    assert len(index) == 20
    for pack in (p1, p2):
        for e in pack.entries:
            loc = index.lookup(HASHER.key_id, e.chunk_id)
            assert loc is not None and loc.pack_id == pack.pack_id
            assert (loc.offset, loc.stored_length, loc.raw_length) == (
                e.offset, e.stored_length, e.raw_length)
    assert not index.contains(new_key_id(), p1.entries[0].chunk_id)
    assert index.lookup(HASHER.key_id, b"\0" * 32) is None


def test_index_holds_many_chunks_in_flat_arrays() -> None:
    index = Index()
    ids = [os.urandom(32) for _ in range(50_000)]
    entries = [PackEntry(BlobType.DATA, HASHER.key_id, c, i, 1, 1, 0) for i, c in enumerate(ids)]
    index.add_pack(b"\1" * 32, entries[:25_000])  # incremental adds (tail + merges)
    index.merge_file([(b"\2" * 32, entries[25_000:])])  # bulk
    index.compact()
    assert len(index) == 50_000
    assert all(index.contains(HASHER.key_id, c) for c in ids[::97])
    loc = index.lookup(HASHER.key_id, ids[30_000])
    assert loc is not None and loc.pack_id == b"\2" * 32 and loc.offset == 30_000
    assert BYTES_PER_CHUNK == 58


def _lookups(index: Index, entries: list[tuple[bytes, PackEntry]]) -> list[object]:
    return [index.lookup(e.key_id, e.chunk_id) for _p, e in entries]


def test_an_index_file_merged_encoded_is_the_index_merged_decoded() -> None:
    p1, _ = _pack(30)
    p2, _ = _pack(5)
    other = ChunkHasher(new_key_id(), new_chunk_key())
    mixed = [*p2.entries, PackEntry(BlobType.META, other.key_id, other.chunk_id(b"m"), 7, 10, 9,
                                    FLAG_COMPRESSED)]
    files = [encode_index([(p1.pack_id, p1.entries), (p2.pack_id, mixed)]),
             encode_index([(p1.pack_id, p1.entries[:3])])]  # a pack again: kept once
    decoded, encoded = Index(), Index()
    for data in files:
        decoded.merge_file(decode_index(data))
        encoded.merge_encoded(data)
    decoded.compact()
    encoded.compact()
    everything = [(p1.pack_id, e) for e in p1.entries] + [(p2.pack_id, e) for e in mixed]
    assert len(encoded) == len(decoded) == 36
    assert _lookups(encoded, everything) == _lookups(decoded, everything)
    assert encoded.pack_ids() == {p1.pack_id, p2.pack_id}


@pytest.mark.parametrize("damage", ["truncated", "trailing", "type", "flags", "ordinal", "magic"])
def test_a_damaged_index_file_merges_nothing_and_says_why(damage: str) -> None:
    p1, _ = _pack(4)
    data = bytearray(encode_index([(p1.pack_id, p1.entries)]))
    first_record = 12 + 16 + 36  # file header, one key id, pack header
    if damage == "truncated":
        data = data[:-1]
    elif damage == "trailing":
        data += b"\0"
    elif damage == "type":
        data[first_record + 48] = 9
    elif damage == "flags":
        data[first_record + 1] = 0x80
    elif damage == "ordinal":
        data[first_record + 2] = 1
    else:
        data[0:4] = b"XXXX"
    index = Index()
    with pytest.raises(FormatError):
        decode_index(bytes(data))
    with pytest.raises(FormatError):
        index.merge_encoded(bytes(data))
    index.compact()
    assert len(index) == 0 and index.pack_ids() == set()


@pytest.mark.parametrize("encrypted", [False, True])
def test_small_and_large_blobs_interleaved_are_each_read_back_at_their_entry(
    tmp_path: Path, encrypted: bool
) -> None:
    """Small blobs go into runs placed later than large blobs added between
    them; every entry must still point at its own bytes, and a blob handed
    back by ``add`` (what the repository keeps while the pack is open)
    must decode as the pack will."""
    key = DataKey(new_key_id(), new_data_key()) if encrypted else None
    writer = PackWriter(BlobType.DATA, key, target_size=1 << 30)
    sizes = [100, 70_000, 3000, 200_000, 40_000, 65_536, 1, 300_000] + [20_000] * 30
    payloads = [os.urandom(n) for n in sizes]
    held = [writer.add(encode_blob(p, blob_type=BlobType.DATA, hasher=HASHER, data_key=key))
            for p in payloads]
    pack = writer.finish()
    backend = LocalBackend(tmp_path)
    backend.put_stream("p", pack.parts)
    data = backend.get("p")
    _kind, entries, _size = read_pack_header(backend, "p", {key.key_id: key} if key else {})
    assert entries == pack.entries
    by_id = {HASHER.chunk_id(p): p for p in payloads}
    assert sorted(e.chunk_id for e in entries) == sorted(by_id)
    for e in entries:
        stored = data[e.offset:e.offset + e.stored_length]
        assert decode_blob(stored, blob_type=e.type, flags=e.flags, raw_length=e.raw_length,
                           chunk_id=e.chunk_id, hasher=HASHER, data_key=key) == by_id[e.chunk_id]
    for blob, p in zip(held, payloads, strict=True):
        assert decode_blob(blob.stored, blob_type=blob.type, flags=blob.flags,
                           raw_length=blob.raw_length, chunk_id=blob.chunk_id,
                           hasher=HASHER, data_key=key) == p
    # Offsets are those of the bytes: blob after blob, in entry order.
    assert [e.offset for e in entries] == [sum(x.stored_length for x in entries[:i])
                                           for i in range(len(entries))]


def test_the_same_blobs_added_in_the_same_order_make_the_same_pack() -> None:
    """Prune relies on it for unencrypted vaults (section 12)."""
    payloads = [os.urandom(n) for n in (500, 90_000, 700, 30_000, 120_000, 10)]

    def pack_of() -> bytes:
        writer = PackWriter(BlobType.DATA, None, target_size=1 << 30)
        for p in payloads:
            writer.add(encode_blob(p, blob_type=BlobType.DATA, hasher=HASHER, data_key=None))
        return b"".join(writer.finish().parts)

    assert pack_of() == pack_of()
