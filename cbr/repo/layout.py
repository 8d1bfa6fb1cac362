"""Object names of a vault's storage (``docs/storage-format.md`` section 2).

This module owns the one mapping from format objects to backend names and
the sharding of ``data/``. It must not read or write anything.
"""

from __future__ import annotations

from cbr.repo.content.ids import ID_SIZE, parse_hex_id
from cbr.storage.backend import Backend, validate_name
from cbr.storage.sharded import ShardedBackend

CONFIG = "config"
KEYS = "keys/"
DATA = "data/"
INDEX = "index/"
MANIFESTS = "manifests/"
LOCKS = "locks/"
CONDEMNED = "condemned/"
SHARDED_PREFIXES = (DATA,)
SHARD_WIDTH = 2


def sharded(backend: Backend) -> Backend:
    """``backend`` seen through the vault's sharding (``data/ab/ab…``)."""
    return ShardedBackend(backend, SHARDED_PREFIXES, SHARD_WIDTH)


def pack_name(pack_id: bytes) -> str:
    return DATA + pack_id.hex()


def index_name(index_id: bytes) -> str:
    return INDEX + index_id.hex()


def key_name(key_id: bytes) -> str:
    return KEYS + key_id.hex()


def manifest_name(backup_id: str) -> str:
    """``manifests/<backup-id>``; ValueError if the id cannot be an object name."""
    if not backup_id or "/" in backup_id:
        raise ValueError(f"invalid backup id {backup_id!r}")
    return validate_name(MANIFESTS + backup_id)


def id_from_name(name: str, prefix: str, size: int = ID_SIZE) -> bytes | None:
    """The ``size``-byte id in ``<prefix><hex id>``, or None for a foreign name."""
    try:
        return parse_hex_id(name[len(prefix) :], size) if name.startswith(prefix) else None
    except ValueError:
        return None
