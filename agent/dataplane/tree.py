"""Directory trees into a vault and back (``docs/storage-format.md`` section 9).

Backup walks the tree depth first, one directory's entries in memory per
level, and stores one tree blob per directory once its files and
subdirectories are done. File contents are cut by FastCDC and read on a
thread pool (the chunker, BLAKE3 and zstd are native and release the GIL)
while the walk goes on, with a bound on files in flight. A file whose size,
mtime, ctime and inode match the parent backup is not read: its chunk list
is reused, once the index confirms every chunk is still there. Names whose
stat matches the parent's keep the parent's stored entry document as is
(at most with a new access time), and a directory where every name did so
keeps the parent's tree id: an incremental decodes and encodes only what
changed. A file that
changes while read is read again, and if it changes again it is stored
flagged ``changed`` with a warning, never silently torn.

Restore never writes outside its target: every entry is created relative to
an open directory descriptor with ``O_NOFOLLOW``, names are validated, and
symlinks are data (restored verbatim, never followed). File contents go to a
temporary name and are renamed into place only when complete and verified.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import grp
import os
import pwd
import secrets
import stat
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from agent.dataplane import (
    BackupResult,
    Cancelled,
    DataplaneError,
    Progress,
    RestoreResult,
    SourceUnreadable,
    UnsafeTarget,
)
from agent.dataplane.changes import WATCHES, ChangedDirs
from agent.dataplane.listing import O_NOATIME, list_dir
from cbr import errors
from cbr.repo import BlobType, Repository, TreeContent
from cbr.repo.errors import UnsafeName
from cbr.repo.objects.chunker import cut_range, make_chunker, window_size
from cbr.repo.objects.tree import (
    EntryType,
    TreeEntry,
    decode_chunk_list,
    decode_tree,
    doc_name,
    encode_chunk_list,
    encode_tree,
    encode_tree_docs,
    root_entry,
    root_meta,
    split_content,
    tree_docs,
    validate_link_path,
    validate_name,
)

SMALL_FILE = 256 << 10  # below the chunker's minimum: one chunk, no CDC
MAX_FILES_IN_FLIGHT = 8
READERS_PER_WORKER = 1
BATCH_FILES = 64
MAX_PENDING_DIRS = 256
RESTORE_BATCH = 32
MAX_RESTORE_JOBS = 16
READ_SIZE = 4 << 20


class PathNotInBackup(DataplaneError):
    """The path named is not in the backup."""

    code = errors.PathNotInBackup.code


@dataclass
class _FileResult:
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


class _Names:
    """uid/gid to names, looked up once each (NSS lookups are slow)."""

    def __init__(self) -> None:
        self._users: dict[int, str] = {}
        self._groups: dict[int, str] = {}

    def user(self, uid: int) -> str:
        if uid not in self._users:
            try:
                self._users[uid] = pwd.getpwuid(uid).pw_name
            except KeyError:
                self._users[uid] = ""
        return self._users[uid]

    def group(self, gid: int) -> str:
        if gid not in self._groups:
            try:
                self._groups[gid] = grp.getgrgid(gid).gr_name
            except KeyError:
                self._groups[gid] = ""
        return self._groups[gid]


def _xattrs(path: bytes | int, follow: bool = False) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    try:
        names = os.listxattr(path, follow_symlinks=follow) if not isinstance(path, int) \
            else os.listxattr(path)
    except OSError:
        return out
    for name in names:
        try:
            value = os.getxattr(path, name, follow_symlinks=follow) if not isinstance(path, int) \
                else os.getxattr(path, name)
        except OSError:
            continue
        out[name] = value
    return out


def _read_link(entry: TreeEntry, st: os.stat_result, path: bytes) -> None:
    """A symlink's target, and its access time after reading it: reading a
    link may set its access time (relatime), and no flag avoids that, so the
    backup records the time the source shows once the backup is done."""
    entry.target = os.readlink(path)
    after = os.lstat(path)
    if (after.st_ino, after.st_ctime_ns, after.st_mtime_ns) == (
            st.st_ino, st.st_ctime_ns, st.st_mtime_ns):
        entry.atime = after.st_atime_ns


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_size, a.st_mtime_ns, a.st_ctime_ns, a.st_ino) == (
        b.st_size, b.st_mtime_ns, b.st_ctime_ns, b.st_ino)


class _TreeBackup:
    def __init__(self, repo: Repository, progress: Progress, workers: int,
                 changed: ChangedDirs | None = None) -> None:
        self.repo = repo
        self.progress = progress
        # With a change journal: the directories to visit (the rest are the
        # parent's) and, in each, the names to look at again.
        self.changed = changed
        self.needed = changed.needed() if changed is not None else None
        # Directories a change journal must list again next time: they hold
        # hard-linked files, or something in them could not be read.
        self.recheck: set[tuple[bytes, ...]] = set()
        self.hasher = repo.hasher()
        self.params = repo.config.chunker
        self.names = _Names()
        # Reading many small files waits on the disk more than on the CPU:
        # more readers than cores keep the device busy.
        self.pool = ThreadPoolExecutor(max(1, workers) * READERS_PER_WORKER, "tree-read")
        self.slots = threading.BoundedSemaphore(MAX_FILES_IN_FLIGHT)
        self.stats = {"bytes_scanned": 0, "bytes_read": 0, "bytes_sent": 0, "bytes_new": 0,
                      "files": 0, "dirs": 0, "files_unchanged": 0, "files_changed_while_read": 0,
                      "dirs_unchanged_by_journal": 0}
        self.warnings: list[str] = []
        self.links: dict[tuple[int, int], list[bytes]] = {}
        self._lock = threading.Lock()
        self._local = threading.local()
        self.waiting = 0
        self.batch: _Batch | None = None
        self.sizes: dict[bytes, int] = {}  # tree id -> its tree_size, when summed

    # -- file content ------------------------------------------------------------------------

    def _store(self, data: bytes | memoryview) -> tuple[bytes, int, int]:
        cid, sent = self.repo.store_blob(BlobType.DATA, data, chunk_id=self.hasher.chunk_id(data))
        return cid, (len(data) if sent else 0), sent

    def _read_content(self, fh: BinaryIO, fd: int, size: int, sparse: bool,
                      out: _FileResult) -> None:
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

    def _take(self, out: _FileResult, data: bytes | memoryview) -> None:
        cid, new, sent = self._store(data)
        out.content.append(cid)
        out.read += len(data)
        out.new += new
        out.sent += sent
        self.progress.add(read=len(data), new=new, sent=sent)

    def _read_file(self, path: bytes, st: os.stat_result) -> _FileResult:
        try:
            return self._read_any(path, st)
        finally:
            self.slots.release()

    def _read_batch(self, items: list[tuple[bytes, os.stat_result]]) -> list[_FileResult]:
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

    def _read_small(self, fd: int, st: os.stat_result) -> _FileResult | None:
        """A small dense file, already open, in three syscalls (it closes
        ``fd``); None when anything looks off (it grew, it moved, it is
        sparse): then the careful path reads it."""
        try:
            data = os.read(fd, st.st_size + 1)
            after = os.fstat(fd)
            xattrs = _xattrs(fd)
        except OSError:
            return None
        finally:
            os.close(fd)
        if len(data) != st.st_size or not _same(st, after) or (
                after.st_blocks * 512 < after.st_size):
            return None
        out = _FileResult(final_stat=after, xattrs=xattrs)
        if data:
            self._take(out, data)
        return out

    def _read_any(self, path: bytes, st: os.stat_result) -> _FileResult:
        spent = _FileResult()  # what a read that had to be repeated read, stored and sent
        try:
            for attempt in range(2):
                out = _FileResult(read=spent.read, new=spent.new, sent=spent.sent)
                try:
                    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | O_NOATIME)
                except PermissionError:
                    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
                with os.fdopen(fd, "rb", buffering=0) as fh:
                    before = os.fstat(fd)
                    out.xattrs = _xattrs(fd)
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
            return _FileResult(vanished=True, warning=f"vanished: {os.fsdecode(path)}",
                               read=spent.read, new=spent.new, sent=spent.sent)
        except OSError as exc:
            return _FileResult(vanished=True,
                               warning=f"unreadable: {os.fsdecode(path)}: {exc.strerror}",
                               read=spent.read, new=spent.new, sent=spent.sent)

    # -- entries ---------------------------------------------------------------------------

    def _entry(self, name: bytes, st: os.stat_result, path: bytes,
               old: TreeEntry | None = None) -> tuple[TreeEntry, bool]:
        """The entry for ``st``, and whether its extended attributes are
        still to be read: a regular file's are read by the reader, through
        the file it opens (one path lookup less for the walk, which is the
        busiest thread; and the attributes go with the content read)."""
        mode = st.st_mode
        kind = (EntryType.DIR if stat.S_ISDIR(mode) else EntryType.FILE if stat.S_ISREG(mode)
                else EntryType.SYMLINK if stat.S_ISLNK(mode) else EntryType.FIFO
                if stat.S_ISFIFO(mode) else EntryType.CHARDEV if stat.S_ISCHR(mode)
                else EntryType.BLOCKDEV if stat.S_ISBLK(mode) else EntryType.SOCKET)
        entry = TreeEntry(
            name=name, type=kind, mode=stat.S_IMODE(mode), uid=st.st_uid, gid=st.st_gid,
            user=self.names.user(st.st_uid), group=self.names.group(st.st_gid),
            atime=st.st_atime_ns, mtime=st.st_mtime_ns, ctime=st.st_ctime_ns,
            size=st.st_size if kind in (EntryType.FILE, EntryType.SYMLINK) else 0,
            inode=st.st_ino, dev=st.st_dev, nlink=st.st_nlink,
            rdev=st.st_rdev if kind in (EntryType.CHARDEV, EntryType.BLOCKDEV) else 0)
        if old is not None and old.ctime == st.st_ctime_ns and old.inode == st.st_ino \
                and old.dev == st.st_dev:
            # Setting an xattr or retargeting changes ctime: an unchanged ctime
            # lets the parent's xattrs and target stand, saving two syscalls.
            entry.xattrs = dict(old.xattrs)
            if kind == EntryType.SYMLINK:
                entry.target = old.target
                if entry.target is None:
                    _read_link(entry, st, path)
            return entry, False
        if kind == EntryType.FILE:
            return entry, True
        if kind == EntryType.SYMLINK:
            _read_link(entry, st, path)
        entry.xattrs = _xattrs(path)
        return entry, False

    def _unchanged(self, old: TreeEntry | None, st: os.stat_result) -> bool:
        if old is None or old.type != EntryType.FILE or old.changed:
            return False
        if (old.size, old.mtime, old.ctime, old.inode) != (
                st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino):
            return False
        ids = list(old.content)
        for list_id in old.content_list:
            if not self.repo.has_blob(list_id):
                return False
            ids.extend(decode_chunk_list(self.repo.load_blob(list_id)))
        return all(self.repo.has_blob(cid) for cid in ids)

    def _parent_docs(self, tree_id: bytes | None) -> dict[bytes, dict[str, Any]] | None:
        """The parent backup's entries of this directory, as stored (name ->
        entry document). Decoded into entries only where something changed:
        in an incremental almost nothing has, and full decoding and
        re-encoding of every entry cost more than the walk itself."""
        if tree_id is None or not self.repo.has_blob(tree_id):
            return None
        try:
            docs = tree_docs(self.repo.load_blob(tree_id))
        except Exception:
            return None  # damaged: everything below is backed up afresh
        out: dict[bytes, dict[str, Any]] = {}
        for doc in docs:
            name = doc_name(doc)
            if name is not None:
                out[name] = doc
        return out

    def _old_entry(self, doc: dict[str, Any] | None) -> TreeEntry | None:
        if doc is None:
            return None
        try:
            return TreeEntry.from_doc(doc)
        except Exception:
            return None  # a damaged parent entry: back this name up afresh

    def _doc_holds(self, doc: dict[str, Any], st: os.stat_result, kind: str) -> bool:
        """Whether the parent's document of this name still describes it, but
        for its access time (:func:`_with_atime`), so it can be stored again
        as is. An unchanged ctime also vouches for xattrs and a symlink's
        target, which change it."""
        get = doc.get
        return (get("type") == kind and not get("changed")
                and get("ctime", 0) == st.st_ctime_ns and get("mtime", 0) == st.st_mtime_ns
                and get("inode", 0) == st.st_ino and get("dev", 0) == st.st_dev
                and get("mode", 0) == stat.S_IMODE(st.st_mode)
                and get("uid", 0) == st.st_uid and get("gid", 0) == st.st_gid
                and get("nlink", 0) == st.st_nlink
                and get("size", 0) == (st.st_size if kind != "dir" else 0)
                and get("user", "") == self.names.user(st.st_uid)
                and get("group", "") == self.names.group(st.st_gid)
                and "rdev" not in doc)

    def _content_indexed(self, doc: dict[str, Any]) -> bool:
        if "content_list" in doc:
            return False  # a huge file: the careful path loads and checks its lists
        try:
            return self.repo.has_blobs([bytes.fromhex(c) for c in doc.get("content", ())])
        except (TypeError, ValueError):
            return False

    def directory(self, path: bytes, rel: list[bytes], parent_tree: bytes | None,
                  root_dev: int) -> tuple[bytes, int]:
        """Stores one directory (and everything below it); its tree id and
        the bytes of every file below it."""
        return self.scan(path, rel, parent_tree, root_dev).finish()

    def scan(self, path: bytes, rel: list[bytes], parent_tree: bytes | None,
             root_dev: int, full: bool = False) -> _PendingDir:
        """Lists a directory and hands its files to the readers, then does the
        same for its subdirectories, without waiting: sibling directories
        read in parallel, and a directory's tree is stored once all below it
        is (``finish``). At most ``MAX_PENDING_DIRS`` wait at any time, so
        memory does not grow with the tree. ``full``: this directory cannot
        be proven the one the parent recorded, or its history is incomplete
        (``agent.dataplane.changes``): it and all below it are listed in full,
        whatever the change journal says."""
        if self.progress.cancelled.is_set():
            raise Cancelled("the backup was cancelled")
        loaded = self._parent_docs(parent_tree)
        old = loaded or {}
        entries: list[TreeEntry] = []
        kept: list[tuple[bytes, dict[str, Any]]] = []
        pending: list[tuple[TreeEntry, Future[_FileResult]]] = []
        # With a change journal, only the names it reports are looked at
        # again; the parent's documents of the others stand as they are.
        names = (self.changed.names(tuple(rel))
                 if self.changed is not None and loaded is not None and not full else None)
        listed: Sequence[tuple[bytes, os.stat_result | OSError | None]] = []
        if names is not None:
            listed = [(name, None) for name in sorted(old.keys() | names)]
        else:
            try:
                listed = list_dir(path)
            except FileNotFoundError:
                self.warnings.append(f"vanished: {os.fsdecode(path)}")
            except OSError as exc:
                self.warnings.append(f"unreadable: {os.fsdecode(path)}: {exc.strerror}")
                self.recheck.add(tuple(rel))
        self.stats["dirs"] += 1
        # (entry or kept document, path, the parent's subtree, whether it is
        # another directory than the parent's of that name)
        subdirs: list[tuple[TreeEntry | dict[str, Any], bytes, bytes | None, bool]] = []
        altered = False  # a kept document got a new access time
        for name, d in listed:
            child = path + b"/" + name
            previous = old.get(name)
            if (d is None and names is not None and name not in names and previous is not None
                    and not previous.get("changed")):
                kind = previous.get("type")
                if kind == "dir":
                    subdirs.append((previous, child, _subtree_of(previous), False))
                    continue
                if kind == "file":
                    self.stats["files"] += 1
                    self.stats["files_unchanged"] += 1
                    self.stats["bytes_scanned"] += int(previous.get("size", 0))
                kept.append((name, previous))
                continue
            try:
                if isinstance(d, OSError):
                    raise d
                st = d if d is not None else os.lstat(child)
                mode = st.st_mode
                if previous is not None:
                    # The fast path of an incremental: the stored document is
                    # kept (at most with a new access time), without building
                    # an entry.
                    if stat.S_ISREG(mode):
                        if st.st_nlink == 1 and self._doc_holds(previous, st, "file") \
                                and self._content_indexed(previous):
                            self.stats["files"] += 1
                            self.stats["files_unchanged"] += 1
                            self.stats["bytes_scanned"] += st.st_size
                            self.progress.add(scanned=st.st_size)
                            doc = _with_atime(previous, st)
                            altered = altered or doc is not previous
                            kept.append((name, doc))
                            continue
                    elif stat.S_ISDIR(mode):
                        if st.st_dev == root_dev and self._doc_holds(previous, st, "dir"):
                            doc = _with_atime(previous, st)
                            altered = altered or doc is not previous
                            subdirs.append((doc, child, _subtree_of(previous), False))
                            continue
                    elif stat.S_ISLNK(mode) and self._doc_holds(previous, st, "symlink"):
                        doc = _with_atime(previous, st)
                        altered = altered or doc is not previous
                        kept.append((name, doc))
                        continue
                old_entry = self._old_entry(previous)
                entry, xattrs_unread = self._entry(name, st, child, old_entry)
            except FileNotFoundError:
                if d is not None:  # listed, then gone; a journal's name may be a deletion
                    self.warnings.append(f"vanished: {os.fsdecode(child)}")
                continue
            except OSError as exc:
                self.warnings.append(f"unreadable: {os.fsdecode(child)}: {exc.strerror}")
                self.recheck.add(tuple(rel))
                continue
            if entry.type == EntryType.DIR:
                if st.st_dev != root_dev:
                    self.warnings.append(f"mount point not crossed: {os.fsdecode(child)}")
                    entry.subtree = self._empty_tree()
                    entry.tree_size = 0
                    entries.append(entry)
                    continue
                other = previous is None or (previous.get("inode", 0), previous.get("dev", 0)) \
                    != (st.st_ino, st.st_dev) or (
                        self.changed is not None and self.changed.born_since(child))
                subdirs.append((entry, child, _subtree_of(previous), other))
                continue
            if entry.type != EntryType.FILE:
                entries.append(entry)
                continue
            self.stats["files"] += 1
            self.stats["bytes_scanned"] += st.st_size
            self.progress.add(scanned=st.st_size)
            if st.st_nlink > 1:
                self.recheck.add(tuple(rel))
                key = (st.st_dev, st.st_ino)
                first = self.links.get(key)
                if first is not None:
                    entry.type = EntryType.HARDLINK
                    entry.link = first
                    entry.size = st.st_size
                    if xattrs_unread:
                        entry.xattrs = _xattrs(child)
                    entries.append(entry)
                    continue
                self.links[key] = [*rel, name]
            if self._unchanged(old_entry, st):
                assert old_entry is not None
                if xattrs_unread:
                    entry.xattrs = _xattrs(child)
                entry.content = list(old_entry.content)
                entry.content_list = list(old_entry.content_list)
                entry.extents = list(old_entry.extents)
                self.stats["files_unchanged"] += 1
                entries.append(entry)
                continue
            if st.st_size <= SMALL_FILE:
                pending.append((entry, self._add_small(child, st)))  # type: ignore[arg-type]
            else:
                self.slots.acquire()
                pending.append((entry, self.pool.submit(self._read_file, child, st)))
        unchanged = (loaded is not None and not altered and not entries and not pending
                     and len(kept) + len(subdirs) == len(old)
                     and not any(isinstance(e, TreeEntry) for e, _c, _s, _o in subdirs))
        node = _PendingDir(self, entries, kept, pending,
                           parent_tree if unchanged and loaded is not None else None,
                           tuple(rel))
        self.waiting += 1
        for entry_or_doc, child, old_subtree, other in subdirs:
            name = child.rsplit(b"/", 1)[1]
            below = (*rel, name)
            walk_all = full or other or (self.changed is not None
                                         and self.changed.is_fresh(below))
            if (self.needed is not None and not walk_all and old_subtree is not None
                    and not isinstance(entry_or_doc, TreeEntry)
                    and below not in self.needed and self.repo.has_blob(old_subtree)):
                # The journal saw nothing change below: the parent's subtree stands.
                self.stats["dirs_unchanged_by_journal"] += 1
                if "tree_size" not in entry_or_doc:  # stored before trees kept sizes
                    entry_or_doc = {**entry_or_doc,
                                    "tree_size": self.tree_size_of(old_subtree)}
                    node.same_as = None
                node.subdirs.append((entry_or_doc, old_subtree, None))
                continue
            node.subdirs.append((entry_or_doc, old_subtree, self.scan(
                child, [*rel, name], old_subtree, root_dev, walk_all)))
            while self.waiting > MAX_PENDING_DIRS and node.finish_one():
                pass
        return node

    def finish(self, entries: list[TreeEntry], kept: list[tuple[bytes, dict[str, Any]]],
               pending: list[tuple[TreeEntry, Future[_FileResult]]],
               same_as: bytes | None, rel: tuple[bytes, ...]) -> tuple[bytes, int]:
        if same_as is not None and not pending and not entries:
            self.waiting -= 1
            return same_as, _size_of(entries, kept)
        for entry, future in pending:
            result = future.result()
            if result.warning:
                with self._lock:
                    self.warnings.append(result.warning)
            if result.vanished:
                with self._lock:
                    self.recheck.add(rel)
                continue
            if result.changed:
                self.stats["files_changed_while_read"] += 1
                entry.changed = True
            if result.xattrs is not None:
                entry.xattrs = result.xattrs
            if result.final_stat is not None:
                fs = result.final_stat
                entry.size, entry.mtime, entry.ctime = fs.st_size, fs.st_mtime_ns, \
                    fs.st_ctime_ns
            self.stats["bytes_read"] += result.read
            self.stats["bytes_new"] += result.new
            self.stats["bytes_sent"] += result.sent
            entry.extents = result.extents
            if len(result.content) > 8192:
                entry.content_list = [self.repo.save_blob(BlobType.META, encode_chunk_list(p))
                                      for p in split_content(result.content)]
            else:
                entry.content = result.content
            entries.append(entry)
        for entry in entries:
            if entry.link is not None:
                validate_link_path(entry.link)
        data = encode_tree_docs([*kept, *((e.name, e.to_doc()) for e in entries)])
        tree_id, sent = self.repo.store_blob(BlobType.META, data)
        self.stats["bytes_sent"] += sent
        self.waiting -= 1
        return tree_id, _size_of(entries, kept)

    def tree_size_of(self, tree_id: bytes) -> int:
        """The bytes of every file below a stored tree, summed from its blobs:
        only for trees stored before directories recorded their size."""
        return _stored_tree_size(self.repo, tree_id, self.sizes)

    def names_of(self, tree_id: bytes, inodes: frozenset[tuple[int, int]]
                 ) -> list[tuple[tuple[bytes, ...], bytes]]:
        """Where the parent backup had names of these files (device, inode):
        the change journal's files whose link count changed and whose names
        the kernel cannot tell. Reads the parent's tree blobs, not the file
        system."""
        found: list[tuple[tuple[bytes, ...], bytes]] = []
        stack: list[tuple[tuple[bytes, ...], bytes]] = [((), tree_id)]
        while stack:
            rel, tid = stack.pop()
            for doc in tree_docs(self.repo.load_blob(tid)):
                name = doc_name(doc)
                if name is None:
                    continue
                if (doc.get("dev", 0), doc.get("inode", 0)) in inodes:
                    found.append((rel, name))
                subtree = _subtree_of(doc)
                if subtree is not None:
                    stack.append(((*rel, name), subtree))
        return found

    def _add_small(self, path: bytes, st: os.stat_result) -> _Item:
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

    def _empty_tree(self) -> bytes:
        return self.repo.save_blob(BlobType.META, encode_tree([]))


def _size_of(entries: list[TreeEntry], kept: list[tuple[bytes, dict[str, Any]]]) -> int:
    """A directory's ``tree_size`` (section 9): its files' sizes and its
    subdirectories' tree sizes; hard links add nothing."""
    total = 0
    for e in entries:
        if e.type == EntryType.FILE:
            total += e.size
        elif e.type == EntryType.DIR:
            total += e.tree_size or 0
    for _name, doc in kept:
        kind = doc.get("type")
        if kind == "file":
            total += int(doc.get("size", 0))
        elif kind == "dir":
            total += int(doc.get("tree_size", 0))
    return total


def _stored_tree_size(repo: Repository, tree_id: bytes, memo: dict[bytes, int],
                      key_id: bytes | None = None) -> int:
    """The bytes of every file below a stored tree, from its blobs (using
    the ``tree_size`` of directories that have one)."""
    if tree_id in memo:
        return memo[tree_id]
    total = 0
    for doc in tree_docs(repo.load_blob(tree_id, key_id=key_id)):
        kind = doc.get("type")
        if kind == "file":
            total += int(doc.get("size", 0))
        elif kind == "dir":
            if "tree_size" in doc:
                total += int(doc["tree_size"])
            else:
                subtree = _subtree_of(doc)
                if subtree is not None:
                    total += _stored_tree_size(repo, subtree, memo, key_id)
    memo[tree_id] = total
    return total


class _PendingDir:
    """A scanned directory whose files may still be read and whose subdirectories
    may still be pending.

    ``kept`` holds the parent backup's documents of names that did not
    change; ``same_as`` is the parent's tree id while the whole directory
    may still turn out unchanged (then that id is the result, and nothing
    is encoded or stored)."""

    def __init__(self, job: _TreeBackup, entries: list[TreeEntry],
                 kept: list[tuple[bytes, dict[str, Any]]],
                 pending: list[tuple[TreeEntry, Future[_FileResult]]],
                 same_as: bytes | None, rel: tuple[bytes, ...]) -> None:
        self.job = job
        self.rel = rel
        self.entries = entries
        self.kept = kept
        self.pending = pending
        self.same_as = same_as
        self.subdirs: list[tuple[TreeEntry | dict[str, Any], bytes | None,
                                 _PendingDir | None]] = []
        self._next = 0

    def finish_one(self) -> bool:
        """Finishes the oldest unfinished subdirectory; False if none is left."""
        while self._next < len(self.subdirs):
            i = self._next
            self._next += 1
            entry, old_subtree, node = self.subdirs[i]
            if node is None:
                continue
            subtree, size = node.finish()
            if isinstance(entry, TreeEntry):
                entry.subtree = subtree
                entry.tree_size = size
                self.same_as = None
            elif subtree != old_subtree or entry.get("tree_size") != size:
                entry = {**entry, "subtree": subtree.hex(), "tree_size": size}
                self.same_as = None
            self.subdirs[i] = (entry, old_subtree, None)
            return True
        return False

    def finish(self) -> tuple[bytes, int]:
        while self.finish_one():
            pass
        entries = list(self.entries)
        kept = list(self.kept)
        for entry, _old, _node in self.subdirs:
            if isinstance(entry, TreeEntry):
                entries.append(entry)
            else:
                name = doc_name(entry)
                assert name is not None  # it was found under this name
                kept.append((name, entry))
        return self.job.finish(entries, kept, self.pending, self.same_as, self.rel)


class _Batch:
    """Small files, possibly of several directories, read in one job."""

    def __init__(self) -> None:
        self.items: list[tuple[bytes, os.stat_result]] = []
        self.job: Future[list[_FileResult]] | None = None


class _Item:
    """One file's result inside a batch job, looking like a Future of it."""

    def __init__(self, owner: _TreeBackup, batch: _Batch, index: int) -> None:
        self._owner = owner
        self._batch = batch
        self._index = index

    def result(self) -> _FileResult:
        if self._batch.job is None:  # still open: only the walk adds to it and waits
            self._owner.submit_batch()
        assert self._batch.job is not None
        return self._batch.job.result()[self._index]


def backup_tree(repo: Repository, root: Path, *, parent: TreeContent | None = None,
                progress: Progress, workers: int = 2,
                changed: ChangedDirs | None = None) -> BackupResult:
    """Backs a directory tree up; unchanged files of ``parent`` are not read.
    With ``changed`` (the change journal's answer since ``parent`` began),
    only those directories are scanned: the rest are ``parent``'s subtrees."""
    try:
        st = os.stat(root)
    except OSError as exc:
        raise SourceUnreadable(f"cannot read {root}: {exc}") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise SourceUnreadable(f"{root} is not a directory")
    changed = changed if parent is not None else None
    job = _TreeBackup(repo, progress, workers, changed)
    try:
        if changed is not None and changed.inodes and parent is not None:
            job.changed = changed = changed.with_names(job.names_of(parent.root, changed.inodes))
            job.needed = changed.needed()
        top = os.fsencode(os.path.realpath(root))
        root_id, size = job.directory(top, [], parent.root if parent else None, st.st_dev)
        # The root's own entry: mode, owner, times and xattrs as they were
        # when the backup began (listing it left its access time alone).
        meta, _ = job._entry(b"root", st, top)
    finally:
        job.pool.shutdown(wait=True, cancel_futures=True)
    repo.flush()
    return BackupResult(TreeContent(root_id, root_meta(meta, size)), job.stats, job.warnings,
                        recheck_dirs=sorted(job.recheck))


# -- listing ---------------------------------------------------------------------------------


def _walk_to(repo: Repository, content: TreeContent, path: Sequence[bytes],
             key_id: bytes | None = None) -> tuple[list[TreeEntry], TreeEntry | None]:
    """(entries of the directory at ``path``, None) or ([], the entry) for a non-directory."""
    entries = decode_tree(repo.load_blob(content.root, key_id=key_id))
    for i, name in enumerate(path):
        validate_name(name)
        entry = next((e for e in entries if e.name == name), None)
        where = "/" + "/".join(os.fsdecode(p) for p in path[:i + 1])
        if entry is None:
            raise PathNotInBackup(f"{where} is not in the backup")
        if entry.type != EntryType.DIR or entry.subtree is None:
            if i == len(path) - 1:
                return [], entry
            raise PathNotInBackup(f"{where} is not a directory")
        entries = decode_tree(repo.load_blob(entry.subtree, key_id=key_id))
    return entries, None


def restore_size(repo: Repository, content: TreeContent, path: Sequence[bytes] = (),
                 key_id: bytes | None = None) -> int | None:
    """The bytes a restore of the tree, or of what is at ``path``, writes
    (its progress total); None for a whole tree backed up before backups
    recorded it."""
    if not path:
        return content.size
    parent_entries, _ = _walk_to(repo, content, path[:-1], key_id)
    entry = next((e for e in parent_entries if e.name == path[-1]), None)
    if entry is None:
        raise PathNotInBackup(f"/{'/'.join(os.fsdecode(p) for p in path)} is not in the backup")
    if entry.type == EntryType.FILE:
        return entry.size
    if entry.type == EntryType.DIR and entry.subtree is not None:
        if entry.tree_size is not None:
            return entry.tree_size
        return _stored_tree_size(repo, entry.subtree, {}, key_id)
    return 0


def list_tree(repo: Repository, content: TreeContent,
              path: Sequence[bytes] = (), key_id: bytes | None = None) -> list[TreeEntry]:
    """The entries at ``path``; ``key_id`` is the backup's namespace (its
    manifest's ``chunk_key_id``; the vault's own when None)."""
    entries, single = _walk_to(repo, content, path, key_id)
    return [single] if single is not None else entries


# -- restore ---------------------------------------------------------------------------------


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
            _, source = _walk_to(self.repo, self.content, parts, self.key_id)
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


def _with_atime(doc: dict[str, Any], st: os.stat_result) -> dict[str, Any]:
    """``doc`` with the access time of ``st`` (a copy only if it differs): a
    read elsewhere changes nothing else, and must not send a file or a
    directory down the slow path."""
    if doc.get("atime", 0) == st.st_atime_ns:
        return doc
    changed = dict(doc)
    if st.st_atime_ns:
        changed["atime"] = st.st_atime_ns
    else:
        changed.pop("atime", None)
    return changed


def _subtree_of(doc: dict[str, Any] | None) -> bytes | None:
    """The parent backup's subtree id of a directory document, if it has one."""
    if doc is None or doc.get("type") != EntryType.DIR.value:
        return None
    try:
        subtree = bytes.fromhex(doc["subtree"])
    except (KeyError, TypeError, ValueError):
        return None
    return subtree if len(subtree) == 32 else None


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
        entries, single = _walk_to(repo, content, path, key_id)
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
            parent_entries, _ = _walk_to(repo, content, path[:-1], key_id)
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
