"""What changed in a tree since a parent backup began: the change journal's
answer (``changes``), which is all of the journal the backup's walk
(``tree_backup``) reads.

Apart from the journal so that the walk depends on the answer alone, not
on how the kernel's events were gathered; the rules for when a directory
may be skipped are the journal's (module ``changes``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from agent.dataplane import fanotify as fan

#: File systems stamp times from a clock read once per tick (up to 10 ms at
#: HZ=100): a birth time may lag the real moment by that much, and a
#: directory born that close to a backup's beginning counts as born since.
CLOCK_GRAIN_NS = 50_000_000


RelPath = tuple[bytes, ...]  # a directory relative to the tree's root; () is the root


@dataclass(frozen=True)
class ChangedDirs:
    """What changed in a tree since the parent backup began: for each
    directory with changes, the names in it that changed (created, deleted,
    written, renamed, their metadata changed), or None where the whole
    directory must be listed again; the *fresh* directories, whose history
    is not complete, to be walked in full with all below them; and files
    whose link count changed and whose names in the tree only the parent
    backup can tell (device, inode). Every other name is as the parent
    backup recorded it."""

    dirty: dict[RelPath, frozenset[bytes] | None]
    fresh: frozenset[RelPath] = frozenset()
    inodes: frozenset[tuple[int, int]] = frozenset()
    #: When the parent backup began (wall clock, ns): a directory born since
    #: is not the one the parent recorded, whatever its inode number.
    since_ns: int = 0

    def needed(self) -> frozenset[RelPath]:
        """The directories to visit: the dirty and fresh ones and all their
        ancestors (whose trees change with them)."""
        out: set[RelPath] = {()}
        for path in (*self.dirty, *self.fresh):
            for i in range(len(path), 0, -1):
                prefix = path[:i]
                if prefix in out:
                    break
                out.add(prefix)
        return frozenset(out)

    def names(self, path: RelPath) -> frozenset[bytes] | None:
        """The names to look at again in ``path`` (None: list it all)."""
        if path in self.fresh:
            return None
        return self.dirty.get(path, frozenset())

    def is_fresh(self, path: RelPath) -> bool:
        """Whether ``path`` must be walked in full, with all below it."""
        return path in self.fresh

    def with_names(self, found: Iterable[tuple[RelPath, bytes]]) -> ChangedDirs:
        """These names too (the files of ``inodes``, once found), and their
        directories in their parents (a directory's tree changes with them)."""
        dirty: dict[RelPath, set[bytes] | None] = {
            path: None if names is None else set(names) for path, names in self.dirty.items()}
        for path, name in found:
            for where, what in ((path, name), *((path[:i], path[i]) for i in range(len(path)))):
                listed = dirty.setdefault(where, set())
                if listed is not None:
                    listed.add(what)
        return ChangedDirs({p: None if n is None else frozenset(n) for p, n in dirty.items()},
                           self.fresh, frozenset(), self.since_ns)

    def born_since(self, path: bytes) -> bool:
        """Whether the directory at ``path`` was born after the parent backup
        began (an inode number is reused at once on some file systems); True
        when the file system cannot tell, which costs a fuller listing, never
        a missed change."""
        born = fan.birth_ns(path)
        return born is None or born + CLOCK_GRAIN_NS >= self.since_ns
