"""The vault storage backend interface, its contract, and its typed errors.

A backend is a flat map from *names* to immutable-by-convention byte strings
(*objects*), the bottom of the data path (kopia's ``repo/blob``; restic's
``internal/backend/backend.go``). Packs, indexes and manifests are written by
higher layers through this interface only; they never learn which backend they
talk to. Every backend obeys the contract written in the docstrings of
:class:`Backend`, and ``tests/contract`` runs the same suite on each of them.

This module owns the interface, the name rules (:func:`validate_name`), the
error hierarchy and the defaults every backend shares. It must not know about
any concrete backend, and it must not import ``controller`` or ``agent``.

Names
    ``/``-separated relative keys made of segments of ``[A-Za-z0-9_-]``
    followed by ``[A-Za-z0-9._-]`` (so no segment is empty, ``.``, ``..`` or
    starts with a dot: dot-names are reserved for backend-internal files such
    as a local backend's temp files). At most :data:`MAX_NAME_LENGTH` bytes,
    each segment at most :data:`MAX_SEGMENT_LENGTH`. No name may also be a
    directory of another name (``a`` and ``a/b`` together): a filesystem
    cannot hold both, so the storage layout never asks for it and the result is
    undefined. Names are validated by every method, so nothing can escape the
    root; an invalid name raises :class:`InvalidName` before any I/O.

Errors
    Every failure is a :class:`StorageError`. :class:`StorageUnavailable` is
    the only *transient* class (``retryable`` is true): retry it, e.g. with
    :class:`cbr.storage.retry.RetryingBackend`. Everything else is permanent
    and retrying cannot help: :class:`ObjectNotFound`, :class:`StorageFull`,
    :class:`StoragePermissionDenied`, :class:`InvalidName`, and plain
    :class:`StorageError` for anything unclassified.

Concurrency
    Backends are safe to use from many threads at once. Concurrent ``put`` of
    the same name leaves one of the written objects, whole.
"""

from __future__ import annotations

import abc
import datetime as dt
import functools
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import ClassVar

MAX_NAME_LENGTH = 1024
"""Longest name in bytes (S3's key limit; a backend's prefix comes on top)."""

MAX_SEGMENT_LENGTH = 255
"""Longest segment between slashes (a filesystem's NAME_MAX)."""

DEFAULT_PART_SIZE = 16 * 1024 * 1024
"""Size of the parts ``put_stream`` uploads (S3 multipart) or buffers."""

DEFAULT_CHUNK_SIZE = 1024 * 1024
"""Size of the pieces ``iter_get`` yields unless told otherwise."""

_SEGMENT = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
_PREFIX_CHARS = re.compile(r"[A-Za-z0-9._/-]*")


# -- errors -----------------------------------------------------------------------------------


class StorageError(Exception):
    """A storage operation failed; permanent unless the class says otherwise.

    ``name`` is the object the operation was about, when there is one.
    """

    retryable: ClassVar[bool] = False

    def __init__(self, message: str, name: str | None = None) -> None:
        super().__init__(message)
        self.name = name


class ObjectNotFound(StorageError):
    """No object has this name."""

    def __init__(self, name: str, message: str | None = None) -> None:
        super().__init__(message or f"object not found: {name}", name)


class InvalidName(StorageError, ValueError):
    """The name breaks the name rules; nothing was read or written."""


class StorageFull(StorageError):
    """No space left: the disk is full (ENOSPC, EDQUOT) or a quota is exceeded."""


class StoragePermissionDenied(StorageError):
    """The storage refused access: file permissions, read-only filesystem, S3
    AccessDenied, bad or missing credentials."""


class StorageUnavailable(StorageError):
    """Transient: the storage could not be reached or answered "try later"
    (connection refused or reset, timeouts, HTTP 5xx, SlowDown). Retry."""

    retryable: ClassVar[bool] = True


# -- names ------------------------------------------------------------------------------------


def validate_name(name: str) -> str:
    """Returns ``name`` if it obeys the name rules, else raises :class:`InvalidName`."""
    if not isinstance(name, str):
        raise InvalidName(f"object name must be a str, not {type(name).__name__}")
    _check_name(name)
    return name


@functools.lru_cache(maxsize=8192)
def _check_name(name: str) -> None:
    """The rules, remembered for names that passed: a restore reads one pack
    name for each of thousands of blobs, twice (sharded and local layers)."""
    if not name:
        raise InvalidName("object name is empty", name)
    if len(name.encode()) > MAX_NAME_LENGTH:
        raise InvalidName(f"object name longer than {MAX_NAME_LENGTH} bytes", name)
    for segment in name.split("/"):
        if len(segment) > MAX_SEGMENT_LENGTH:
            raise InvalidName(
                f"object name segment longer than {MAX_SEGMENT_LENGTH} bytes: {name!r}", name
            )
        if not _SEGMENT.fullmatch(segment):
            raise InvalidName(
                f"invalid object name {name!r}: segments are non-empty, use only "
                "A-Z a-z 0-9 . _ - and do not start with a dot",
                name,
            )


def validate_prefix(prefix: str) -> str:
    """Returns ``prefix`` if it can start a valid name (``""`` lists everything).

    A prefix need not end at a segment boundary (``data/ab`` matches
    ``data/abcd``), but it must not contain what no name contains.
    """
    if not isinstance(prefix, str):
        raise InvalidName(f"prefix must be a str, not {type(prefix).__name__}")
    if not prefix:
        return prefix
    if len(prefix.encode()) > MAX_NAME_LENGTH or not _PREFIX_CHARS.fullmatch(prefix):
        raise InvalidName(f"invalid prefix {prefix!r}", prefix)
    segments = prefix.split("/")
    # Every segment but the last is complete and must be valid; the last may be
    # empty (prefix ends with "/") or the start of a segment.
    for segment in segments[:-1]:
        if not _SEGMENT.fullmatch(segment):
            raise InvalidName(f"invalid prefix {prefix!r}", prefix)
    if segments[-1] and not _SEGMENT.fullmatch(segments[-1]):
        raise InvalidName(f"invalid prefix {prefix!r}", prefix)
    return prefix


def check_range(offset: int, length: int | None) -> None:
    """Raises ValueError for a negative offset or length (a caller's bug)."""
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    if length is not None and length < 0:
        raise ValueError(f"length must be >= 0 or None, got {length}")


# -- the interface ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What ``stat`` and ``list`` say about one object."""

    name: str
    size: int
    mtime: dt.datetime
    """Last modification, timezone-aware UTC (precision depends on the backend)."""


class Backend(abc.ABC):
    """A flat map of named objects: the one interface every storage implements.

    The contract, per method, is what callers may rely on; the contract suite
    in ``tests/contract`` checks it on every backend. Objects are opaque bytes.
    Methods raise only :class:`StorageError` subclasses (and ValueError for a
    negative offset or length); see the module docstring for which are
    retryable.
    """

    #: Human-readable location for logs and messages, never with credentials.
    location: str = ""

    # -- writing -------------------------------------------------------------------------

    @abc.abstractmethod
    def put(self, name: str, data: bytes) -> None:
        """Stores ``data`` as ``name``: create-or-replace, atomically.

        A concurrent or later reader sees either the previous state (no object,
        or the old object) or the whole new object, never a part of it, even
        if the writer crashes midway. When ``put`` returns, the object is
        durable (local: fsynced file and directory; S3: acknowledged PUT).
        Replacing is allowed for names the storage layout declares mutable;
        write-once objects (manifests) use :meth:`put_if_absent`.
        """

    @abc.abstractmethod
    def put_if_absent(self, name: str, data: bytes) -> bool:
        """Stores ``data`` as ``name`` only if no object has that name yet.

        Returns True if this call created the object, False if one already
        existed (it is left untouched). Atomic like :meth:`put`. Whether two
        racing callers can both get True depends on the backend and is stated
        there (local: never; S3: never when the server honours
        ``If-None-Match: *``, possible in the HEAD-then-PUT fallback).
        """

    @abc.abstractmethod
    def put_stream(self, name: str, chunks: Iterable[bytes | memoryview]) -> int:
        """Stores the concatenation of ``chunks`` as ``name``; returns its size.

        For objects too large to hold in memory: at most about one part
        (:data:`DEFAULT_PART_SIZE`) is buffered. Create-or-replace and atomic
        like :meth:`put`: nothing is visible until the last chunk is stored,
        and a failure (in the backend or raised by the iterable) leaves no
        object and no visible partial state behind.
        """

    # -- reading -------------------------------------------------------------------------

    @abc.abstractmethod
    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        """Returns bytes ``[offset, offset + length)`` of the object (all from
        ``offset`` when ``length`` is None).

        Like slicing: a range reaching past the end returns the bytes up to
        the end, and an offset at or past the end returns ``b""``; callers
        that need an exact length compare. Raises :class:`ObjectNotFound` when
        there is no such object.
        """

    @abc.abstractmethod
    def iter_get(
        self,
        name: str,
        offset: int = 0,
        length: int | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> Iterator[bytes]:
        """Streams the same bytes as :meth:`get` in pieces of at most ``chunk_size``.

        Memory does not grow with the object. :class:`ObjectNotFound` is
        raised by the call itself (the object is opened eagerly); I/O errors
        while streaming are raised by the iterator as :class:`StorageError`.
        Close the iterator (or exhaust it) to release the connection or file.
        """

    @abc.abstractmethod
    def stat(self, name: str) -> ObjectInfo:
        """Size and mtime of the object; :class:`ObjectNotFound` if there is none."""

    def exists(self, name: str) -> bool:
        """Whether an object has this name (a snapshot: it may change at once)."""
        try:
            self.stat(name)
        except ObjectNotFound:
            return False
        return True

    @abc.abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose name starts with ``prefix`` (a plain string prefix).

        Order is unspecified. Objects written or deleted while listing may or
        may not appear; every object that exists for the whole listing
        appears exactly once. Backend-internal files (temp files) never
        appear. Errors are raised by the iterator.
        """

    # -- deleting ------------------------------------------------------------------------

    @abc.abstractmethod
    def delete(self, name: str) -> None:
        """Removes the object; idempotent (no error if it does not exist).

        Not necessarily durable at once: after a crash a deleted object may
        reappear, so garbage collection must tolerate doing a delete twice.
        """

    def remove_abandoned_writes(self, older_than_s: float, *,
                                dry_run: bool = False) -> tuple[int, int]:
        """Removes what writers that never finished left behind (a killed
        writer's temp files, an S3 multipart upload never completed or
        aborted) started more than ``older_than_s`` seconds ago; returns how
        many and their bytes. Younger ones may belong to a write in progress
        elsewhere and stay. ``dry_run`` only counts them (with 0 seconds: the
        space unfinished writes take now, which usage includes). A backend
        whose writes leave nothing behind has nothing to do."""
        return 0, 0

    # -- lifecycle -----------------------------------------------------------------------

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Releases connections and files; the backend is unusable afterwards."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.location!r})"


class BackendWrapper(Backend):
    """A backend that delegates every call to ``inner``: base of the wrappers
    (retry, sharding, fault injection), which override only what they change."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.location = inner.location

    def put(self, name: str, data: bytes) -> None:
        self.inner.put(name, data)

    def put_if_absent(self, name: str, data: bytes) -> bool:
        return self.inner.put_if_absent(name, data)

    def put_stream(self, name: str, chunks: Iterable[bytes | memoryview]) -> int:
        return self.inner.put_stream(name, chunks)

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        return self.inner.get(name, offset, length)

    def iter_get(
        self,
        name: str,
        offset: int = 0,
        length: int | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> Iterator[bytes]:
        return self.inner.iter_get(name, offset, length, chunk_size)

    def stat(self, name: str) -> ObjectInfo:
        return self.inner.stat(name)

    def exists(self, name: str) -> bool:
        return self.inner.exists(name)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self.inner.list(prefix)

    def delete(self, name: str) -> None:
        self.inner.delete(name)

    def remove_abandoned_writes(self, older_than_s: float, *,
                                dry_run: bool = False) -> tuple[int, int]:
        return self.inner.remove_abandoned_writes(older_than_s, dry_run=dry_run)

    def close(self) -> None:
        self.inner.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.inner!r})"
