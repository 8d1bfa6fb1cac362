"""Errors of the vault storage format layer (``docs/storage-format.md``).

This module owns the exception classes raised by ``cbr.repo``. Each names the
object (chunk, pack, index file, manifest) it is about, so a message can be
shown to a person as is. They are not CBR API errors: the controller and the
agent map them to task errors. Storage I/O failures are not wrapped: they
arrive as ``cbr.storage.StorageError`` subclasses.
"""

from __future__ import annotations


class RepoError(Exception):
    """Base of every error of the format layer."""


class FormatError(RepoError):
    """An object is malformed or truncated (bad magic, short read, bad lengths)."""


class UnsupportedVersion(FormatError):
    """An object has a format version newer than this reader knows."""


class IntegrityError(RepoError):
    """A blob or object does not match its id, or fails authentication.

    ``chunk_id`` and ``pack_id`` (hex) are set when known.
    """

    def __init__(self, message: str, *, chunk_id: str = "", pack_id: str = "") -> None:
        super().__init__(message)
        self.chunk_id = chunk_id
        self.pack_id = pack_id


class ChunkNotFound(RepoError):
    """No index entry for this chunk id in this namespace."""

    def __init__(self, chunk_id: str, key_id: str = "") -> None:
        where = f" in namespace {key_id}" if key_id else ""
        super().__init__(f"chunk {chunk_id} not found{where}")
        self.chunk_id = chunk_id
        self.key_id = key_id


class ManifestExists(RepoError):
    """A manifest with this backup id is already stored (manifests are write-once)."""


class ManifestNotFound(RepoError):
    """No manifest with this backup id."""


class KeyUnavailable(RepoError):
    """A key needed to read or write the vault is missing or cannot be unwrapped."""


class UnsafeName(RepoError, ValueError):
    """A tree entry name (or hardlink path) could write outside a restore target."""


class VaultExists(RepoError):
    """``init`` found a ``config`` already in the storage."""
