"""Reading the files of a tree backup: their contents cut by FastCDC and
stored while the walk (``tree_backup``) goes on.

Apart from the walk because this is what runs on other threads: files are
read on a thread pool (the chunker, BLAKE3 and zstd are native and release
the GIL) with a bound on files in flight, small files in batches that span
directories. A file that changes while read is read again, and if it
changes again it is stored flagged ``changed`` with a warning, never
silently torn.
"""

from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from agent.dataplane import Cancelled, Progress
from agent.dataplane.listing import O_NOATIME
from agent.dataplane.tree import SMALL_FILE
from agent.dataplane.tree_entries import read_xattrs
from cbr.repo import BlobType, Repository
from cbr.repo.objects.chunker import cut_range, make_chunker, window_size

MAX_FILES_IN_FLIGHT = 8
READERS_PER_WORKER = 1
BATCH_FILES = 64


@dataclass
class FileResult:
    content: list[bytes] = field(default_factory=list)
    extents: list[tuple[int, int]] = field(default_factory=list)
    changed: bool = False
    read: int = 0
    new: int = 0
    sent: int = 0
    warning: str = ""
    vanished: bool = False
    final_stat: os.stat_result | None = None
    xattrs: dict[str, bytes] | None = None  # read through the open file


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_size, a.st_mtime_ns, a.st_ctime_ns, a.st_ino) == (
        b.st_size, b.st_mtime_ns, b.st_ctime_ns, b.st_ino)


class FileReader:
    """The readers of one tree backup and what they share: the pool, the
    bound on files in flight, each reader thread's chunker, the open batch
    of small files."""

    def __init__(self, repo: Repository, progress: Progress, workers: int) -> None:
        self.repo = repo
        self.progress = progress
        self.hasher = repo.hasher()
        self.params = repo.config.chunker
        # Reading many small files waits on the disk more than on the CPU:
        # more readers than cores keep the device busy.
        self.pool = ThreadPoolExecutor(max(1, workers) * READERS_PER_WORKER, "tree-read")
        self.slots = threading.BoundedSemaphore(MAX_FILES_IN_FLIGHT)
        self._local = threading.local()
        self.batch: _Batch | None = None

    def _store(self, data: bytes | memoryview) -> tuple[bytes, int, int]:
        cid, sent = self.repo.store_blob(BlobType.DATA, data, chunk_id=self.hasher.chunk_id(data))
        return cid, (len(data) if sent else 0), sent

    def _read_content(self, fh: BinaryIO, fd: int, size: int, sparse: bool,
                      out: FileResult) -> None:
        ranges: list[tuple[int, int]]
        if sparse:
            from agent.dataplane.disk import data_ranges

            ranges = [(a, b - a) for a, b in data_ranges(fd, size)]
            out.extents = ranges
        else:
            ranges = [(0, size)]
        for start, length in ranges:
            if self.progress.cancelled.is_set():
                raise Cancelled("the backup was cancelled")
            if length <= SMALL_FILE:
                fh.seek(start)
                self._take(out, fh.read(length))
                continue
            chunker, window = self._chunker()
            for piece in cut_range(chunker, fd, start, length, window):
                self._take(out, piece)
                if self.progress.cancelled.is_set():  # a large file stops midway
                    raise Cancelled("the backup was cancelled")

    def _chunker(self) -> tuple[Any, bytearray]:
        """This reader thread's chunker and window, made once: a window per
        thread, not per file, keeps memory flat however many large files
        pass through."""
        mine: tuple[Any, bytearray] | None = getattr(self._local, "chunker", None)
        if mine is None:
            mine = (make_chunker(self.params, self.hasher),
                    bytearray(window_size(self.params)))
            self._local.chunker = mine
        return mine

    def _take(self, out: FileResult, data: bytes | memoryview) -> None:
        cid, new, sent = self._store(data)
        out.content.append(cid)
        out.read += len(data)
        out.new += new
        out.sent += sent
        self.progress.add(read=len(data), new=new, sent=sent)

    def read(self, path: bytes, st: os.stat_result) -> Future[FileResult]:
        """Reads a file on the pool, once fewer than ``MAX_FILES_IN_FLIGHT`` are."""
        self.slots.acquire()
        return self.pool.submit(self._read_file, path, st)

    def _read_file(self, path: bytes, st: os.stat_result) -> FileResult:
        try:
            return self._read_any(path, st)
        finally:
            self.slots.release()

    def _read_batch(self, items: list[tuple[bytes, os.stat_result]]) -> list[FileResult]:
        """Many small files in one job: a thread hand-off per file would cost
        more than the file's own few syscalls."""
        fds: list[int | None] = []
        try:
            # Open them all and ask for their pages first: the disk then
            # works on the whole batch while the first files are hashed.
            for path, st in items:
                try:
                    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | O_NOATIME)
                except OSError:
                    fds.append(None)
                    continue
                fds.append(fd)
                with contextlib.suppress(OSError):
                    os.posix_fadvise(fd, 0, st.st_size, os.POSIX_FADV_WILLNEED)
            out = []
            for i, (path, st) in enumerate(items):
                opened = fds[i]
                fds[i] = None
                out.append((self._read_small(opened, st) if opened is not None else None)
                           or self._read_any(path, st))
            return out
        finally:
            for left in fds:
                if left is not None:
                    os.close(left)
            self.slots.release()

    def _read_small(self, fd: int, st: os.stat_result) -> FileResult | None:
        """A small dense file, already open, in three syscalls (it closes
        ``fd``); None when anything looks off (it grew, it moved, it is
        sparse): then the careful path reads it."""
        try:
            data = os.read(fd, st.st_size + 1)
            after = os.fstat(fd)
            xattrs = read_xattrs(fd)
        except OSError:
            return None
        finally:
            os.close(fd)
        if len(data) != st.st_size or not _same(st, after) or (
                after.st_blocks * 512 < after.st_size):
            return None
        out = FileResult(final_stat=after, xattrs=xattrs)
        if data:
            self._take(out, data)
        return out

    def _read_any(self, path: bytes, st: os.stat_result) -> FileResult:
        spent = FileResult()  # what a read that had to be repeated read, stored and sent
        try:
            for attempt in range(2):
                out = FileResult(read=spent.read, new=spent.new, sent=spent.sent)
                try:
                    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | O_NOATIME)
                except PermissionError:
                    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
                with os.fdopen(fd, "rb", buffering=0) as fh:
                    before = os.fstat(fd)
                    out.xattrs = read_xattrs(fd)
                    sparse = before.st_blocks * 512 < before.st_size and before.st_size > 0
                    self._read_content(fh, fd, before.st_size, sparse, out)  # type: ignore[arg-type]
                    after = os.fstat(fd)
                out.final_stat = after
                if _same(before, after):
                    return out
                if attempt == 0:
                    # Read again; what the first read uploaded stays uploaded
                    # and counted (the vault's usage is what storage holds).
                    spent = out
                    continue
                out.changed = True
                out.warning = (f"changed while read: {os.fsdecode(path)} (stored as read, "
                               "flagged; it may be inconsistent)")
                return out
            return out
        except FileNotFoundError:
            return FileResult(vanished=True, warning=f"vanished: {os.fsdecode(path)}",
                              read=spent.read, new=spent.new, sent=spent.sent)
        except OSError as exc:
            return FileResult(vanished=True,
                              warning=f"unreadable: {os.fsdecode(path)}: {exc.strerror}",
                              read=spent.read, new=spent.new, sent=spent.sent)

    def add_small(self, path: bytes, st: os.stat_result) -> _Item:
        """Puts a small file into the open batch, which spans directories:
        a batch per directory of a dozen files cost a hand-off between
        threads per dozen files, and let the disk work on only that many
        at once. The batch goes to the readers when full, or as soon as
        anyone waits for one of its files (:meth:`_Item.result`)."""
        if self.batch is None:
            self.batch = _Batch()
        batch = self.batch
        batch.items.append((path, st))
        item = _Item(self, batch, len(batch.items) - 1)
        if len(batch.items) >= BATCH_FILES:
            self.submit_batch()
        return item

    def submit_batch(self) -> None:
        batch, self.batch = self.batch, None
        if batch is None or not batch.items:
            return
        self.slots.acquire()
        batch.job = self.pool.submit(self._read_batch, batch.items)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class _Batch:
    """Small files, possibly of several directories, read in one job."""

    def __init__(self) -> None:
        self.items: list[tuple[bytes, os.stat_result]] = []
        self.job: Future[list[FileResult]] | None = None


class _Item:
    """One file's result inside a batch job, looking like a Future of it."""

    def __init__(self, owner: FileReader, batch: _Batch, index: int) -> None:
        self._owner = owner
        self._batch = batch
        self._index = index

    def result(self) -> FileResult:
        if self._batch.job is None:  # still open: only the walk adds to it and waits
            self._owner.submit_batch()
        assert self._batch.job is not None
        return self._batch.job.result()[self._index]
