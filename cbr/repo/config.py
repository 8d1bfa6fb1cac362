"""The vault ``config`` and ``keys/<key-id>`` documents (``docs/storage-format.md``
sections 3 and 4.3).

This module owns their JSON form, their defaults and the version check that
refuses vaults newer than this reader. It must not read or write storage
and must never hold a clear data key in a document it produces.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any

from cbr.repo.content.blob import DEFAULT_COMPRESSION_LEVEL
from cbr.repo.content.crypto import WrappedKey
from cbr.repo.content.ids import KEY_ID_SIZE, parse_hex_id
from cbr.repo.content.pack import DEFAULT_PACK_SIZE
from cbr.repo.errors import FormatError, UnsupportedVersion

FORMAT_NAME = "cbr-vault"
FORMAT_VERSION = 1
DEFAULT_BLOCK_SIZE = 1024 * 1024
DEFAULT_SEGMENT_ENTRIES = 4096
CHUNKER_MIN = 256 * 1024
CHUNKER_AVG = 1024 * 1024
CHUNKER_MAX = 4 * 1024 * 1024
CHUNKER_NORMALIZATION = 1
ENCRYPTION_NONE = "none"
ENCRYPTION_AES_GCM = "aes-256-gcm"


def utc_text(when: dt.datetime) -> str:
    """RFC 3339, UTC, microseconds, ``Z``."""
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_utc(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(dt.UTC)


@dataclass(frozen=True, slots=True)
class ChunkerParams:
    """FastCDC parameters of file content (section 9)."""

    min_size: int = CHUNKER_MIN
    avg_size: int = CHUNKER_AVG
    max_size: int = CHUNKER_MAX
    normalization: int = CHUNKER_NORMALIZATION


@dataclass(frozen=True, slots=True)
class VaultConfig:
    """The parsed ``config`` object."""

    vault_id: str
    chunk_key_id: bytes
    data_key_id: bytes | None
    created_at: dt.datetime
    version: int = FORMAT_VERSION
    compression_level: int = DEFAULT_COMPRESSION_LEVEL
    block_size: int = DEFAULT_BLOCK_SIZE
    segment_entries: int = DEFAULT_SEGMENT_ENTRIES
    pack_size: int = DEFAULT_PACK_SIZE
    chunker: ChunkerParams = field(default_factory=ChunkerParams)

    @property
    def encrypted(self) -> bool:
        return self.data_key_id is not None

    def to_json(self) -> bytes:
        doc = {
            "format": FORMAT_NAME,
            "version": self.version,
            "vault_id": self.vault_id,
            "created_at": utc_text(self.created_at),
            "chunk_key_id": self.chunk_key_id.hex(),
            "data_key_id": self.data_key_id.hex() if self.data_key_id else "",
            "encryption": ENCRYPTION_AES_GCM if self.encrypted else ENCRYPTION_NONE,
            "compression": {"algorithm": "zstd", "level": self.compression_level},
            "block_size": self.block_size,
            "segment_entries": self.segment_entries,
            "pack_size": self.pack_size,
            "chunker": {
                "algorithm": "fastcdc-2020",
                "min_size": self.chunker.min_size,
                "avg_size": self.chunker.avg_size,
                "max_size": self.chunker.max_size,
                "normalization": self.chunker.normalization,
                "seed": "chunk-key",
            },
        }
        return json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes) -> VaultConfig:
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise FormatError(f"config: not JSON ({exc})") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
            raise FormatError("config: not a CBR vault config")
        version = doc.get("version")
        if not isinstance(version, int) or version < 1:
            raise FormatError(f"config: bad version {version!r}")
        if version > FORMAT_VERSION:
            raise UnsupportedVersion(
                f"config: vault format version {version} is newer than this reader "
                f"({FORMAT_VERSION}); upgrade CBR to read it"
            )
        try:
            encryption = doc["encryption"]
            if encryption not in (ENCRYPTION_NONE, ENCRYPTION_AES_GCM):
                raise FormatError(f"config: unknown encryption {encryption!r}")
            if doc["compression"]["algorithm"] != "zstd":
                raise FormatError("config: unknown compression")
            ch = doc["chunker"]
            segment_entries = int(doc["segment_entries"])
            if not 1 <= segment_entries <= 65536:
                raise FormatError("config: segment_entries out of range")
            return cls(
                vault_id=str(doc["vault_id"]),
                chunk_key_id=parse_hex_id(doc["chunk_key_id"], KEY_ID_SIZE),
                data_key_id=(
                    parse_hex_id(doc["data_key_id"], KEY_ID_SIZE)
                    if encryption == ENCRYPTION_AES_GCM
                    else None
                ),
                created_at=parse_utc(doc["created_at"]),
                version=version,
                compression_level=int(doc["compression"]["level"]),
                block_size=int(doc["block_size"]),
                segment_entries=segment_entries,
                pack_size=int(doc["pack_size"]),
                chunker=ChunkerParams(
                    int(ch["min_size"]), int(ch["avg_size"]), int(ch["max_size"]),
                    int(ch["normalization"]),
                ),
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, FormatError):
                raise
            raise FormatError(f"config: missing or bad field ({exc})") from None


KEY_ALGORITHMS = {"chunk-id": "blake3-keyed", "data": "aes-256-gcm"}


def key_to_json(wrapped: WrappedKey, created_at: dt.datetime) -> bytes:
    doc: dict[str, Any] = {
        "key_id": wrapped.key_id.hex(),
        "purpose": wrapped.purpose,
        "algorithm": KEY_ALGORITHMS[wrapped.purpose],
        "vault_id": wrapped.vault_id,
        "created_at": utc_text(created_at),
        "wrapping": (
            {"scheme": "key-service", "kek_id": wrapped.kek_id}
            if wrapped.is_wrapped
            else {"scheme": "none"}
        ),
        "key": base64.b64encode(wrapped.key).decode(),
    }
    return json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n"


def key_from_json(data: bytes, label: str) -> WrappedKey:
    try:
        doc = json.loads(data)
        purpose = doc["purpose"]
        if purpose not in KEY_ALGORITHMS:
            raise FormatError(f"{label}: unknown key purpose {purpose!r}")
        scheme = doc["wrapping"]["scheme"]
        if scheme not in ("key-service", "none"):
            raise FormatError(f"{label}: unknown wrapping scheme {scheme!r}")
        return WrappedKey(
            key_id=parse_hex_id(doc["key_id"], KEY_ID_SIZE),
            purpose=purpose,
            vault_id=str(doc["vault_id"]),
            kek_id=str(doc["wrapping"]["kek_id"]) if scheme == "key-service" else "",
            key=base64.b64decode(doc["key"], validate=True),
        )
    except FormatError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise FormatError(f"{label}: bad key file ({exc})") from None
