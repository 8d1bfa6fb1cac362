"""Disks out of a vault: ``restore_disk`` (``docs/storage-format.md``
section 8). Chunks are loaded and verified in parallel (bounded) and written
in disk order with ``pwrite``; bytes that failed verification are never
written, and a restore to a new file writes a temporary name beside it that
becomes the target only on success."""

from __future__ import annotations

import collections
import contextlib
import ctypes
import errno
import fcntl
import os
import secrets
import stat
import struct
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from agent.dataplane import (
    Cancelled,
    DataplaneError,
    Progress,
    RestoreResult,
    TargetTooSmall,
    UnsafeTarget,
)
from agent.dataplane.blocks import BLKZEROOUT, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, disk_size
from cbr.repo import DiskContent, Repository
from cbr.repo.objects.disk_map import DiskMapReader

_libc: Any = None


def _punch_hole(fd: int, offset: int, length: int) -> bool:
    """Deallocates a range of a regular file (it reads as zeros); False where the
    filesystem cannot."""
    global _libc
    if _libc is None:
        # The process's own C library (find_library would run ldconfig).
        lib = ctypes.CDLL(None, use_errno=True)
        lib.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
        lib.fallocate.restype = ctypes.c_int
        _libc = lib
    return bool(_libc.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                                offset, length) == 0)


_ZEROS = bytes(1 << 20)


def _write_zeros(fd: int, start: int, end: int) -> None:
    view = memoryview(_ZEROS)
    while start < end:
        start += os.pwrite(fd, view[:min(len(view), end - start)], start)


def _zero_device(fd: int, start: int, end: int) -> None:
    """Zeros a device range, offloaded to the device (BLKZEROOUT) where it can."""
    aligned_end = end - (end - start) % 512
    if start % 512 == 0 and aligned_end > start:
        try:
            fcntl.ioctl(fd, BLKZEROOUT, struct.pack("QQ", start, aligned_end - start))
            start = aligned_end
        except OSError:
            pass
    _write_zeros(fd, start, end)


class _Target:
    """Where a restore writes, and how it makes a range read as zeros."""

    def __init__(self, target: Path, size: int) -> None:
        self.path = target
        self.temporary: Path | None = None
        self.device = False
        self.existing = False
        try:
            st = os.lstat(target)
        except FileNotFoundError:
            st = None
        if st is not None and stat.S_ISLNK(st.st_mode):
            followed = os.stat(target)  # /dev/disk/by-id/... names are links
            if not stat.S_ISBLK(followed.st_mode):
                raise UnsafeTarget(f"restore target {target} is a symbolic link; name the "
                                   "file itself")
            st = followed
        if st is None:
            target.parent.mkdir(parents=True, exist_ok=True)
            self.temporary = target.parent / f".{target.name}.cbr-partial-{secrets.token_hex(4)}"
            self.fd = os.open(self.temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                              | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        elif stat.S_ISBLK(st.st_mode):
            self.device = True
            have = disk_size(target)
            if have < size:
                raise TargetTooSmall(f"{target} has {have} bytes; the backup needs {size}")
            try:
                # O_EXCL on a block device: refused while it is mounted or claimed.
                self.fd = os.open(target, os.O_WRONLY | os.O_EXCL | os.O_CLOEXEC)
            except OSError as exc:
                if exc.errno == errno.EBUSY:
                    raise UnsafeTarget(f"{target} is in use (mounted?); a restore would "
                                       "corrupt it") from exc
                raise DataplaneError(f"cannot open restore target {target}: {exc}") from exc
        elif stat.S_ISREG(st.st_mode):
            self.existing = True
            self.fd = os.open(target, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        else:
            raise UnsafeTarget(f"restore target {target} is neither a regular file nor a "
                               "block device")
        self.can_punch = not self.device

    def prepare(self, size: int) -> None:
        if not self.device:
            os.ftruncate(self.fd, size)

    def clear(self, start: int, end: int) -> None:
        """Makes ``[start, end)`` read as zeros. A new file is already sparse."""
        if start >= end or self.temporary is not None:
            return
        if self.device:
            _zero_device(self.fd, start, end)
            return
        if self.can_punch and _punch_hole(self.fd, start, end - start):
            return
        self.can_punch = False
        _write_zeros(self.fd, start, end)

    def finish(self, ok: bool) -> None:
        try:
            if ok:
                os.fsync(self.fd)
        finally:
            os.close(self.fd)
        if self.temporary is None:
            return
        if ok:
            os.replace(self.temporary, self.path)
            with contextlib.suppress(OSError):
                dfd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
        else:
            with contextlib.suppress(FileNotFoundError):
                self.temporary.unlink()


def restore_disk(repo: Repository, content: DiskContent, target: Path, *,
                 progress: Progress, workers: int = 2,
                 key_id: bytes | None = None) -> RestoreResult:
    """Writes a disk back byte-identical to what was backed up.

    A missing ``target`` becomes a new sparse file (blocks the backup does
    not hold stay holes), written under a temporary name and renamed only
    once complete. An existing regular file is restored in place: truncated
    or extended to the disk's size, with holes punched (or zeros written)
    where the backup holds no block. A block device must be at least the
    disk's size and not in use; absent blocks are zeroed on it.
    Raises ``IntegrityError``/``ChunkNotFound`` naming the chunk when a
    block cannot be read back; no byte of it is written.
    """
    bs = content.block_size
    out = _Target(target, content.size)
    stats = {"bytes_written": 0, "blocks": 0, "bytes_scanned": 0}
    ok = False
    try:
        out.prepare(content.size)
        cursor = 0
        depth = 4 * max(1, workers)
        queue: collections.deque[tuple[int, Future[bytes]]] = collections.deque()

        def write_one() -> None:
            nonlocal cursor
            block, future = queue.popleft()
            data = future.result()
            offset = block * bs
            out.clear(cursor, offset)
            view = memoryview(data)
            written = 0
            while written < len(data):
                written += os.pwrite(out.fd, view[written:], offset + written)
            progress.add(scanned=offset + len(data) - cursor, read=len(data))
            cursor = offset + len(data)
            stats["bytes_written"] += len(data)
            stats["blocks"] += 1

        with ThreadPoolExecutor(max(1, workers), "disk-restore") as pool:
            try:
                for block, cid in DiskMapReader(repo, content, key_id=key_id):
                    if progress.cancelled.is_set():
                        raise Cancelled("the restore was cancelled")
                    queue.append((block, pool.submit(repo.load_blob, cid, key_id=key_id)))
                    while len(queue) > depth:
                        write_one()
                while queue:
                    write_one()
            except BaseException:
                for _block, future in queue:
                    future.cancel()
                queue.clear()
                raise
        out.clear(cursor, content.size)
        progress.add(scanned=content.size - cursor)
        stats["bytes_scanned"] = content.size
        ok = True
    finally:
        out.finish(ok)
    return RestoreResult(stats)
