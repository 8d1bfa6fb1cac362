"""The local directory backend (the default vault storage).

An object ``a/b/c`` is the file ``<root>/a/b/c``. This module owns the
mapping of names to paths, durable atomic writes and the translation of
``OSError`` to the typed storage errors; it must not know what the objects
mean (packs, indexes, manifests) and must not retry anything.

Writes go to a temp file ``.tmp-<random>`` in the target's directory, are
fsynced, then renamed over the target (``put``) or hard-linked to it
(``put_if_absent``: ``link()`` fails if the target exists, so exactly one of
racing writers wins), and the directory is fsynced. Temp files start with a
dot, which no valid name does, so ``list`` never shows them; a crash can leave
one behind, and :meth:`LocalBackend.remove_abandoned_writes` clears them.
Directories are created as needed (and fsynced into their parent) and never
removed, so a concurrent write into them cannot race a cleanup.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import os
import secrets
import stat as stat_module
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from cbr.clock import wall_time
from cbr.storage.backend import (
    DEFAULT_CHUNK_SIZE,
    Backend,
    ObjectInfo,
    ObjectNotFound,
    StorageError,
    StorageFull,
    StoragePermissionDenied,
    StorageUnavailable,
    check_range,
    validate_name,
    validate_prefix,
)

TEMP_PREFIX = ".tmp-"
# Only the owner reads a vault: a pack of an unencrypted vault is the data (cbr.private).
FILE_MODE = 0o600
DIR_MODE = 0o700
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)

_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_DENIED = {errno.EACCES, errno.EPERM, errno.EROFS}
_TRANSIENT = {errno.EAGAIN, errno.EINTR, errno.EBUSY, errno.ETIMEDOUT, errno.ESTALE}


def map_os_error(exc: OSError, name: str | None, action: str) -> StorageError:
    """The typed storage error for an OSError raised while ``action`` on ``name``."""
    detail = f"{action} {name or ''}: {exc.strerror or exc}".replace("  ", " ")
    if exc.errno in _FULL:
        return StorageFull(f"storage full while {detail}", name)
    if exc.errno in _DENIED:
        return StoragePermissionDenied(f"permission denied while {detail}", name)
    if exc.errno in _TRANSIENT:
        return StorageUnavailable(f"storage busy while {detail}", name)
    if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.EISDIR) and name is not None:
        return ObjectNotFound(name)
    return StorageError(f"I/O error while {detail}", name)


def _utc(mtime_ns: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(mtime_ns / 1e9, dt.UTC)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class LocalBackend(Backend):
    """Objects as files under ``root``.

    ``create``: make ``root`` (and parents) if missing; otherwise a missing
    root is a :class:`StorageError`. ``fsync=False`` skips fsync (tests and
    benchmarks only: a crash may then lose or truncate recent objects).
    """

    def __init__(self, root: str | os.PathLike[str], *, create: bool = True, fsync: bool = True):
        self.root = Path(root).absolute()
        self._root_text = str(self.root)
        self.location = f"file://{self.root}"
        self._fsync = fsync
        if create:
            try:
                self.root.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
            except OSError as exc:
                raise map_os_error(exc, None, f"creating root {self.root}") from exc
        if not self.root.is_dir():
            raise StorageError(f"storage root {self.root} is not a directory")

    # -- paths ---------------------------------------------------------------------------

    def _path(self, name: str) -> Path:
        return self.root.joinpath(*validate_name(name).split("/"))

    def _ensure_dir(self, directory: Path) -> None:
        """Creates ``directory`` and missing parents below root, each fsynced into its parent."""
        if directory.is_dir():
            return
        missing: list[Path] = []
        current = directory
        while current != self.root and not current.is_dir():
            missing.append(current)
            current = current.parent
        for path in reversed(missing):
            try:
                path.mkdir(mode=DIR_MODE)
            except FileExistsError:
                if not path.is_dir():
                    raise
                continue  # a concurrent writer made it
            if self._fsync:
                _fsync_dir(path.parent)

    # -- writing -------------------------------------------------------------------------

    def _write_temp(self, name: str, target: Path,
                    chunks: Iterable[bytes | memoryview]) -> tuple[Path, int]:
        """Writes ``chunks`` to a fresh fsynced temp file beside ``target``."""
        self._ensure_dir(target.parent)
        temp = target.parent / f"{TEMP_PREFIX}{secrets.token_hex(8)}"
        fd = os.open(temp, _WRITE_FLAGS, FILE_MODE)
        size = 0
        try:
            for chunk in chunks:
                _write_all(fd, chunk)
                size += len(chunk)
            if self._fsync:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                temp.unlink()
            raise
        os.close(fd)
        return temp, size

    def _publish(
        self, name: str, chunks: Iterable[bytes | memoryview], commit: Callable[[Path, Path], bool]
    ) -> tuple[bool, int]:
        target = self._path(name)
        try:
            temp, size = self._write_temp(name, target, chunks)
            try:
                created = commit(temp, target)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    temp.unlink()  # already renamed away, or the loser of a link race
            if self._fsync:
                _fsync_dir(target.parent)
        except OSError as exc:
            raise map_os_error(exc, None, f"writing {name}") from exc
        return created, size

    @staticmethod
    def _replace(temp: Path, target: Path) -> bool:
        os.replace(temp, target)
        return True

    @staticmethod
    def _link(temp: Path, target: Path) -> bool:
        try:
            os.link(temp, target)
        except FileExistsError:
            return False
        return True

    def put(self, name: str, data: bytes) -> None:
        self._publish(name, (data,), self._replace)

    def put_if_absent(self, name: str, data: bytes) -> bool:
        """Atomic and race-free: ``link(temp, target)`` fails if the target exists."""
        created, _ = self._publish(name, (data,), self._link)
        return created

    def put_stream(self, name: str, chunks: Iterable[bytes | memoryview]) -> int:
        _, size = self._publish(name, chunks, self._replace)
        return size

    # -- reading -------------------------------------------------------------------------

    def _open(self, name: str) -> BinaryIO:
        path = self._path(name)
        try:
            fd = os.open(path, _READ_FLAGS)
        except OSError as exc:
            raise map_os_error(exc, name, "opening") from exc
        try:
            if not stat_module.S_ISREG(os.fstat(fd).st_mode):
                raise ObjectNotFound(name)  # a directory of other names is no object
        except BaseException:
            os.close(fd)
            raise
        return os.fdopen(fd, "rb", buffering=0)  # type: ignore[return-value]

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        check_range(offset, length)
        if length is not None:
            return self._get_range(name, offset, length)
        with self._open(name) as handle:
            try:
                if offset:
                    handle.seek(offset)
                if length is None:
                    return handle.read()
                chunks: list[bytes] = []
                remaining = length
                while remaining > 0:
                    chunk = handle.read(remaining)
                    if not chunk:
                        break
                    chunks.append(chunk)
                    remaining -= len(chunk)
                return b"".join(chunks)
            except OSError as exc:
                raise map_os_error(exc, name, "reading") from exc

    def _get_range(self, name: str, offset: int, length: int) -> bytes:
        """A blob's bytes in three syscalls: restores read tens of thousands of
        small ranges, where a file object, a seek and an fstat per read cost
        more than the read. A directory fails the read (EISDIR), so it still
        is no object."""
        path = os.path.join(self._root_text, validate_name(name))
        try:
            fd = os.open(path, _READ_FLAGS)
        except OSError as exc:
            raise map_os_error(exc, name, "opening") from exc
        try:
            data = os.pread(fd, length, offset)
            while 0 < len(data) < length:  # a short read is legal; go on until EOF
                more = os.pread(fd, length - len(data), offset + len(data))
                if not more:
                    break
                data += more
            return data
        except OSError as exc:
            if exc.errno == errno.EISDIR:
                raise ObjectNotFound(name) from exc
            raise map_os_error(exc, name, "reading") from exc
        finally:
            os.close(fd)

    def iter_get(
        self,
        name: str,
        offset: int = 0,
        length: int | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> Iterator[bytes]:
        check_range(offset, length)
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be > 0, got {chunk_size}")
        handle = self._open(name)
        return self._iter_file(handle, name, offset, length, chunk_size)

    @staticmethod
    def _iter_file(
        handle: BinaryIO, name: str, offset: int, length: int | None, chunk_size: int
    ) -> Iterator[bytes]:
        with handle:
            try:
                if offset:
                    handle.seek(offset)
                remaining = length
                while remaining is None or remaining > 0:
                    want = chunk_size if remaining is None else min(chunk_size, remaining)
                    chunk = handle.read(want)
                    if not chunk:
                        return
                    if remaining is not None:
                        remaining -= len(chunk)
                    yield chunk
            except OSError as exc:
                raise map_os_error(exc, name, "reading") from exc

    def stat(self, name: str) -> ObjectInfo:
        path = self._path(name)
        try:
            st = os.stat(path)
        except OSError as exc:
            raise map_os_error(exc, name, "stat of") from exc
        if not stat_module.S_ISREG(st.st_mode):
            raise ObjectNotFound(name)
        return ObjectInfo(name, st.st_size, _utc(st.st_mtime_ns))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Walks only the directory the prefix names (``data/ab`` walks ``data/``
        and keeps entries starting with ``ab``), with ``os.scandir``."""
        validate_prefix(prefix)
        directory, _, _ = prefix.rpartition("/")
        start = self.root.joinpath(*directory.split("/")) if directory else self.root
        base = f"{directory}/" if directory else ""
        return self._walk(start, base, prefix)

    def _walk(self, directory: Path, base: str, prefix: str) -> Iterator[ObjectInfo]:
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as exc:
            raise map_os_error(exc, None, f"listing {base or '/'}") from exc
        for entry in entries:
            if entry.name.startswith("."):
                continue  # temp files and anything else no valid name can be
            name = base + entry.name
            try:
                if entry.is_dir(follow_symlinks=False):
                    # Descend only where names can still match the prefix.
                    if name.startswith(prefix[: len(name)]) or prefix.startswith(name + "/"):
                        yield from self._walk(Path(entry.path), name + "/", prefix)
                elif entry.is_file(follow_symlinks=False) and name.startswith(prefix):
                    st = entry.stat(follow_symlinks=False)
                    yield ObjectInfo(name, st.st_size, _utc(st.st_mtime_ns))
            except FileNotFoundError:
                continue  # deleted while listing
            except OSError as exc:
                raise map_os_error(exc, None, f"listing {name}") from exc

    # -- deleting ------------------------------------------------------------------------

    def delete(self, name: str) -> None:
        path = self._path(name)
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError):
            return
        except IsADirectoryError:
            return  # a directory of other names, never an object
        except OSError as exc:
            raise map_os_error(exc, None, f"deleting {name}") from exc

    def remove_abandoned_writes(self, older_than_s: float, *,
                                dry_run: bool = False) -> tuple[int, int]:
        """Deletes temp files left by killed writers (older than
        ``older_than_s``, so a write in progress elsewhere is not broken)."""
        removed = freed = 0
        cutoff = wall_time() - older_than_s
        for dirpath, _dirs, files in os.walk(self.root):
            for filename in files:
                if not filename.startswith(TEMP_PREFIX):
                    continue
                path = Path(dirpath, filename)
                with contextlib.suppress(FileNotFoundError):
                    info = path.stat()
                    if info.st_mtime < cutoff:
                        if not dry_run:
                            path.unlink()
                        removed += 1
                        freed += info.st_size
        return removed, freed
