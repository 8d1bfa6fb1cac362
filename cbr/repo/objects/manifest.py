"""Backup manifests (``docs/storage-format.md`` section 10).

This module owns the manifest document: every catalog field of a backup
(so ``cbr vault import-storage`` can rebuild the catalog from storage alone)
plus what the backup's content is (a disk map's segments, a tree root, or
nothing for a server whose disks are its children). JSON in, JSON out; it
must not read or write storage (the repository does, write-once).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any

from cbr.repo.config import parse_utc, utc_text
from cbr.repo.content.ids import ID_SIZE, KEY_ID_SIZE, parse_hex_id
from cbr.repo.errors import FormatError, UnsupportedVersion

MANIFEST_VERSION = 1


@dataclass(frozen=True, slots=True)
class DiskContent:
    """A disk backup: size and the stored disk-map segments (number, chunk id)."""

    size: int
    block_size: int
    segment_entries: int
    segments: list[tuple[int, bytes]]

    def to_doc(self) -> dict[str, Any]:
        return {
            "kind": "disk",
            "size": self.size,
            "block_size": self.block_size,
            "segment_entries": self.segment_entries,
            "segments": [[n, cid.hex()] for n, cid in self.segments],
        }


@dataclass(frozen=True, slots=True)
class TreeContent:
    """A file-system backup: the root tree blob and the root directory's own
    entry document (``root_meta``; None in backups written before it was
    kept, which restore as they always did)."""

    root: bytes
    root_meta: dict[str, Any] | None = field(default=None, compare=False)

    def to_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"kind": "tree", "root": self.root.hex()}
        if self.root_meta is not None:
            doc["root_meta"] = self.root_meta
        return doc

    @property
    def size(self) -> int | None:
        """What a restore of the whole tree writes, if the backup recorded it."""
        if self.root_meta is None or "tree_size" not in self.root_meta:
            return None
        return int(self.root_meta["tree_size"])


Content = DiskContent | TreeContent | None


@dataclass(frozen=True, slots=True)
class Resource:
    id: str
    name: str
    type: str
    size: int


@dataclass(frozen=True, slots=True)
class Manifest:
    """One backup as stored in ``manifests/<backup_id>``."""

    backup_id: str
    name: str
    checkpoint_id: str
    vault_id: str
    resource: Resource
    created_at: dt.datetime
    chunk_key_id: bytes
    content: Content
    description: str = ""
    protected_at: dt.datetime | None = None
    expired_at: dt.datetime | None = None
    parent_id: str | None = None
    children: list[str] = field(default_factory=list)
    incremental: bool = False
    image_type: str = "backup"
    extend_info: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    source: dict[str, Any] | None = None

    def to_json(self) -> bytes:
        def t(when: dt.datetime | None) -> str | None:
            return utc_text(when) if when is not None else None

        doc = {
            "v": MANIFEST_VERSION,
            "backup_id": self.backup_id,
            "name": self.name,
            "description": self.description,
            "checkpoint_id": self.checkpoint_id,
            "vault_id": self.vault_id,
            "resource": {
                "id": self.resource.id,
                "name": self.resource.name,
                "type": self.resource.type,
                "size": self.resource.size,
            },
            "parent_id": self.parent_id,
            "children": list(self.children),
            "created_at": t(self.created_at),
            "protected_at": t(self.protected_at),
            "expired_at": t(self.expired_at),
            "incremental": self.incremental,
            "image_type": self.image_type,
            "extend_info": self.extend_info,
            "chunk_key_id": self.chunk_key_id.hex(),
            "content": self.content.to_doc() if self.content is not None else {"kind": "none"},
            "stats": self.stats,
            "warnings": list(self.warnings),
            "source": self.source,
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes, label: str = "manifest") -> Manifest:
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise FormatError(f"{label}: not JSON ({exc})") from None
        try:
            version = doc["v"]
            if version > MANIFEST_VERSION:
                raise UnsupportedVersion(f"{label}: version {version} is newer than supported")
            res = doc["resource"]
            c = doc["content"]
            content: Content
            if c["kind"] == "disk":
                content = DiskContent(
                    int(c["size"]),
                    int(c["block_size"]),
                    int(c["segment_entries"]),
                    [(int(n), parse_hex_id(h, ID_SIZE)) for n, h in c["segments"]],
                )
            elif c["kind"] == "tree":
                meta = c.get("root_meta")
                if meta is not None and not isinstance(meta, dict):
                    raise FormatError(f"{label}: root_meta is not an object")
                content = TreeContent(parse_hex_id(c["root"], ID_SIZE), meta)
            elif c["kind"] == "none":
                content = None
            else:
                raise FormatError(f"{label}: unknown content kind {c['kind']!r}")

            def t(text: str | None) -> dt.datetime | None:
                return parse_utc(text) if text else None

            created = t(doc["created_at"])
            if created is None:
                raise FormatError(f"{label}: created_at missing")
            return cls(
                backup_id=str(doc["backup_id"]),
                name=str(doc["name"]),
                description=str(doc.get("description", "")),
                checkpoint_id=str(doc["checkpoint_id"]),
                vault_id=str(doc["vault_id"]),
                resource=Resource(str(res["id"]), str(res["name"]), str(res["type"]),
                                  int(res["size"])),
                parent_id=doc.get("parent_id"),
                children=[str(x) for x in doc.get("children", [])],
                created_at=created,
                protected_at=t(doc.get("protected_at")),
                expired_at=t(doc.get("expired_at")),
                incremental=bool(doc["incremental"]),
                image_type=str(doc["image_type"]),
                extend_info=dict(doc.get("extend_info", {})),
                chunk_key_id=parse_hex_id(doc["chunk_key_id"], KEY_ID_SIZE),
                content=content,
                stats=dict(doc.get("stats", {})),
                warnings=[str(w) for w in doc.get("warnings", [])],
                source=doc.get("source"),
            )
        except FormatError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise FormatError(f"{label}: missing or bad field ({exc})") from None
