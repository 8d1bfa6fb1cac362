"""Restoring a directory tree, or one file or directory of it, from a vault.

A restore never writes outside its target: every entry is created relative
to an open directory descriptor with ``O_NOFOLLOW``, names are validated,
and symlinks are data (restored verbatim, never followed). File contents go
to a temporary name and are renamed into place only when complete and
verified.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import os
import secrets
import stat
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from agent.dataplane import Cancelled, Progress, RestoreResult, UnsafeTarget
from agent.dataplane.tree import SMALL_FILE, walk_to
from agent.dataplane.watches import WATCHES
from cbr.repo import Repository, TreeContent
from cbr.repo.errors import UnsafeName
from cbr.repo.objects.tree import (
    EntryType,
    TreeEntry,
    decode_chunk_list,
    decode_tree,
    root_entry,
    validate_link_path,
    validate_name,
)

RESTORE_BATCH = 32
MAX_RESTORE_JOBS = 16


class _TreeRestore:
    def __init__(self, repo: Repository, progress: Progress, workers: int) -> None:
        self.repo = repo
        self.progress = progress
        # Restoring is mostly small writes and metadata syscalls, which release
        # the GIL: more threads than cores keep the disk busy.
        self.pool = ThreadPoolExecutor(max(1, workers), "tree-restore")
        self.jobs: collections.deque[Future[None]] = collections.deque()
        self.dir_meta: list[tuple[tuple[bytes, ...], TreeEntry]] = []
        self._lock = threading.Lock()
        self.root_owner = os.geteuid() == 0
        # Who owns a file this process creates, and which mode bits creation
        # drops (read once: setting the umask is the only way to read it).
        self.owner = (os.geteuid(), os.getegid())
        self.umask = os.umask(0o022)
        os.umask(self.umask)
        self.stats = {"files": 0, "dirs": 0, "bytes_written": 0}
        self.warnings: list[str] = []
        # Files restored so far, for hardlinks: backup path -> path in the target.
        self.restored: dict[tuple[bytes, ...], tuple[bytes, ...]] = {}
        self.root_fd = -1
        self.base: tuple[bytes, ...] = ()
        # What is restored: the backup path of the subtree or file (empty: all).
        self.top: tuple[bytes, ...] = ()
        self.content: TreeContent | None = None
        self.key_id: bytes | None = None  # the backup's namespace

    def _replace_slot(self, dir_fd: int, name: bytes) -> None:
        """Removes what sits at ``name`` unless it is a real directory; never
        follows a symlink."""
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            return
        os.unlink(name, dir_fd=dir_fd)

    def _meta(self, dir_fd: int, name: bytes, e: TreeEntry, *, is_link: bool = False) -> None:
        follow = False
        if self.root_owner:
            with contextlib.suppress(OSError):
                os.chown(name, e.uid, e.gid, dir_fd=dir_fd, follow_symlinks=follow)
        if not is_link:
            try:
                os.chmod(name, e.mode, dir_fd=dir_fd, follow_symlinks=follow)
            except NotImplementedError:
                pass
            except OSError as exc:
                self._warn(f"mode of {os.fsdecode(name)}: {exc.strerror}")
        for key, value in e.xattrs.items():
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd) \
                    if not is_link else None
                if fd is not None:
                    try:
                        os.setxattr(fd, key, value)
                    finally:
                        os.close(fd)
            except OSError as exc:
                self._warn(f"xattr {key} of {os.fsdecode(name)}: {exc.strerror}")
        with contextlib.suppress(OSError, NotImplementedError):
            os.utime(name, ns=(e.atime, e.mtime), dir_fd=dir_fd, follow_symlinks=False)

    def root_metadata(self, doc: dict[str, Any]) -> None:
        """Gives the target directory the tree root's own owner, mode,
        xattrs and times, through the descriptor the restore holds (never
        through its path), once everything inside is written."""
        try:
            e = root_entry(None, doc)
        except Exception as exc:
            self._warn(f"the root directory's metadata is damaged: {exc}")
            return
        fd = self.root_fd
        if self.root_owner:
            with contextlib.suppress(OSError):
                os.fchown(fd, e.uid, e.gid)
        try:
            os.fchmod(fd, e.mode)
        except OSError as exc:
            self._warn(f"mode of the restore target: {exc.strerror}")
        for key, value in e.xattrs.items():
            try:
                os.setxattr(fd, key, value)
            except OSError as exc:
                self._warn(f"xattr {key} of the restore target: {exc.strerror}")
        with contextlib.suppress(OSError):
            os.utime(fd, ns=(e.atime, e.mtime))

    def _warn(self, text: str) -> None:
        with self._lock:
            self.warnings.append(text)

    def _submit(self, dir_fd: int, batch: list[TreeEntry], fresh: bool) -> None:
        """Restores a batch of files of one directory on the pool, through its
        own descriptor of that directory."""
        fd = os.dup(dir_fd)

        def job() -> None:
            try:
                for e in batch:
                    if not self.file(fd, e, fresh):
                        self._meta(fd, e.name, e)
            finally:
                os.close(fd)

        if all(e.size <= SMALL_FILE for e in batch):
            # Small files are written right here: a thread hand-off per batch
            # turns every one of their many short syscalls into a GIL fight.
            job()
            return
        self.jobs.append(self.pool.submit(job))
        while len(self.jobs) > MAX_RESTORE_JOBS:
            self.jobs.popleft().result()

    def barrier(self) -> None:
        """Waits for every file job (before a hardlink, and at the end)."""
        while self.jobs:
            self.jobs.popleft().result()

    def finish_dirs(self) -> None:
        """Directory modes and times, deepest first, once everything inside is
        written (writing into a directory changes its mtime)."""
        self.barrier()
        for parts, e in reversed(self.dir_meta):
            parent = self._open_parent(parts)
            try:
                self._meta(parent, parts[-1], e)
            finally:
                os.close(parent)

    def _content_ids(self, e: TreeEntry) -> list[bytes]:
        ids = list(e.content)
        for list_id in e.content_list:
            ids.extend(decode_chunk_list(self.repo.load_blob(list_id, key_id=self.key_id)))
        return ids

    def file(self, dir_fd: int, e: TreeEntry, fresh: bool = False) -> bool:
        """Writes one file; True when its metadata is set too.

        In a directory this restore created (``fresh``, mode 0700 until the
        end, so nobody else can reach inside) a small file goes straight to
        its name, since its one chunk is verified before the file is opened.
        It is created with its mode, owner and times set through the open
        descriptor, skipping what creation already got right: tens of
        thousands of small files make each saved syscall count. Otherwise the
        content goes to a temporary name and is renamed into place once
        complete."""
        if fresh and len(e.content) <= 1 and not e.content_list and not e.extents:
            data = self.repo.load_blob(e.content[0], key_id=self.key_id) if e.content else b""
            direct = not e.xattrs and e.mode & ~0o777 == 0 and e.mode & self.umask == 0
            try:
                fd = os.open(e.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                             e.mode if direct else 0o600, dir_fd=dir_fd)
            except FileExistsError:
                pass  # someone else put something here: take the careful path
            else:
                try:
                    if data:
                        os.write(fd, data)
                    if len(data) != e.size:
                        os.ftruncate(fd, e.size)
                    if direct:
                        if self.root_owner and (e.uid, e.gid) != self.owner:
                            with contextlib.suppress(OSError):
                                os.fchown(fd, e.uid, e.gid)
                        with contextlib.suppress(OSError):
                            os.utime(fd, ns=(e.atime, e.mtime))
                finally:
                    os.close(fd)
                with self._lock:
                    self.stats["bytes_written"] += len(data)
                    self.stats["files"] += 1
                self.progress.add(scanned=e.size, read=len(data))
                return direct
        tmp = b".cbr-restore-" + secrets.token_hex(6).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600,
                     dir_fd=dir_fd)
        ok = False
        try:
            ids = self._content_ids(e)
            ranges = e.extents or [(0, e.size)]
            offset_iter = iter(ranges)
            current = next(offset_iter, (0, 0))
            pos, left = current
            def write(data: bytes) -> None:
                nonlocal pos, left, current
                view = memoryview(data)
                while view:
                    while left == 0:
                        current = next(offset_iter)
                        pos, left = current
                    n = min(left, len(view))
                    os.pwrite(fd, view[:n], pos)
                    pos += n
                    left -= n
                    view = view[n:]

            for cid in ids:
                write(self.repo.load_blob(cid, key_id=self.key_id))
            os.ftruncate(fd, e.size)
            written = sum(length for _, length in ranges) if e.extents else e.size
            with self._lock:
                self.stats["bytes_written"] += written
                self.stats["files"] += 1
            self.progress.add(scanned=e.size, read=written)
            ok = True
        finally:
            os.close(fd)
            if not ok:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=dir_fd)
        self._replace_slot(dir_fd, e.name)
        os.rename(tmp, e.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        if e.changed:
            self._warn(f"{os.fsdecode(e.name)} changed while it was backed up; "
                       "its content may be inconsistent")
        return False

    def directory(self, dir_fd: int, entries: list[TreeEntry], rel: tuple[bytes, ...],
                  fresh: bool = False) -> None:
        seen: set[bytes] = set()
        for e in entries:
            validate_name(e.name)
            if e.name in seen:
                raise UnsafeName(f"duplicate entry name {e.name!r}")
            seen.add(e.name)
        # The order the backup met names in: a directory's files first, then its
        # subdirectories (so a hardlink's first name is always restored before
        # it), and symlinks last, so nothing is ever created through one.
        later: list[TreeEntry] = []
        subdirs: list[TreeEntry] = []
        batch: list[TreeEntry] = []
        for e in entries:
            if self.progress.cancelled.is_set():
                raise Cancelled("the restore was cancelled")
            if e.type == EntryType.SYMLINK:
                later.append(e)
            elif e.type == EntryType.DIR:
                subdirs.append(e)
            elif e.type == EntryType.FILE:
                batch.append(e)
                if len(batch) >= RESTORE_BATCH or e.size > SMALL_FILE:
                    self._submit(dir_fd, batch, fresh)
                    batch = []
                self.restored[(*rel, e.name)] = (*rel[len(self.base):], e.name)
            elif e.type == EntryType.HARDLINK:
                if batch:
                    self._submit(dir_fd, batch, fresh)
                    batch = []
                self._hardlink(dir_fd, e, rel)
            elif e.type in (EntryType.FIFO, EntryType.CHARDEV, EntryType.BLOCKDEV):
                self._special(dir_fd, e)
            else:
                self.warnings.append(f"socket {os.fsdecode(e.name)} not restored")
        if batch:
            self._submit(dir_fd, batch, fresh)
        for e in subdirs:
            self._dir(dir_fd, e, rel)
        for e in later:
            self._replace_slot(dir_fd, e.name)
            if e.target is None:
                continue
            os.symlink(e.target, e.name, dir_fd=dir_fd)
            self._meta(dir_fd, e.name, e, is_link=True)

    def _dir(self, dir_fd: int, e: TreeEntry, rel: tuple[bytes, ...]) -> None:
        self._replace_slot(dir_fd, e.name)
        fresh = True
        try:
            os.mkdir(e.name, 0o700, dir_fd=dir_fd)
        except FileExistsError:
            fresh = False
        fd = os.open(e.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
        try:
            fresh = fresh and _plain_group(fd)
            self.stats["dirs"] += 1
            children = (decode_tree(self.repo.load_blob(e.subtree, key_id=self.key_id))
                        if e.subtree else [])
            self.dir_meta.append(((*rel[len(self.base):], e.name), e))
            self.directory(fd, children, (*rel, e.name), fresh)
        finally:
            os.close(fd)

    def _open_parent(self, parts: tuple[bytes, ...]) -> int:
        """The directory holding ``parts`` inside the target, walked name by name
        without following any symlink."""
        fd = os.dup(self.root_fd)
        try:
            for name in parts[:-1]:
                nxt = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                os.close(fd)
                fd = nxt
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _hardlink(self, dir_fd: int, e: TreeEntry, rel: tuple[bytes, ...]) -> None:
        parts = tuple(validate_link_path(e.link or []))
        first = self.restored.get(parts)
        if first is None and self.content is not None and parts[:len(self.top)] != self.top:
            # A partial restore: the first name lies outside what is restored,
            # so this name gets its own copy of the content.
            _, source = walk_to(self.repo, self.content, parts, self.key_id)
            if source is None or source.type != EntryType.FILE:
                raise UnsafeTarget(f"hardlink {os.fsdecode(e.name)} names no file")
            copy = TreeEntry(**{**{f: getattr(source, f) for f in source.__slots__},
                                "name": e.name})
            self.file(dir_fd, copy)
            self._meta(dir_fd, e.name, copy)
            return
        if first is None:
            raise UnsafeTarget(f"hardlink {os.fsdecode(e.name)} names "
                               f"{'/'.join(os.fsdecode(p) for p in parts)}, which this restore "
                               "has not created")
        self.barrier()  # the first name may still be being written
        self._replace_slot(dir_fd, e.name)
        src_fd = self._open_parent(first)
        try:
            os.link(first[-1], e.name, src_dir_fd=src_fd, dst_dir_fd=dir_fd,
                    follow_symlinks=False)
        finally:
            os.close(src_fd)
        with self._lock:
            self.stats["files"] += 1

    def _special(self, dir_fd: int, e: TreeEntry) -> None:
        self._replace_slot(dir_fd, e.name)
        kind = {EntryType.FIFO: stat.S_IFIFO, EntryType.CHARDEV: stat.S_IFCHR,
                EntryType.BLOCKDEV: stat.S_IFBLK}[e.type]
        try:
            os.mknod(e.name, kind | 0o600, e.rdev, dir_fd=dir_fd)
        except OSError as exc:
            self.warnings.append(f"{e.type} {os.fsdecode(e.name)} not restored: {exc.strerror}")
            return
        self._meta(dir_fd, e.name, e)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _plain_group(dir_fd: int) -> bool:
    """Whether files made in this directory get this process's group: not in
    a set-group-ID directory (which hands down its own group and flag)."""
    return not os.fstat(dir_fd).st_mode & stat.S_ISGID


def restore_tree(repo: Repository, content: TreeContent, target: Path, *,
                 path: Sequence[bytes] = (), progress: Progress,
                 workers: int = 2, key_id: bytes | None = None) -> RestoreResult:
    """Restores the whole tree, or the file or directory at ``path``, into
    ``target``; ``key_id`` is the backup's namespace (a replica's is its
    source's)."""
    try:
        entries, single = walk_to(repo, content, path, key_id)
    except UnsafeName as exc:
        raise UnsafeTarget(f"the backup holds an unsafe entry: {exc}") from exc
    os.makedirs(target, exist_ok=True)
    with os.scandir(target) as listing:
        empty = next(listing, None) is None
    try:
        root_fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise UnsafeTarget(f"restore target {target} is not a directory: {exc}") from exc
    # A change journal leaves this process's own writes out: a watched tree
    # restored into is walked in full at its next backup, and watches on the
    # same file system pause meanwhile (module agent.dataplane.changes).
    with WATCHES.restoring(target):
        return _restore_into(repo, content, target, root_fd, path, entries, single, empty,
                             progress=progress, workers=workers, key_id=key_id)


def _restore_into(repo: Repository, content: TreeContent, target: Path, root_fd: int,
                  path: Sequence[bytes], entries: list[TreeEntry], single: TreeEntry | None,
                  empty: bool, *, progress: Progress, workers: int,
                  key_id: bytes | None) -> RestoreResult:
    job = _TreeRestore(repo, progress, workers)
    job.key_id = key_id
    job.root_fd = root_fd
    job.base = tuple(path[:-1])
    job.top = tuple(path)
    job.content = content
    try:
        if single is not None or path:
            parent_entries, _ = walk_to(repo, content, path[:-1], key_id)
            entry = next(e for e in parent_entries if e.name == path[-1])
            job.directory(root_fd, [entry], tuple(path[:-1]))
        else:
            job.directory(root_fd, entries, (), fresh=empty and _plain_group(root_fd))
        job.finish_dirs()
        if single is None and not path and content.root_meta is not None:
            job.root_metadata(content.root_meta)
    except UnsafeName as exc:
        raise UnsafeTarget(f"the backup holds an unsafe entry: {exc}") from exc
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafeTarget(f"refusing to follow a link in the target: {exc}") from exc
        raise
    finally:
        job.close()
        os.close(root_fd)
    return RestoreResult(job.stats, job.warnings)
