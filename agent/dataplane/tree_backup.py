"""Backing a directory tree up: the walk, and what an incremental keeps of
its parent (``docs/storage-format.md`` section 9).

The walk goes depth first, one directory's entries in memory per level,
and stores one tree blob per directory once its files and subdirectories
are done; the files are read meanwhile on other threads (``tree_files``).
A file whose size, mtime, ctime and inode match the parent backup is not
read: its chunk list is reused, once the index confirms every chunk is
still there. Names whose stat matches the parent's keep the parent's
stored entry document as is (at most with a new access time), and a
directory where every name did so keeps the parent's tree id: an
incremental decodes and encodes only what changed. With a change journal
(``changes``), only the directories it names are visited at all.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from agent.dataplane import BackupResult, Cancelled, Progress, SourceUnreadable
from agent.dataplane.changed_dirs import ChangedDirs
from agent.dataplane.listing import list_dir
from agent.dataplane.tree import SMALL_FILE, names_of, size_of, stored_tree_size, subtree_of
from agent.dataplane.tree_entries import Names, entry_of, read_xattrs, with_atime
from agent.dataplane.tree_files import FileReader, FileResult
from cbr.repo import BlobType, Repository, TreeContent
from cbr.repo.objects.tree import (
    EntryType,
    TreeEntry,
    decode_chunk_list,
    doc_name,
    encode_chunk_list,
    encode_tree,
    encode_tree_docs,
    root_meta,
    split_content,
    tree_docs,
    validate_link_path,
)

MAX_PENDING_DIRS = 256


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
        self.names = Names()
        self.reader = FileReader(repo, progress, workers)
        self.stats = {"bytes_scanned": 0, "bytes_read": 0, "bytes_sent": 0, "bytes_new": 0,
                      "files": 0, "dirs": 0, "files_unchanged": 0, "files_changed_while_read": 0,
                      "dirs_unchanged_by_journal": 0}
        self.warnings: list[str] = []
        self.links: dict[tuple[int, int], list[bytes]] = {}
        self._lock = threading.Lock()
        self.waiting = 0
        self.sizes: dict[bytes, int] = {}  # tree id -> its tree_size, when summed

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
        for its access time (:func:`with_atime`), so it can be stored again
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
        pending: list[tuple[TreeEntry, Future[FileResult]]] = []
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
                    subdirs.append((previous, child, subtree_of(previous), False))
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
                            doc = with_atime(previous, st)
                            altered = altered or doc is not previous
                            kept.append((name, doc))
                            continue
                    elif stat.S_ISDIR(mode):
                        if st.st_dev == root_dev and self._doc_holds(previous, st, "dir"):
                            doc = with_atime(previous, st)
                            altered = altered or doc is not previous
                            subdirs.append((doc, child, subtree_of(previous), False))
                            continue
                    elif stat.S_ISLNK(mode) and self._doc_holds(previous, st, "symlink"):
                        doc = with_atime(previous, st)
                        altered = altered or doc is not previous
                        kept.append((name, doc))
                        continue
                old_entry = self._old_entry(previous)
                entry, xattrs_unread = entry_of(name, st, child, self.names, old_entry)
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
                subdirs.append((entry, child, subtree_of(previous), other))
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
                        entry.xattrs = read_xattrs(child)
                    entries.append(entry)
                    continue
                self.links[key] = [*rel, name]
            if self._unchanged(old_entry, st):
                assert old_entry is not None
                if xattrs_unread:
                    entry.xattrs = read_xattrs(child)
                entry.content = list(old_entry.content)
                entry.content_list = list(old_entry.content_list)
                entry.extents = list(old_entry.extents)
                self.stats["files_unchanged"] += 1
                entries.append(entry)
                continue
            if st.st_size <= SMALL_FILE:
                pending.append((entry, self.reader.add_small(child, st)))  # type: ignore[arg-type]
            else:
                pending.append((entry, self.reader.read(child, st)))
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
               pending: list[tuple[TreeEntry, Future[FileResult]]],
               same_as: bytes | None, rel: tuple[bytes, ...]) -> tuple[bytes, int]:
        if same_as is not None and not pending and not entries:
            self.waiting -= 1
            return same_as, size_of(entries, kept)
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
        return tree_id, size_of(entries, kept)

    def tree_size_of(self, tree_id: bytes) -> int:
        """The bytes of every file below a stored tree, summed from its blobs:
        only for trees stored before directories recorded their size."""
        return stored_tree_size(self.repo, tree_id, self.sizes)

    def _empty_tree(self) -> bytes:
        return self.repo.save_blob(BlobType.META, encode_tree([]))


class _PendingDir:
    """A scanned directory whose files may still be read and whose subdirectories
    may still be pending.

    ``kept`` holds the parent backup's documents of names that did not
    change; ``same_as`` is the parent's tree id while the whole directory
    may still turn out unchanged (then that id is the result, and nothing
    is encoded or stored)."""

    def __init__(self, job: _TreeBackup, entries: list[TreeEntry],
                 kept: list[tuple[bytes, dict[str, Any]]],
                 pending: list[tuple[TreeEntry, Future[FileResult]]],
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
            job.changed = changed = changed.with_names(names_of(repo, parent.root, changed.inodes))
            job.needed = changed.needed()
        top = os.fsencode(os.path.realpath(root))
        root_id, size = job.directory(top, [], parent.root if parent else None, st.st_dev)
        # The root's own entry: mode, owner, times and xattrs as they were
        # when the backup began (listing it left its access time alone).
        meta, _ = entry_of(b"root", st, top, job.names)
    finally:
        job.reader.close()
    repo.flush()
    return BackupResult(TreeContent(root_id, root_meta(meta, size)), job.stats, job.warnings,
                        recheck_dirs=sorted(job.recheck))
