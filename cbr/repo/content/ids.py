"""Chunk ids, pack ids and key ids (``docs/storage-format.md`` section 4).

This module owns how ids are computed: keyed BLAKE3 over a chunk's plaintext
(chunk id), SHA-256 over an object's bytes (pack id, index id), random key
ids, and the chunker seed derived from the chunk-id key. Hashing runs in the
native ``blake3`` and ``hashlib`` code. It must not know about storage,
compression or encryption.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable

import blake3

ID_SIZE = 32
"""Bytes in a chunk id, pack id or index id."""

KEY_ID_SIZE = 16
"""Bytes in a key id (hex in ``keys/<key-id>``)."""

CHUNK_KEY_SIZE = 32
"""Bytes in a chunk-id key (BLAKE3 keyed mode)."""

_SEED_CONTEXT = b"cbr/chunker-seed/v1"


class ChunkHasher:
    """Computes chunk ids in one namespace: ``BLAKE3(key=chunk_key, data=plaintext)``."""

    __slots__ = ("_key", "key_id")

    def __init__(self, key_id: bytes, key: bytes) -> None:
        if len(key_id) != KEY_ID_SIZE:
            raise ValueError(f"key id must be {KEY_ID_SIZE} bytes")
        if len(key) != CHUNK_KEY_SIZE:
            raise ValueError(f"chunk-id key must be {CHUNK_KEY_SIZE} bytes")
        self.key_id = key_id
        self._key = key

    def chunk_id(self, data: bytes | bytearray | memoryview) -> bytes:
        """The 32-byte chunk id of ``data``."""
        # One thread: callers already hash many chunks in parallel, and BLAKE3's
        # own thread pool spins on futexes between calls, which costs more
        # system time than it saves (measured: 20 s of sys in a tree restore).
        return blake3.blake3(data, key=self._key).digest()

    @property
    def key(self) -> bytes:
        """The chunk-id key itself: replication hands it to the target vault
        (section 4.2); nothing else should need it."""
        return self._key

    def chunker_seed(self) -> int:
        """The FastCDC gear seed of this namespace (63 bits, section 4.1)."""
        digest = blake3.blake3(_SEED_CONTEXT, key=self._key).digest()
        return int.from_bytes(digest[:8], "little") & (2**63 - 1)

    def __repr__(self) -> str:
        return f"ChunkHasher(key_id={self.key_id.hex()})"


def object_id(data: bytes | bytearray | memoryview) -> bytes:
    """SHA-256 of an object's bytes: the name of packs and index files."""
    return hashlib.sha256(data).digest()


def object_id_of_parts(parts: Iterable[bytes | bytearray | memoryview]) -> bytes:
    """SHA-256 of the concatenation of ``parts``, without concatenating them."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part)
    return h.digest()


def new_key_id() -> bytes:
    """A fresh random key id."""
    return secrets.token_bytes(KEY_ID_SIZE)


def new_chunk_key() -> bytes:
    """A fresh random chunk-id key."""
    return secrets.token_bytes(CHUNK_KEY_SIZE)


def parse_hex_id(text: str, size: int = ID_SIZE) -> bytes:
    """Bytes of a lower-case hex id of ``size`` bytes; ValueError otherwise."""
    if len(text) != 2 * size or text != text.lower():
        raise ValueError(f"not a {size}-byte lower-case hex id: {text!r}")
    return bytes.fromhex(text)
