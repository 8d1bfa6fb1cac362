"""Sharding object names into fan-out prefixes, so huge vaults make no huge directories.

With the default layout a name ``data/abcdef…`` is stored as
``data/ab/abcdef…``: the first ``width`` characters of the last segment
become one more directory level (kopia's ``repo/blob/sharded``). A vault of a
million packs then has 256 directories of ~4,000 files each instead of one
directory of a million. The wrapper is transparent: callers use and see the
unsharded names; ``list`` un-shards what it finds.

Which prefixes are sharded, and how wide, is part of the storage format
(``docs/storage-format.md``) and must never change for an existing vault.
This module owns only the name mapping: :func:`shard_name`,
:func:`unshard_name` and :class:`ShardedBackend`; it must not decide the
layout itself.

Names under a sharded prefix must have a last segment longer than the shard
width (content IDs are hex strings of 64 characters); shorter ones are
refused with :class:`InvalidName`, so the mapping is always reversible.
Objects directly under a sharded prefix are sharded; deeper names
(``data/x/y``) are refused too.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from cbr.storage.backend import (
    DEFAULT_CHUNK_SIZE,
    Backend,
    BackendWrapper,
    InvalidName,
    ObjectInfo,
    validate_name,
    validate_prefix,
)

DEFAULT_SHARD_WIDTH = 2


def _sharded_prefix(name: str, prefixes: Sequence[str]) -> str | None:
    for prefix in prefixes:
        if name.startswith(prefix):
            return prefix
    return None


def shard_name(name: str, prefixes: Sequence[str], width: int = DEFAULT_SHARD_WIDTH) -> str:
    """The stored name of ``name``: ``<p>ab/abcdef`` for ``<p>abcdef`` when ``<p>``
    is one of ``prefixes`` (each ending in ``/``); other names are unchanged."""
    validate_name(name)
    prefix = _sharded_prefix(name, prefixes)
    if prefix is None:
        return name
    leaf = name[len(prefix) :]
    if "/" in leaf or len(leaf) <= width:
        raise InvalidName(
            f"{name!r}: names under sharded prefix {prefix!r} must be one segment "
            f"longer than {width} characters",
            name,
        )
    return f"{prefix}{leaf[:width]}/{leaf}"


def unshard_name(
    stored: str, prefixes: Sequence[str], width: int = DEFAULT_SHARD_WIDTH
) -> str | None:
    """The caller's name for a stored name, or None if ``stored`` is not a
    well-formed sharded name (a foreign object)."""
    prefix = _sharded_prefix(stored, prefixes)
    if prefix is None:
        return stored
    shard, _, leaf = stored[len(prefix) :].partition("/")
    if len(shard) != width or "/" in leaf or len(leaf) <= width or not leaf.startswith(shard):
        return None
    return prefix + leaf


class ShardedBackend(BackendWrapper):
    """Stores names under ``prefixes`` (default ``("data/",)``) sharded by ``width``."""

    def __init__(
        self,
        inner: Backend,
        prefixes: Sequence[str] = ("data/",),
        width: int = DEFAULT_SHARD_WIDTH,
    ) -> None:
        super().__init__(inner)
        for prefix in prefixes:
            if not prefix.endswith("/"):
                raise ValueError(f"sharded prefix {prefix!r} must end with '/'")
            validate_prefix(prefix)
        if width < 1:
            raise ValueError("shard width must be >= 1")
        self.prefixes = tuple(prefixes)
        self.width = width

    def _s(self, name: str) -> str:
        return shard_name(name, self.prefixes, self.width)

    def put(self, name: str, data: bytes) -> None:
        self.inner.put(self._s(name), data)

    def put_if_absent(self, name: str, data: bytes) -> bool:
        return self.inner.put_if_absent(self._s(name), data)

    def put_stream(self, name: str, chunks: Iterable[bytes | memoryview]) -> int:
        return self.inner.put_stream(self._s(name), chunks)

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        return self.inner.get(self._s(name), offset, length)

    def iter_get(
        self,
        name: str,
        offset: int = 0,
        length: int | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> Iterator[bytes]:
        return self.inner.iter_get(self._s(name), offset, length, chunk_size)

    def stat(self, name: str) -> ObjectInfo:
        info = self.inner.stat(self._s(name))
        return ObjectInfo(name, info.size, info.mtime)

    def exists(self, name: str) -> bool:
        return self.inner.exists(self._s(name))

    def delete(self, name: str) -> None:
        self.inner.delete(self._s(name))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Lists the narrowest stored prefix that covers ``prefix`` and keeps
        the names that start with it after un-sharding."""
        validate_prefix(prefix)
        return self._list(prefix)

    def _stored_prefix(self, prefix: str) -> str:
        sharded = _sharded_prefix(prefix, self.prefixes)
        if sharded is None:
            return prefix
        leaf = prefix[len(sharded) :]
        if len(leaf) >= self.width and "/" not in leaf:
            return f"{sharded}{leaf[: self.width]}/{leaf}"
        return sharded  # the shard is not determined yet: list the whole prefix

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        for info in self.inner.list(self._stored_prefix(prefix)):
            name = unshard_name(info.name, self.prefixes, self.width)
            if name is not None and name.startswith(prefix):
                yield ObjectInfo(name, info.size, info.mtime)
