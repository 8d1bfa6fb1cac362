"""The vault storage format: ``docs/storage-format.md`` in code.

Layers, each using only the ones above it in this list:

- ``errors``: the format layer's exceptions.
- ``ids``: keyed BLAKE3 chunk ids, SHA-256 object ids, key ids (section 4).
- ``crypto``: AES-256-GCM sealing, key wrapping through the key service (4.3, 5).
- ``blob``: one chunk's stored form and its verification (5).
- ``pack``: pack layout, writer and header reader (6).
- ``envelope``, ``index``: index files and the in-memory index (7).
- ``config``, ``layout``, ``manifest``: config and key documents, object
  names, backup manifests (2, 3, 10).
- ``repository``: a vault over a ``cbr.storage`` backend; write order (11).
- ``disk_map``, ``tree``, ``chunker``: disks, file trees, FastCDC (8, 9).
- ``locks``, ``walk``, ``prune``, ``verify``: vault maintenance: locks, the
  chunks a backup reaches, deleting backups and freeing space, integrity
  checks (12, 13). They are imported as modules where needed, never here,
  so a backup does not load them.

This package must not import ``controller`` or ``agent``; both use it.
"""

from cbr.repo.blob import BlobType
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
from cbr.repo.manifest import DiskContent, Manifest, Resource, TreeContent
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
