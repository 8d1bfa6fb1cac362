"""Tree blobs: full metadata round trip, names that could escape a restore
target refused, chunk lists, and the content-defined chunker."""

from __future__ import annotations

import json
import os

import pytest

from cbr.repo.config import ChunkerParams
from cbr.repo.content.ids import ChunkHasher, new_chunk_key, new_key_id
from cbr.repo.errors import FormatError, UnsafeName
from cbr.repo.objects.chunker import make_chunker
from cbr.repo.objects.tree import (
    EntryType,
    TreeEntry,
    decode_chunk_list,
    decode_tree,
    decode_tree_refs,
    encode_chunk_list,
    encode_tree,
    split_content,
    validate_link_path,
    validate_name,
)

ID = bytes(range(32))


def _entries() -> list[TreeEntry]:
    return [
        TreeEntry(
            name=b"data.bin", type=EntryType.FILE, mode=0o4755, uid=1000, gid=100, user="alice",
            group="users", atime=1, mtime=1_700_000_000_123_456_789, ctime=3, size=10 << 30,
            inode=42, dev=2049, nlink=2, xattrs={"user.tag": b"\x00\xffv"},
            content=[ID, ID], extents=[(0, 4096), (1 << 30, 8192)], changed=True,
        ),
        TreeEntry(name=b"link-to-data", type=EntryType.HARDLINK, link=[b"dir", b"data.bin"],
                  inode=42, nlink=2),
        TreeEntry(name=b"\xff\xfe-not-utf8", type=EntryType.SYMLINK,
                  target=b"/etc/../\xff/passwd"),
        TreeEntry(name=b"sub", type=EntryType.DIR, mode=0o700, subtree=ID),
        TreeEntry(name=b"sda", type=EntryType.BLOCKDEV, rdev=0x0801),
        TreeEntry(name=b"pipe", type=EntryType.FIFO),
        TreeEntry(name="名前".encode(), type=EntryType.FILE, content_list=[ID]),
    ]


def test_tree_round_trips_every_field_and_is_deterministic() -> None:
    entries = _entries()
    encoded = encode_tree(entries)
    assert encode_tree(list(reversed(entries))) == encoded
    decoded = decode_tree(encoded)
    assert decoded == sorted(entries, key=lambda e: e.name)


@pytest.mark.parametrize("name", [b"", b".", b"..", b"a/b", b"/etc", b"x\0y", b"../../x"])
def test_names_that_could_escape_the_target_are_refused(name: bytes) -> None:
    with pytest.raises(UnsafeName):
        validate_name(name)
    with pytest.raises(UnsafeName):
        encode_tree([TreeEntry(name=name, type=EntryType.FILE)])


@pytest.mark.parametrize("name", ["..", "../evil", "/abs", "a\u0000b", ""])
def test_stored_trees_with_escaping_names_are_refused_on_read(name: str) -> None:
    forged = json.dumps({"v": 1, "entries": [{"name": name, "type": "file"}]}).encode()
    with pytest.raises(UnsafeName):
        decode_tree(forged)


def test_hardlink_paths_that_escape_are_refused() -> None:
    with pytest.raises(UnsafeName):
        validate_link_path([b"a", b"..", b"etc"])
    with pytest.raises(UnsafeName):
        validate_link_path([])
    forged = b'{"v":1,"entries":[{"name":"h","type":"hardlink","link":[{"name":".."}]}]}'
    with pytest.raises(UnsafeName):
        decode_tree(forged)


def test_duplicate_names_are_refused() -> None:
    forged = b'{"v":1,"entries":[{"name":"a","type":"fifo"},{"name":"a","type":"fifo"}]}'
    with pytest.raises(UnsafeName):
        decode_tree(forged)


def test_malformed_or_newer_trees_are_refused() -> None:
    with pytest.raises(FormatError):
        decode_tree(b"not json")
    with pytest.raises(FormatError):
        decode_tree(b'{"v":1,"entries":[{"name":"d","type":"dir"}]}')  # dir without subtree
    with pytest.raises(FormatError, match="newer"):
        decode_tree(b'{"v":99,"entries":[]}')


def test_the_references_of_a_tree_are_those_its_full_decoding_gives() -> None:
    encoded = encode_tree(_entries())
    refs = decode_tree_refs(encoded)
    assert [(r.content, r.content_list, r.subtree) for r in refs] == \
        [(e.content, e.content_list, e.subtree) for e in decode_tree(encoded)]
    for bad in (b"not json", b'{"v":99,"entries":[]}',
                b'{"v":1,"entries":[{"name":"f","type":"file","content":["zz"]}]}',
                b'{"v":1,"entries":[{"name":"d","type":"dir","subtree":7}]}',
                b'{"v":1,"entries":[{"name":"f","type":"file","content":"' + b"a" * 64 + b'"}]}'):
        with pytest.raises(FormatError):
            decode_tree_refs(bad)


def test_chunk_lists_round_trip_for_huge_files() -> None:
    ids = [os.urandom(32) for _ in range(20_000)]
    parts = split_content(ids)
    assert [len(p) for p in parts] == [8192, 8192, 3616]
    assert [i for p in parts for i in decode_chunk_list(encode_chunk_list(p))] == ids
    with pytest.raises(FormatError):
        decode_chunk_list(encode_chunk_list(ids[:3])[:-1])


def test_inserting_bytes_mid_file_changes_only_nearby_chunks() -> None:
    hasher = ChunkHasher(new_key_id(), new_chunk_key())
    chunker = make_chunker(ChunkerParams(), hasher)
    data = os.urandom(24 << 20)
    edited = data[: 12 << 20] + b"inserted!" + data[12 << 20 :]

    def ids(buf: bytes) -> list[bytes]:
        return [hasher.chunk_id(c.data) for c in chunker.cut_buf(buf)]

    before, after = ids(data), ids(edited)
    assert len(before) > 8
    assert len(set(after) - set(before)) <= 3
    other = make_chunker(ChunkerParams(), ChunkHasher(new_key_id(), new_chunk_key()))
    cuts = [c.length for c in chunker.cut_buf(data)]
    assert [c.length for c in other.cut_buf(data)] != cuts  # keyed gear seed

