"""The running agent's change journals, one per tree root, and one tree
backup's use of its tree's journal.

Apart from the journal itself (``changes``, one watch of one tree) because
this is the process's view: which trees are watched, a watch set again when
its root was replaced or retried when it failed, every watch on a file
system paused while this process restores into it, and a backup's
generation begun before its walk and committed only once its manifest is
stored.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from agent.dataplane.changes import TreeWatch, Unavailable


class TreeWatches:
    """The agent's watches, one per tree root, started at a tree's first
    backup in this process and kept while the process runs."""

    #: A tree that could not be watched is tried again after this long.
    RETRY_AFTER = 600.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watches: dict[bytes, TreeWatch | None] = {}
        self._failed_at: dict[bytes, float] = {}
        self.reasons: dict[bytes, str] = {}

    def watch(self, root: Path) -> TreeWatch | None:
        key = os.fsencode(os.path.realpath(root))
        with self._lock:
            failed = self._failed_at.get(key)
            current = self._watches.get(key)
            if current is not None and not current.same_root():
                current.close()  # the directory was replaced: watch the new one
                del self._watches[key]
            if key not in self._watches or (
                    failed is not None and time.monotonic() - failed > self.RETRY_AFTER):
                try:
                    self._watches[key] = TreeWatch(root)
                    self._failed_at.pop(key, None)
                except (Unavailable, OSError) as exc:
                    self._watches[key] = None
                    self._failed_at[key] = time.monotonic()
                    self.reasons[key] = str(exc)
            return self._watches[key]

    def why_not(self, root: Path) -> str:
        """Why ``root`` has no watch, if it has none."""
        return self.reasons.get(os.fsencode(os.path.realpath(root)), "no change journal")

    @contextlib.contextmanager
    def restoring(self, target: Path) -> Iterator[None]:
        """Around a restore into ``target`` by this process. Its own events
        are not recorded, so a watched tree that overlaps the target is
        walked in full at its next backup. Watches on the target's file
        system pause meanwhile: the kernel's work for each event, paid by
        the writer, slowed a restore of 20,000 small files by a sixth. Their
        trees, too, are walked in full next, since changes made by others
        during the restore go unseen."""
        key = os.fsencode(os.path.realpath(target))
        try:
            device: int | None = os.stat(key).st_dev
        except OSError:
            device = None
        with self._lock:
            watches = [w for w in self._watches.values() if w is not None]
        paused = []
        for watch in watches:
            if key == watch.root or key.startswith(watch.root + b"/") \
                    or watch.root.startswith(key + b"/"):
                watch.invalidate("a restore wrote into the tree")
            if watch.device == device:
                watch.pause("a restore ran on the tree's file system")
                paused.append(watch)
        try:
            yield
        finally:
            for watch in paused:
                watch.resume()

    def close(self) -> None:
        with self._lock:
            for watch in self._watches.values():
                if watch is not None:
                    watch.close()
            self._watches.clear()


#: The running agent's watches.
WATCHES = TreeWatches()


class Tracking:
    """One tree backup's use of its watch: begun before the walk, committed
    once the backup's manifest is stored (a failed backup is never a parent
    the journal answers for)."""

    def __init__(self, watch: TreeWatch | None, parent_backup_id: str | None,
                 why_no_watch: str = "no change journal") -> None:
        self.watch = watch
        self.parent_backup_id = parent_backup_id
        self.generation = watch.begin() if watch is not None else 0
        self.changed = watch.changed_since(parent_backup_id) if watch is not None else None
        self.reason = watch.reason if watch is not None else why_no_watch

    @property
    def method(self) -> str:
        """How this backup finds its changes: full (no parent), journal or
        walk (``reason`` says why)."""
        if self.parent_backup_id is None:
            return "full"
        return "journal" if self.changed is not None else "walk"

    def commit(self, backup_id: str, recheck_dirs: Iterable[tuple[bytes, ...]]) -> None:
        if self.watch is not None:
            self.watch.commit(backup_id, self.generation, recheck_dirs,
                              parent_backup_id=self.parent_backup_id,
                              full_walk=self.changed is None)


def track(root: Path, parent_backup_id: str | None,
          watches: TreeWatches | None = WATCHES) -> Tracking:
    """Starts tracking one backup of ``root`` (its watch is set on the
    tree's first backup in this process); ``watches`` None tracks nothing."""
    if watches is None:
        return Tracking(None, parent_backup_id, "change_journal = false")
    watch = watches.watch(root)
    return Tracking(watch, parent_backup_id, watches.why_not(root) if watch is None else "")
