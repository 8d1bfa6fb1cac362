"""Directory trees: one meta blob per directory (``docs/storage-format.md`` section 9).

This module owns the tree entry model (all metadata a file-system backup
keeps), its deterministic JSON encoding, chunk-list blobs for huge files, and
the name rules restore relies on to never write outside its target
(:func:`validate_name`, :func:`validate_link_path`). It is pure data: it must
not touch the file system, storage or the index.
"""

from __future__ import annotations

import base64
import enum
import json
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cbr.repo.content.ids import ID_SIZE, parse_hex_id
from cbr.repo.errors import FormatError, UnsafeName, UnsupportedVersion

TREE_VERSION = 1
MAX_INLINE_CHUNKS = 8192
"""Files with more chunks list them in chunk-list blobs (``content_list``)."""
CHUNK_LIST_MAGIC = b"CBRL"
_CHUNK_LIST_HEADER = struct.Struct("<4sB3xI")


class EntryType(enum.StrEnum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    HARDLINK = "hardlink"
    FIFO = "fifo"
    CHARDEV = "chardev"
    BLOCKDEV = "blockdev"
    SOCKET = "socket"


def validate_name(name: bytes) -> bytes:
    """Returns ``name`` if restore may create it inside a directory.

    Refused (:class:`UnsafeName`): empty, ``.``, ``..``, containing ``/`` or NUL.
    """
    if not isinstance(name, bytes):
        raise UnsafeName(f"entry name must be bytes, not {type(name).__name__}")
    if name in (b"", b".", b".."):
        raise UnsafeName(f"unsafe entry name {name!r}")
    if b"/" in name or b"\0" in name:
        raise UnsafeName(f"entry name contains '/' or NUL: {name!r}")
    return name


def validate_link_path(parts: Sequence[bytes]) -> list[bytes]:
    """A hardlink's path (names from the backup root), each name checked."""
    if not parts:
        raise UnsafeName("empty hardlink path")
    return [validate_name(p) for p in parts]


def _enc_name(key: str, value: bytes, out: dict[str, Any]) -> None:
    try:
        out[key] = value.decode("utf-8")
    except UnicodeDecodeError:
        out[key + "_b"] = base64.b64encode(value).decode()


def _dec_name(key: str, doc: dict[str, Any]) -> bytes | None:
    if key in doc:
        return str(doc[key]).encode("utf-8")
    if key + "_b" in doc:
        return base64.b64decode(doc[key + "_b"], validate=True)
    return None


@dataclass(slots=True)
class TreeEntry:
    """One name in a directory, with its metadata."""

    name: bytes
    type: EntryType
    mode: int = 0
    uid: int = 0
    gid: int = 0
    user: str = ""
    group: str = ""
    atime: int = 0
    mtime: int = 0
    ctime: int = 0
    size: int = 0
    inode: int = 0
    dev: int = 0
    nlink: int = 0
    rdev: int = 0
    xattrs: dict[str, bytes] = field(default_factory=dict)
    target: bytes | None = None
    link: list[bytes] | None = None
    content: list[bytes] = field(default_factory=list)
    content_list: list[bytes] = field(default_factory=list)
    extents: list[tuple[int, int]] = field(default_factory=list)
    subtree: bytes | None = None
    changed: bool = False
    tree_size: int | None = None  # dir: bytes of every file below (section 9)

    def to_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"type": self.type.value}
        _enc_name("name", self.name, doc)
        for key in ("mode", "uid", "gid", "atime", "mtime", "ctime", "size", "inode", "dev",
                    "nlink", "rdev"):
            value = getattr(self, key)
            if value:
                doc[key] = value
        if self.user:
            doc["user"] = self.user
        if self.group:
            doc["group"] = self.group
        if self.xattrs:
            doc["xattrs"] = {k: base64.b64encode(v).decode() for k, v in self.xattrs.items()}
        if self.target is not None:
            _enc_name("target", self.target, doc)
        if self.link is not None:
            parts: list[dict[str, Any]] = []
            for part in self.link:
                item: dict[str, Any] = {}
                _enc_name("name", part, item)
                parts.append(item)
            doc["link"] = parts
        if self.content:
            doc["content"] = [c.hex() for c in self.content]
        if self.content_list:
            doc["content_list"] = [c.hex() for c in self.content_list]
        if self.extents:
            doc["extents"] = [[o, n] for o, n in self.extents]
        if self.subtree is not None:
            doc["subtree"] = self.subtree.hex()
        if self.changed:
            doc["changed"] = True
        if self.tree_size is not None:
            doc["tree_size"] = self.tree_size
        return doc

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> TreeEntry:
        name = _dec_name("name", doc)
        if name is None:
            raise FormatError("tree entry without a name")
        validate_name(name)
        try:
            kind = EntryType(doc["type"])
        except ValueError:
            raise FormatError(f"tree entry {name!r}: unknown type {doc['type']!r}") from None
        link = None
        if "link" in doc:
            link_parts = []
            for item in doc["link"]:
                part = _dec_name("name", item)
                if part is None:
                    raise FormatError(f"tree entry {name!r}: bad hardlink path")
                link_parts.append(part)
            link = validate_link_path(link_parts)
        if kind is EntryType.HARDLINK and link is None:
            raise FormatError(f"tree entry {name!r}: hardlink without a path")
        subtree = parse_hex_id(doc["subtree"], ID_SIZE) if "subtree" in doc else None
        if kind is EntryType.DIR and subtree is None:
            raise FormatError(f"tree entry {name!r}: directory without a subtree")
        return cls(
            name=name,
            type=kind,
            mode=int(doc.get("mode", 0)),
            uid=int(doc.get("uid", 0)),
            gid=int(doc.get("gid", 0)),
            user=str(doc.get("user", "")),
            group=str(doc.get("group", "")),
            atime=int(doc.get("atime", 0)),
            mtime=int(doc.get("mtime", 0)),
            ctime=int(doc.get("ctime", 0)),
            size=int(doc.get("size", 0)),
            inode=int(doc.get("inode", 0)),
            dev=int(doc.get("dev", 0)),
            nlink=int(doc.get("nlink", 0)),
            rdev=int(doc.get("rdev", 0)),
            xattrs={k: base64.b64decode(v, validate=True) for k, v in
                    doc.get("xattrs", {}).items()},
            target=_dec_name("target", doc),
            link=link,
            content=[parse_hex_id(c, ID_SIZE) for c in doc.get("content", [])],
            content_list=[parse_hex_id(c, ID_SIZE) for c in doc.get("content_list", [])],
            extents=[(int(o), int(n)) for o, n in doc.get("extents", [])],
            subtree=subtree,
            changed=bool(doc.get("changed", False)),
            tree_size=int(doc["tree_size"]) if "tree_size" in doc else None,
        )


def root_entry(subtree: bytes | None, meta: dict[str, Any] | None) -> TreeEntry:
    """The tree's root directory as an entry (named ``b""``): its own
    metadata, a manifest's ``root_meta`` (section 10), when the backup kept
    it, else a bare directory."""
    if meta is None:
        return TreeEntry(name=b"", type=EntryType.DIR, subtree=subtree)
    doc = {k: v for k, v in meta.items() if k not in ("name", "name_b", "subtree")}
    doc.update(name="root", type=EntryType.DIR.value, subtree=(subtree or bytes(32)).hex())
    entry = TreeEntry.from_doc(doc)  # it wants a name and a subtree
    entry.name = b""
    entry.subtree = subtree
    return entry


def root_meta(entry: TreeEntry, tree_size: int) -> dict[str, Any]:
    """A root directory's entry as a manifest keeps it (``root_meta``)."""
    doc = entry.to_doc()
    for key in ("name", "name_b", "subtree"):
        doc.pop(key, None)
    doc["tree_size"] = tree_size
    return doc


def encode_tree(entries: Iterable[TreeEntry]) -> bytes:
    """Deterministic tree-blob plaintext; refuses unsafe or duplicate names."""
    named = []
    for entry in entries:
        if entry.link is not None:
            validate_link_path(entry.link)
        named.append((entry.name, entry.to_doc()))
    return encode_tree_docs(named)


def encode_tree_docs(named: Iterable[tuple[bytes, dict[str, Any]]]) -> bytes:
    """Deterministic tree-blob plaintext of entry documents, each given with
    its name; the same bytes :func:`encode_tree` makes of the same entries,
    so an incremental can keep a parent's documents without decoding them."""
    ordered = sorted(named, key=lambda item: item[0])
    for i, (name, _doc) in enumerate(ordered):
        validate_name(name)
        if i and ordered[i - 1][0] == name:
            raise UnsafeName(f"duplicate entry name {name!r}")
    doc = {"v": TREE_VERSION, "entries": [d for _name, d in ordered]}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def tree_docs(data: bytes, label: str = "tree") -> list[dict[str, Any]]:
    """The entry documents of a tree blob, undecoded (:func:`decode_tree`
    checks and decodes them)."""
    try:
        doc = json.loads(data)
        version = doc["v"]
        raw_entries = doc["entries"]
    except (ValueError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise FormatError(f"{label}: not a tree ({exc})") from None
    if version > TREE_VERSION:
        raise UnsupportedVersion(f"{label}: version {version} is newer than {TREE_VERSION}")
    if not isinstance(raw_entries, list) or not all(isinstance(e, dict) for e in raw_entries):
        raise FormatError(f"{label}: entries are not a list of objects")
    return raw_entries


def doc_name(doc: dict[str, Any]) -> bytes | None:
    """The name of an entry document; None if it has none or a malformed one."""
    try:
        return _dec_name("name", doc)
    except (ValueError, TypeError):
        return None


@dataclass(frozen=True, slots=True)
class TreeRefs:
    """What one tree entry reaches."""

    content: list[bytes]
    content_list: list[bytes]
    subtree: bytes | None


def decode_tree_refs(data: bytes, label: str = "tree") -> list[TreeRefs]:
    """What a tree blob's entries reach, the rest of each entry left
    undecoded: a walk that only follows references (replication) reads
    every tree of a backup, and building whole entries was most of its time.
    Restores and checks use :func:`decode_tree`, which checks every entry."""
    refs = []
    try:
        for doc in tree_docs(data, label):
            subtree = doc.get("subtree")
            refs.append(TreeRefs(
                [parse_hex_id(c, ID_SIZE) for c in doc.get("content", ())],
                [parse_hex_id(c, ID_SIZE) for c in doc.get("content_list", ())],
                parse_hex_id(subtree, ID_SIZE) if subtree is not None else None))
    except (TypeError, ValueError, AttributeError) as exc:
        raise FormatError(f"{label}: bad entry ({exc})") from None
    return refs


def decode_tree(data: bytes, label: str = "tree") -> list[TreeEntry]:
    """Entries of a tree blob, each name checked (:class:`UnsafeName`), no duplicates."""
    raw_entries = tree_docs(data, label)
    try:
        entries = [TreeEntry.from_doc(e) for e in raw_entries]
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, UnsafeName):
            raise
        raise FormatError(f"{label}: bad entry ({exc})") from None
    seen: set[bytes] = set()
    for entry in entries:
        if entry.name in seen:
            raise UnsafeName(f"{label}: duplicate entry name {entry.name!r}")
        seen.add(entry.name)
    return entries


def encode_chunk_list(ids: Sequence[bytes]) -> bytes:
    """A chunk-list meta blob (content of a huge file, in order)."""
    return _CHUNK_LIST_HEADER.pack(CHUNK_LIST_MAGIC, 1, len(ids)) + b"".join(ids)


def decode_chunk_list(data: bytes, label: str = "chunk list") -> list[bytes]:
    if len(data) < _CHUNK_LIST_HEADER.size:
        raise FormatError(f"{label}: truncated")
    magic, version, count = _CHUNK_LIST_HEADER.unpack_from(data)
    if magic != CHUNK_LIST_MAGIC:
        raise FormatError(f"{label}: bad magic")
    if version > 1:
        raise UnsupportedVersion(f"{label}: version {version} is newer than 1")
    body = data[_CHUNK_LIST_HEADER.size :]
    if len(body) != count * ID_SIZE:
        raise FormatError(f"{label}: {len(body)} bytes for {count} ids")
    return [body[i * ID_SIZE : (i + 1) * ID_SIZE] for i in range(count)]


def split_content(ids: Sequence[bytes]) -> list[list[bytes]]:
    """``ids`` cut into chunk lists of at most :data:`MAX_INLINE_CHUNKS`."""
    return [list(ids[i : i + MAX_INLINE_CHUNKS]) for i in range(0, len(ids), MAX_INLINE_CHUNKS)]
