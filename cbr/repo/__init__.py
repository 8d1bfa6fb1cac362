"""The vault storage format: ``docs/storage-format.md`` in code.

Floors, each using only the ones above it in this list:

- ``errors``, ``layout``, ``config``: the format layer's exceptions, object
  names, the config and key documents (sections 2, 3, 4.3). Shared by every
  floor; they use only ``content``'s leaf modules (ids, crypto, blob, pack).
- ``content``: chunks stored, found and read back: ids, crypto, blobs,
  packs, index files and the content store with its write order (4-7, 11).
- ``objects``: what chunks make up: manifests, disk maps, trees, the
  chunker, the tree diff (8-10).
- ``repository``: :class:`Repository`, a vault over a ``cbr.storage``
  backend: its keys, config and manifests over a content store (2, 3, 10, 11).
- ``maintenance``: locks, the chunks a backup reaches, deleting backups and
  freeing space, integrity checks, repair (12, 13). Imported as modules where
  needed, never here, so a backup does not load them.
- ``replicate``: copying backups into another vault (16), over all of these.

This package must not import ``controller`` or ``agent``; both use it.
"""

from cbr.repo.content.blob import BlobType
from cbr.repo.errors import (
    ChunkNotFound,
    FormatError,
    IntegrityError,
    KeyUnavailable,
    ManifestExists,
    ManifestNotFound,
    RepoError,
    UnsafeName,
    UnsupportedVersion,
    VaultExists,
)
from cbr.repo.objects.manifest import DiskContent, Manifest, Resource, TreeContent
from cbr.repo.repository import Repository

__all__ = [
    "BlobType",
    "ChunkNotFound",
    "DiskContent",
    "FormatError",
    "IntegrityError",
    "KeyUnavailable",
    "Manifest",
    "ManifestExists",
    "ManifestNotFound",
    "RepoError",
    "Repository",
    "Resource",
    "TreeContent",
    "UnsafeName",
    "UnsupportedVersion",
    "VaultExists",
]
