"""The envelope around index files and manifests (``docs/storage-format.md`` section 7).

This module owns the 24-byte clear envelope header (magic, version, flags,
data key id) and the zstd-then-AES-256-GCM body, with the header and the
object's name binding as associated data. It must not know what the
plaintext means.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

import zstandard

from cbr.repo.content.blob import FLAG_COMPRESSED, FLAG_ENCRYPTED, check_flags, compress
from cbr.repo.content.crypto import DataKey, DecryptFailed
from cbr.repo.content.ids import KEY_ID_SIZE
from cbr.repo.errors import FormatError, IntegrityError, KeyUnavailable, UnsupportedVersion

ENVELOPE_VERSION = 1
INDEX_MAGIC = b"CBRI"
MANIFEST_MAGIC = b"CBRM"
MAX_PLAINTEXT = 1024 * 1024 * 1024
_HEADER = struct.Struct("<4sBBH16s")
HEADER_SIZE = _HEADER.size  # 24


def seal_envelope(
    magic: bytes, plaintext: bytes, data_key: DataKey | None, binding: bytes = b""
) -> bytes:
    """Envelope bytes of ``plaintext``: compressed, and sealed when ``data_key`` is given."""
    flags = FLAG_COMPRESSED | (FLAG_ENCRYPTED if data_key is not None else 0)
    key_id = data_key.key_id if data_key is not None else bytes(KEY_ID_SIZE)
    header = _HEADER.pack(magic, ENVELOPE_VERSION, flags, 0, key_id)
    body = compress(plaintext)
    if data_key is not None:
        body = data_key.seal(body, header + binding)
    return header + body


def open_envelope(
    magic: bytes,
    data: bytes,
    data_keys: Mapping[bytes, DataKey],
    *,
    label: str,
    binding: bytes = b"",
    require_encryption: bool = False,
) -> bytes:
    """Plaintext of an envelope; ``label`` names the object in errors."""
    if len(data) < HEADER_SIZE:
        raise FormatError(f"{label}: truncated (shorter than its header)")
    got_magic, version, flags, _r, key_id = _HEADER.unpack_from(data)
    if got_magic != magic:
        raise FormatError(f"{label}: bad magic {got_magic!r}")
    if version > ENVELOPE_VERSION:
        raise UnsupportedVersion(f"{label}: version {version} is newer than {ENVELOPE_VERSION}")
    check_flags(flags)
    body: bytes = data[HEADER_SIZE:]
    if flags & FLAG_ENCRYPTED:
        data_key = data_keys.get(key_id)
        if data_key is None:
            raise KeyUnavailable(f"{label}: data key {key_id.hex()} is not loaded")
        try:
            body = data_key.open(body, data[:HEADER_SIZE] + binding)
        except DecryptFailed:
            raise IntegrityError(f"{label}: fails authentication (damaged or moved)") from None
    elif require_encryption:
        raise IntegrityError(f"{label}: not encrypted in an encrypted vault")
    if flags & FLAG_COMPRESSED:
        try:
            body = zstandard.ZstdDecompressor().decompress(body, max_output_size=MAX_PLAINTEXT)
        except zstandard.ZstdError as exc:
            raise FormatError(f"{label}: cannot decompress ({exc})") from None
    return body
