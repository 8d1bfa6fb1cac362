"""A change journal for file-system backups: the kernel's fanotify events
on a tree, so an incremental looks again only at the names that changed.

A full incremental walk lists and ``lstat``s every entry of the tree; with
the metadata cold that alone costs more than everything else an incremental
does on a tree that barely changed. A long-lived agent instead holds a
fanotify mark on the tree's file system from the tree's first backup in the
process on. Each event names a directory (by file handle) and a name in it;
the handle is turned into the directory's path in the tree as the event is
read, while the kernel has the names at hand, and events outside the tree
are dropped. Each backup starts a new *generation* of events, so what
changed since a parent backup began is the union of the generations from
its own on. The backup then visits only the directories with changes and
their ancestors, and in each looks again only at the changed names; every
other entry and subtree is the parent backup's, as it was.

It is for trees what reflink changed-block tracking is for disks, with the
same rule: when in doubt, look. The journal narrows where a backup looks
only where it can prove that a directory is the one the parent backup
recorded, with every event about it since the parent began:

- A directory that was created, deleted, or moved in or out since the
  parent began is *fresh*: its history is not complete (events about a
  directory that is gone by the time they are read cannot be placed), so it
  is listed in full, with everything below it. ``rm -rf d; mkdir d`` makes
  ``d`` fresh, whatever inode the new ``d`` gets.
- A directory whose device and inode differ from the parent's document of
  that name is listed in full, with everything below it (the backup checks
  this as it goes, in ``agent.dataplane.tree_backup``).
- A file's link count changing (a hard link made or removed names no
  directory) is a reason to look at the files it names, never to give up
  the journal: a file with one name is where that name is, which is told
  as the event is read; a file with several names that was born after the
  parent began has, in the tree, only names whose creation the journal saw;
  for any other, the backup finds its names in the parent backup (by device
  and inode) and looks at them again. Events about files outside the tree
  cost the tree nothing.

The answer is "walk everything" (``None``, with a ``reason``) only when

- fanotify is not available (not root, an old kernel, a file system without
  file handles, such as most network and FUSE file systems);
- the agent restarted, or the parent backup was not taken under this watch;
- the kernel's queue overflowed (the queue is unbounded, so only when the
  kernel cannot allocate), an event could not be parsed, or a generation
  changed too many names of the tree to keep;
- this process wrote into the tree (a restore): its own events are not
  recorded, since its own writes to vaults on the same file system would
  drown the journal;
- the tree's root is no longer the directory the watch was set on;
- the last full walk of this chain is older than ``full_walk_interval``.

Directories holding files with several links are always listed again (a
name outside the tree may write them, and such writes report a change
outside it), and so are directories where something could not be read (an
unreadable file left out of one backup is tried again, and warned about
again, at the next).

What the kernel does not report, no journal can: a file written through a
shared memory mapping after it was closed, and access times (reading a file
is not a change). The periodic full walk picks both up.

Here is one tree's watch (:class:`TreeWatch`); its answer to a backup is a
:class:`~agent.dataplane.changed_dirs.ChangedDirs`; the agent's watches, and
a backup's use of one, are in ``watches``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import select
import stat
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from agent.dataplane import fanotify as fan
from agent.dataplane.changed_dirs import ChangedDirs, RelPath
from agent.dataplane.fanotify import birth_ns as birth_ns
from cbr.clock import wall_time

#: Every change to a name, its content or its metadata, on files and directories.
WATCHED = (fan.FAN_MODIFY | fan.FAN_ATTRIB | fan.FAN_CLOSE_WRITE | fan.FAN_MOVED_FROM
           | fan.FAN_MOVED_TO | fan.FAN_CREATE | fan.FAN_DELETE | fan.FAN_DELETE_SELF
           | fan.FAN_MOVE_SELF | fan.FAN_ONDIR)
#: A directory event of these kinds makes the directory it names fresh.
_NAME_CHANGES = fan.FAN_CREATE | fan.FAN_DELETE | fan.FAN_MOVED_FROM | fan.FAN_MOVED_TO
#: A generation that changed more distinct names of the tree than this is
#: not kept: the next backup walks everything.
MAX_CHANGES_PER_GENERATION = 200_000
#: Backups whose journal state is kept per tree (a parent is nearly always
#: the latest, or one of the last few after failures).
KEPT_BACKUPS = 8
FULL_WALK_INTERVAL = 24 * 3600.0
BATCH_DELAY = 0.02


@dataclass
class _Generation:
    # (directory, name) of every name in the tree that changed; a name of
    # None: something in that directory, list it again
    names: set[tuple[RelPath, bytes | None]] = field(default_factory=set)
    # directories created, deleted or moved in or out (module docstring)
    fresh: set[RelPath] = field(default_factory=set)
    # files whose link count changed and whose one name could not be told
    # as the event was read: asked again at the backup (module docstring)
    linked: set[bytes] = field(default_factory=set)
    lost: str = ""  # why this generation cannot be trusted, if it cannot
    began_ns: int = 0  # wall clock when the generation began

    def size(self) -> int:
        return len(self.names) + len(self.fresh) + len(self.linked)


@dataclass(frozen=True)
class _Kept:
    generation: int
    recheck: frozenset[tuple[bytes, ...]]
    full_walk_at: float
    began_ns: int  # when the backup's generation began: files born later are new


def _one_path(fd: int, st: os.stat_result) -> bytes | None:
    """The path of a file open at ``fd`` that has one name, if we can be
    sure of it: a handle's dentry may be disconnected, so the path is
    trusted only if it leads back to this very inode."""
    if st.st_nlink != 1:
        return None
    try:
        path = os.readlink(f"/proc/self/fd/{fd}".encode())
        there = os.lstat(path) if path.startswith(b"/") else None
    except OSError:
        return None
    if there is None or (there.st_dev, there.st_ino) != (st.st_dev, st.st_ino):
        return None
    return path


class Unavailable(Exception):
    """This tree cannot be watched here; its backups walk it in full."""


class TreeWatch:
    """The fanotify journal of one tree's file system, split into
    generations: each backup starts a new one (:meth:`begin`), so the
    changes since a backup began are the union of the generations from
    its own on."""

    def __init__(self, root: Path, *, full_walk_interval: float = FULL_WALK_INTERVAL) -> None:
        self.root = os.fsencode(os.path.realpath(root))
        self.full_walk_interval = full_walk_interval
        st = os.stat(self.root)
        self._root_id = (st.st_dev, st.st_ino)
        self.device = st.st_dev
        self._paused = 0
        self._pause_reason = ""
        self._broken = ""
        try:
            lib = fan.lib()
        except (OSError, AttributeError) as exc:
            raise Unavailable(f"no fanotify in this C library: {exc}") from exc
        # An unbounded queue: a busy file system (a package manager, a
        # build) must not cost the tree its journal by overflowing it.
        fd = lib.fanotify_init(fan.FAN_CLASS_NOTIF | fan.FAN_CLOEXEC | fan.FAN_NONBLOCK
                               | fan.FAN_REPORT_FID | fan.FAN_REPORT_DIR_FID
                               | fan.FAN_REPORT_NAME | fan.FAN_UNLIMITED_QUEUE, os.O_RDONLY)
        if fd < 0:
            raise Unavailable(f"fanotify_init: {os.strerror(ctypes.get_errno())}")
        self._fd = fd
        # Events are attributed relative to this mount of the file system.
        self._mount_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        if lib.fanotify_mark(fd, fan.FAN_MARK_ADD | fan.FAN_MARK_FILESYSTEM, WATCHED, fan.AT_FDCWD,
                             self.root) < 0:
            error = ctypes.get_errno()
            self.close()
            raise Unavailable(f"fanotify_mark {os.fsdecode(self.root)}: {os.strerror(error)}")
        self._lock = threading.Lock()
        self._generations: dict[int, _Generation] = {0: _Generation(began_ns=time.time_ns())}
        self._current = 0
        self._kept: dict[str, _Kept] = {}
        self._pid = os.getpid()
        # Directory handle -> its path in the tree (None: outside it), told
        # when its events are read, while the kernel has the names at hand.
        self._places: dict[bytes, RelPath | None] = {}
        self.reason = ""  # why the last changed_since said to walk everything
        self._closed = threading.Event()
        self._reader = threading.Thread(target=self._read_loop, name="tree-watch", daemon=True)
        self._reader.start()

    # -- events --------------------------------------------------------------------------------

    def _read_loop(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        while not self._closed.is_set():
            try:
                ready = poller.poll(500)
            except OSError:
                ready = []
                time.sleep(0.5)
            if ready and not self._closed.is_set():
                # Let events gather, to be read in batches: waking for each
                # one takes the interpreter from the threads doing the work
                # (a restore of 20,000 files ran at half speed). The kernel
                # holds 16,384; a backup drains what is queued when it begins.
                time.sleep(BATCH_DELAY)
                with self._lock:
                    self._drain()

    def _drain(self) -> None:
        """Reads every queued event into the current generation (the lock
        held). Whatever goes wrong here costs a full walk, never a backup
        and never a missed change."""
        try:
            while True:
                try:
                    buf = os.read(self._fd, 1 << 16)
                except BlockingIOError:
                    return
                if not buf:
                    return
                self._parse(buf)
        except Exception as exc:
            self._generations[self._current].lost = f"the journal could not be read: {exc}"

    def _parse(self, buf: bytes) -> None:
        gen = self._generations[self._current]
        off = 0
        while off + fan.METADATA.size <= len(buf):
            length, _vers, _res, meta_len, mask, fd, pid = fan.METADATA.unpack_from(buf, off)
            if length < fan.METADATA.size:
                gen.lost = "a malformed event"
                return
            if fd >= 0:
                os.close(fd)
            if pid == self._pid and not mask & fan.FAN_Q_OVERFLOW:
                pass  # the agent's own writes: its vaults (a restore into the tree says so)
            elif mask & fan.FAN_Q_OVERFLOW:
                gen.lost = "the kernel's event queue overflowed"
            else:
                self._record(gen, buf, off + meta_len, off + length, mask)
            off += length
        if gen.size() > MAX_CHANGES_PER_GENERATION:
            gen.lost = "too many changes to keep track of"
            gen.names.clear()
            gen.fresh.clear()
            gen.linked.clear()

    def _record(self, gen: _Generation, buf: bytes, pos: int, end: int, mask: int) -> None:
        directory: tuple[bytes, bytes | None] | None = None
        obj: bytes | None = None
        while pos + fan.INFO_HEADER.size <= end:
            kind, _pad, size = fan.INFO_HEADER.unpack_from(buf, pos)
            if size < 20 or pos + size > end:
                gen.lost = "a malformed event"
                return
            handle_bytes, _type = fan.HANDLE_HEADER.unpack_from(buf, pos + 12)
            handle = bytes(buf[pos + 12:pos + 20 + handle_bytes])
            if kind == fan.INFO_DFID_NAME:
                directory = (handle, buf[pos + 20 + handle_bytes:pos + size].split(b"\0", 1)[0])
            elif kind == fan.INFO_DFID:
                directory = (handle, None)  # a change somewhere in the directory
            elif kind == fan.INFO_FID:
                obj = handle
            pos += size
        moved = fan.FAN_MOVED_FROM | fan.FAN_MOVED_TO | fan.FAN_MOVE_SELF
        if mask & fan.FAN_ONDIR and mask & moved:
            self._places.clear()  # a directory moved: paths below it changed
        if directory is not None:
            handle, name = directory[0], directory[1]
            path = self._place(handle)
            if path is None:
                return  # outside the tree, or gone (an ancestor's event says so)
            if name is None:
                gen.names.add((path, None))  # list it again
            elif name not in (b".", b""):
                gen.names.add((path, name))
                if mask & fan.FAN_ONDIR and mask & _NAME_CHANGES:
                    gen.fresh.add((*path, name))
            elif path:  # the root's own metadata is in no parent's tree
                gen.names.add((path[:-1], path[-1]))
        elif obj is not None:
            if mask & fan.FAN_ONDIR:
                path = self._place(obj)
                if path:
                    gen.names.add((path[:-1], path[-1]))
            else:
                # Only a link count changes a file without naming its
                # directory: a hard link came or went. A file left with one
                # name is where that name is, told now, while the kernel
                # still has the name at hand; any other is asked again at
                # the backup.
                try:
                    where, unknown = self._find(obj, time.time_ns())
                except OSError:
                    where, unknown = None, (0, 0)
                if where is not None:
                    in_tree = self._name_in_tree(where)
                    if in_tree is not None:
                        gen.names.add(in_tree)
                elif unknown is not None:
                    gen.linked.add(obj)
        else:
            gen.lost = "an event that names no file"

    # -- backups -------------------------------------------------------------------------------

    def begin(self) -> int:
        """Starts a backup: every change made before this call is in the
        generations before the one returned, everything later in it or after."""
        with self._lock:
            self._drain()
            self._current += 1
            self._generations[self._current] = _Generation(
                lost=self._pause_reason if self._paused else "", began_ns=time.time_ns())
            self._places.clear()
            return self._current

    def changed_since(self, parent_backup_id: str | None) -> ChangedDirs | None:
        """The directories to scan for an incremental on ``parent_backup_id``,
        or None to walk everything (module docstring)."""
        if not parent_backup_id:
            return self._walk_all("a first backup")
        if self._broken:
            return self._walk_all(self._broken)
        if not self._reader.is_alive():
            return self._walk_all("the journal's reader stopped")
        with self._lock:
            kept = self._kept.get(parent_backup_id)
            if kept is None:
                return self._walk_all("the parent backup was not taken under this watch")
            if wall_time() - kept.full_walk_at > self.full_walk_interval:
                return self._walk_all("the periodic full walk is due")
            self._drain()
            names: set[tuple[RelPath, bytes | None]] = set()
            fresh: set[RelPath] = set()
            linked: set[bytes] = set()
            for number in range(kept.generation, self._current + 1):
                gen = self._generations.get(number)
                if gen is None or gen.lost:
                    return self._walk_all(gen.lost if gen else "the journal was pruned")
                names |= gen.names
                fresh |= gen.fresh
                linked |= gen.linked
        if not self.same_root():
            return self._walk_all("the root is gone or is not the directory the watch was set on")
        changed: dict[RelPath, set[bytes] | None] = {path: None for path in kept.recheck}

        def add(path: RelPath, name: bytes | None) -> None:
            if path not in changed:
                changed[path] = set()
            listed = changed[path]
            if name is None:
                changed[path] = None
            elif listed is not None:
                listed.add(name)

        for path, name in names:
            add(path, name)
        inodes: set[tuple[int, int]] = set()
        for handle in linked:
            try:
                where, identity = self._find(handle, kept.began_ns)
            except OSError as exc:
                return self._walk_all(f"a file whose link count changed could not be "
                                      f"opened: {exc}")
            in_tree = self._name_in_tree(where) if where is not None else None
            if in_tree is not None:
                add(*in_tree)
            elif identity is not None:
                inodes.add(identity)
        # A directory whose entries changed has a new modification time,
        # which its parent records.
        for path in [p for p in changed if p]:
            add(path[:-1], path[-1])
        self.reason = ""
        return ChangedDirs({path: None if listed is None else frozenset(listed)
                            for path, listed in changed.items()},
                           frozenset(fresh), frozenset(inodes), kept.began_ns)

    def _walk_all(self, reason: str) -> ChangedDirs | None:
        self.reason = reason
        return None

    def commit(self, backup_id: str, generation: int, recheck: Iterable[tuple[bytes, ...]],
               *, parent_backup_id: str | None, full_walk: bool) -> None:
        """Records a finished backup: begun at ``generation``; ``recheck``,
        the directories to list again next time (hard-linked files in them,
        or entries that could not be read)."""
        with self._lock:
            parent = self._kept.get(parent_backup_id or "")
            walked_at = (wall_time() if full_walk or parent is None
                         else parent.full_walk_at)
            again = frozenset(recheck)
            if not full_walk and parent is not None:
                again |= parent.recheck  # until a full walk lists everything anyway
            self._kept[backup_id] = _Kept(generation, again, walked_at,
                                          self._generations[generation].began_ns)
            while len(self._kept) > KEPT_BACKUPS:
                del self._kept[next(iter(self._kept))]
            oldest = min(k.generation for k in self._kept.values())
            for number in [n for n in self._generations if n < oldest]:
                del self._generations[number]

    def pause(self, reason: str) -> None:
        """Stops the kernel's events until :meth:`resume`; every generation
        that overlaps the pause is lost."""
        with self._lock:
            self._paused += 1
            if self._paused == 1:
                fan.lib().fanotify_mark(self._fd, fan.FAN_MARK_REMOVE | fan.FAN_MARK_FILESYSTEM,
                                     WATCHED, fan.AT_FDCWD, self.root)
                self._pause_reason = reason
            self._drain()
            self._lose(self._pause_reason)

    def resume(self) -> None:
        with self._lock:
            self._paused -= 1
            if self._paused == 0 and fan.lib().fanotify_mark(
                    self._fd, fan.FAN_MARK_ADD | fan.FAN_MARK_FILESYSTEM, WATCHED, fan.AT_FDCWD,
                    self.root) < 0:
                self._broken = f"the watch could not be set again: " \
                               f"{os.strerror(ctypes.get_errno())}"
            self._lose(self._pause_reason)

    def invalidate(self, reason: str) -> None:
        """Makes every backup's next incremental walk the whole tree."""
        with self._lock:
            self._drain()
            self._lose(reason)

    def _lose(self, reason: str) -> None:
        """The current generation cannot be trusted (the first reason stays)."""
        gen = self._generations[self._current]
        gen.lost = gen.lost or reason

    def same_root(self) -> bool:
        """Whether the root path still names the directory the watch was set on."""
        try:
            st = os.stat(self.root)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self._root_id

    def _open(self, handle: bytes) -> int:
        """``open_by_handle_at``; -1 with errno set when it fails. An inode
        being freed at that moment fails with ENOMEM on some file systems
        (ext4: ``iget_locked`` finds it freeing): asked again a moment later,
        it is gone (ESTALE), which is the answer that means something."""
        for attempt in range(4):
            fd: int = fan.lib().open_by_handle_at(self._mount_fd, handle,
                                                os.O_PATH | os.O_CLOEXEC)
            if fd >= 0 or ctypes.get_errno() != errno.ENOMEM:
                return fd
            time.sleep(0.005 * (attempt + 1))
        return fd

    def _place(self, handle: bytes) -> RelPath | None:
        if handle in self._places:
            return self._places[handle]
        if len(self._places) >= 4096:
            self._places.clear()
        path = self._places[handle] = self._resolve(handle)
        return path

    def _resolve(self, handle: bytes) -> tuple[bytes, ...] | None:
        """A directory's path in the tree now; None if it is gone or elsewhere."""
        fd = self._open(handle)
        if fd < 0:
            return None  # ESTALE: deleted since; its parent's entry change covers it
        try:
            st = os.fstat(fd)
            if not stat.S_ISDIR(st.st_mode) or st.st_nlink == 0:
                return None
            path = os.readlink(f"/proc/self/fd/{fd}".encode())
        except OSError:
            return None
        finally:
            os.close(fd)
        if path == self.root:
            return ()
        if not path.startswith(self.root + b"/"):
            return None
        return tuple(path[len(self.root) + 1:].split(b"/"))

    def _name_in_tree(self, path: bytes) -> tuple[RelPath, bytes] | None:
        """(directory, name) of an absolute path inside the tree; None outside."""
        if not path.startswith(self.root + b"/"):
            return None
        parts = tuple(path[len(self.root) + 1:].split(b"/"))
        return parts[:-1], parts[-1]

    def _inspect(self, handle: bytes) -> tuple[int, bytes | None, tuple[int, int],
                                             int | None] | None:
        """A file as it is now: (link count, its one path if it has exactly
        one we can be sure of, (device, inode), birth time if known); None
        if it is gone. OSError when it cannot be opened for another reason."""
        fd = self._open(handle)
        if fd < 0:
            error = ctypes.get_errno()
            if error in (errno.ESTALE, errno.ENOENT):
                return None
            raise OSError(error, "open_by_handle_at")
        try:
            st = os.fstat(fd)
            if st.st_nlink == 0:
                return None
            born = fan.lib().birth_ns(fd)
            path = _one_path(fd, st)
        finally:
            os.close(fd)
        return st.st_nlink, path, (st.st_dev, st.st_ino), born

    def _find(self, handle: bytes, since_ns: int
              ) -> tuple[bytes | None, tuple[int, int] | None]:
        """Where a file whose link count changed has names the backup must
        look at: (its one path, None), or (None, its device and inode) when
        the parent backup must tell where its names were; (None, None) when
        it has no name there: gone, or born after the parent began (its
        names in the tree were created since, which the journal saw)."""
        found = self._inspect(handle)
        if found is None:
            return None, None
        links, where, identity, born = found
        if links == 1 and where is not None:
            return where, None
        if born is not None and since_ns < born <= time.time_ns():
            return None, None
        return None, identity

    def close(self) -> None:
        closed = getattr(self, "_closed", None)
        if closed is not None:
            closed.set()
            self._reader.join(timeout=2)
        for fd in (getattr(self, "_fd", -1), getattr(self, "_mount_fd", -1)):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._fd = self._mount_fd = -1
