"""Disks into a vault and back (``docs/storage-format.md`` section 8).

Backup reads a disk in fixed blocks, skips holes (``SEEK_DATA``/``SEEK_HOLE``)
and all-zero blocks, and stores every other block as a chunk; the vault's
index deduplicates blocks it already has, so an incremental backup without
changed-block tracking still sends only new blocks (it reads and hashes the
disk, but uploads only what changed). With changed ranges from reflink
snapshots it reads only those ranges and takes every other block's entry
from the parent's disk map, after checking the index still has it.

The reading thread does only ``pread``; hashing, compression and storing run
on a small thread pool (BLAKE3 and zstd release the GIL), with a bounded
number of blocks in flight, so memory does not grow with the disk and both
cores work. Restore mirrors this: chunks load and verify in parallel, and
are written in place with ``pwrite``; blocks the backup does not hold stay
holes.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import os
import secrets
import stat
import struct
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from agent.dataplane import (
    BackupResult,
    Cancelled,
    DataplaneError,
    Progress,
    RestoreResult,
    SourceUnreadable,
    TargetTooSmall,
)
from cbr.repo import BlobType, DiskContent, Repository
from cbr.repo.disk_map import DiskMapBuilder, DiskMapReader, block_count, is_zero

BLKGETSIZE64 = 0x80081272
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02


def disk_size(path: Path) -> int:
    """Size in bytes of an image file or a block device."""
    try:
        st = os.stat(path)
        if stat.S_ISBLK(st.st_mode):
            with open(path, "rb") as fh:
                buf = fcntl.ioctl(fh.fileno(), BLKGETSIZE64, b"\0" * 8)
                return int(struct.unpack("Q", buf)[0])
        return st.st_size
    except OSError as exc:
        raise SourceUnreadable(f"cannot read disk {path}: {exc}") from exc


def data_ranges(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """``[start, end)`` ranges that may hold data (everything if the file
    cannot tell holes apart)."""
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                return  # only a hole up to the end
            yield offset, size
            return
        try:
            end = os.lseek(fd, start, os.SEEK_HOLE)
        except OSError:
            end = size
        end = min(end, size)
        if start >= size:
            return
        yield start, end
        offset = end


def _blocks_of(ranges: Iterator[tuple[int, int]] | Sequence[tuple[int, int]], block_size: int,
               total_blocks: int) -> Iterator[int]:
    """Block numbers overlapping the ranges, increasing, each once."""
    last = -1
    for start, end in ranges:
        first = max(start // block_size, last + 1)
        stop = min((end + block_size - 1) // block_size, total_blocks)
        yield from range(first, stop)
        if stop - 1 > last:
            last = stop - 1


class _Pipeline:
    """Ordered results of work done on a pool, with bounded work in flight."""

    def __init__(self, pool: ThreadPoolExecutor, depth: int) -> None:
        self._pool = pool
        self._depth = depth
        self._queue: collections.deque[tuple[Any, Future[Any]]] = collections.deque()

    def submit(self, tag: Any, fn: Callable[..., Any], *args: Any) -> Iterator[tuple[Any, Any]]:
        self._queue.append((tag, self._pool.submit(fn, *args)))
        while len(self._queue) > self._depth:
            tag0, fut = self._queue.popleft()
            yield tag0, fut.result()

    def drain(self) -> Iterator[tuple[Any, Any]]:
        while self._queue:
            tag0, fut = self._queue.popleft()
            yield tag0, fut.result()

    def cancel(self) -> None:
        for _tag, fut in self._queue:
            fut.cancel()
        self._queue.clear()


def backup_disk(repo: Repository, source: Path, *, size: int | None = None,
                parent: DiskContent | None = None,
                changed: Sequence[tuple[int, int]] | None = None,
                progress: Progress, workers: int = 2,
                read_log: list[tuple[int, int]] | None = None) -> BackupResult:
    """Backs one disk up; ``changed`` (with ``parent``) limits reading to those ranges."""
    bs = repo.config.block_size
    entries = repo.config.segment_entries
    size = disk_size(source) if size is None else size
    total = block_count(size, bs)
    builder = DiskMapBuilder(repo, size=size, block_size=bs, segment_entries=entries)
    stats = {"bytes_scanned": 0, "bytes_read": 0, "bytes_sent": 0, "bytes_new": 0,
             "blocks": 0, "blocks_read": 0}
    hasher = repo.hasher()
    if changed is not None and (parent is None or parent.block_size != bs
                                or parent.size != size):
        changed = None  # a resized disk or no parent: read it all

    def store(data: bytes) -> tuple[bytes | None, int, int]:
        if is_zero(data):
            return None, 0, 0
        cid = hasher.chunk_id(data)
        if repo.has_blob(cid):
            return cid, 0, 0
        cid, sent = repo.store_blob(BlobType.DATA, data, chunk_id=cid)
        return cid, len(data) if sent else 0, sent

    try:
        fd = os.open(source, os.O_RDONLY | getattr(os, "O_NOATIME", 0))
    except PermissionError:
        fd = os.open(source, os.O_RDONLY)
    except OSError as exc:
        raise SourceUnreadable(f"cannot open disk {source}: {exc}") from exc
    with contextlib.closing(_FD(fd)), ThreadPoolExecutor(max(1, workers),
                                                        "disk-hash") as pool:
        pipe = _Pipeline(pool, depth=4 * max(1, workers))

        def read(block: int) -> bytes:
            offset = block * bs
            length = min(bs, size - offset)
            data = os.pread(fd, length, offset)
            if len(data) != length:
                raise SourceUnreadable(f"{source}: short read at {offset} ({len(data)} of "
                                       f"{length} bytes); did the disk shrink?")
            stats["bytes_read"] += length
            stats["blocks_read"] += 1
            progress.add(read=length)
            if read_log is not None:
                if read_log and read_log[-1][1] == offset:
                    read_log[-1] = (read_log[-1][0], offset + length)
                else:
                    read_log.append((offset, offset + length))
            return data

        def take(results: Iterator[tuple[Any, Any]]) -> None:
            for block, (cid, new, sent) in results:
                if cid is not None:
                    builder.add(block, cid)
                    stats["blocks"] += 1
                stats["bytes_new"] += new
                stats["bytes_sent"] += sent
                progress.add(new=new, sent=sent)

        def scanned_to(offset: int) -> None:
            delta = min(offset, size) - stats["bytes_scanned"]
            if delta > 0:
                stats["bytes_scanned"] += delta
                progress.add(scanned=delta)

        try:
            if changed is None:
                for block in _blocks_of(data_ranges(fd, size), bs, total):
                    if progress.cancelled.is_set():
                        raise Cancelled("the backup was cancelled")
                    take(pipe.submit(block, store, read(block)))
                    scanned_to((block + 1) * bs)
            else:
                assert parent is not None
                _backup_changed(repo, parent, changed, builder, pipe, read, store, take,
                                scanned_to, progress, total, bs, entries)
            take(pipe.drain())
            scanned_to(size)
        except BaseException:
            pipe.cancel()
            raise
    content = builder.finish()
    repo.flush()
    return BackupResult(content, stats)


def _backup_changed(repo: Repository, parent: DiskContent, changed: Sequence[tuple[int, int]],
                    builder: DiskMapBuilder, pipe: _Pipeline, read: Callable[[int], bytes],
                    store: Callable[[bytes], Any], take: Callable[..., None],
                    scanned_to: Callable[[int], None], progress: Progress, total: int,
                    bs: int, entries: int) -> None:
    changed_blocks = collections.defaultdict(list)
    for block in _blocks_of(sorted(changed), bs, total):
        changed_blocks[block // entries].append(block)
    reader = DiskMapReader(repo, parent)
    segments = dict(parent.segments)
    for number in range((total + entries - 1) // entries):
        if progress.cancelled.is_set():
            raise Cancelled("the backup was cancelled")
        dirty = changed_blocks.get(number, [])
        if number in segments and not repo.has_blob(segments[number]):
            # The parent's map of this segment is gone from the index: nothing
            # of it can be trusted, so the whole segment is read again.
            dirty = list(range(number * entries, min(total, (number + 1) * entries)))
        old = list(reader.segment(number)) if number in segments and repo.has_blob(
            segments[number]) else []
        if not dirty and old and repo.has_blob(segments[number]) and all(
                repo.has_blob(cid) for _b, cid in old):
            take(pipe.drain())
            builder.reuse_segment(number, segments[number], len(old))
            scanned_to((number + 1) * entries * bs)
            continue
        dirty_set = set(dirty)
        plan: dict[int, bytes | None] = {}
        for block, cid in old:
            if block not in dirty_set:
                plan[block] = cid if repo.has_blob(cid) else None  # None: read again
        for block in dirty:
            plan[block] = None
        for block in sorted(plan):
            known = plan[block]
            if known is None:
                take(pipe.submit(block, store, read(block)))
            else:
                take(pipe.submit(block, _reuse, known))
        scanned_to((number + 1) * entries * bs)


def _reuse(cid: bytes) -> tuple[bytes, int, int]:
    return cid, 0, 0


class _FD:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def close(self) -> None:
        os.close(self.fd)


_libc: Any = None


def _punch_hole(fd: int, offset: int, length: int) -> bool:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        _libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64,
                                    ctypes.c_int64]
    return bool(_libc.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                                offset, length) == 0)


def _clear(fd: int, start: int, end: int, block_device: bool) -> None:
    """Makes ``[start, end)`` read as zeros: a hole in a file, zeros on a device."""
    if start >= end:
        return
    if not block_device and _punch_hole(fd, start, end - start):
        return
    zeros = bytes(min(end - start, 1 << 20))
    offset = start
    while offset < end:
        n = min(len(zeros), end - offset)
        os.pwrite(fd, zeros[:n], offset)
        offset += n


def restore_disk(repo: Repository, content: DiskContent, target: Path, *,
                 progress: Progress, workers: int = 2) -> RestoreResult:
    """Writes the disk back byte-identical; blocks the backup lacks read as zeros."""
    bs = content.block_size
    stats = {"bytes_written": 0, "blocks": 0}
    exists = target.exists() or target.is_symlink()
    block_device = exists and stat.S_ISBLK(os.stat(target).st_mode)
    if exists and not block_device and not stat.S_ISREG(os.lstat(target).st_mode):
        raise DataplaneError(f"restore target {target} is neither a regular file nor a "
                             "block device")
    temporary: Path | None = None
    if block_device:
        if disk_size(target) < content.size:
            raise TargetTooSmall(f"{target} has {disk_size(target)} bytes; the backup needs "
                                 f"{content.size}")
        fd = os.open(target, os.O_WRONLY)
    elif exists:
        fd = os.open(target, os.O_WRONLY | os.O_NOFOLLOW)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.parent / f".{target.name}.cbr-partial-{secrets.token_hex(4)}"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    ok = False
    try:
        if not block_device:
            os.ftruncate(fd, content.size)
        with ThreadPoolExecutor(max(1, workers), "disk-restore") as pool:
            pipe = _Pipeline(pool, depth=4 * max(1, workers))
            cursor = 0

            def write(results: Iterator[tuple[Any, Any]]) -> None:
                nonlocal cursor
                for block, data in results:
                    offset = block * bs
                    if exists:
                        _clear(fd, cursor, offset, block_device)
                    os.pwrite(fd, data, offset)
                    progress.add(scanned=offset + len(data) - cursor, read=len(data))
                    cursor = offset + len(data)
                    stats["bytes_written"] += len(data)
                    stats["blocks"] += 1

            try:
                for block, cid in DiskMapReader(repo, content):
                    if progress.cancelled.is_set():
                        raise Cancelled("the restore was cancelled")
                    write(pipe.submit(block, repo.load_blob, cid))
                write(pipe.drain())
            except BaseException:
                pipe.cancel()
                raise
            if exists:
                _clear(fd, cursor, content.size, block_device)
            progress.add(scanned=content.size - cursor)
        os.fsync(fd)
        ok = True
    finally:
        os.close(fd)
        if temporary is not None:
            if ok:
                os.replace(temporary, target)
            else:
                with contextlib.suppress(FileNotFoundError):
                    temporary.unlink()
    return RestoreResult(stats)
