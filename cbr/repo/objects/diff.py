"""What changed between two file trees (``cbr backup diff``).

This module owns the comparison: which metadata of a tree entry counts as a
change (type, size, mode, owner, mtime, xattrs, symlink and hardlink
targets, device numbers, and content), and the walk that pairs two trees
directory by directory in name order. It is shared by the controller (two
backups) and the CLI (a backup against a live directory), so both say the
same thing about the same pair of entries.

It must not read storage or the file system itself: each side is given as a
*lister*, a function that returns the entries of one directory. The walk
holds one directory of each side per level (a stack of the directories it
is inside), never a whole tree, and when both sides are in one chunk-id
namespace it skips a subtree whose tree id is equal on both sides: the same
id is the same bytes, stored once, so nothing below it can differ.

Access time, change time, inode, device and link count are not compared:
they change without the content or metadata a restore sets changing.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from cbr.repo.objects.tree import EntryType, TreeEntry

Lister = Callable[[bytes, TreeEntry], Sequence[TreeEntry]]
"""``list(path, directory entry) -> its entries``; ``path`` is the directory's
path from the root of the diff (``b""`` for the root itself)."""


class ChangeKind(enum.StrEnum):
    ADDED = "added"
    REMOVED = "removed"
    MODIFIED = "modified"


# What a modified entry's ``what`` names, each defined once.
CONTENT = "content"
SIZE = "size"
TYPE = "type"
MODE = "mode"
OWNER = "owner"
MTIME = "mtime"
XATTRS = "xattrs"
TARGET = "target"
LINK = "link"
DEVICE = "device"
FIELDS = (TYPE, CONTENT, SIZE, MODE, OWNER, MTIME, XATTRS, TARGET, LINK, DEVICE)


@dataclass(frozen=True, slots=True)
class Change:
    """One entry that differs. ``path`` is raw bytes from the root of the
    diff, ``/`` first (``b"/"`` is the root directory itself)."""

    path: bytes
    kind: ChangeKind
    old: TreeEntry | None
    new: TreeEntry | None
    what: tuple[str, ...] = ()

    @property
    def type(self) -> EntryType:
        """The type on the side the entry is on (the newer one if both)."""
        entry = self.new if self.new is not None else self.old
        assert entry is not None
        return entry.type

    @property
    def letter(self) -> str:
        return letter(self.kind, self.what)


def letter(kind: ChangeKind, what: Sequence[str]) -> str:
    """restic's marks: ``+`` added, ``-`` removed, ``T`` type changed,
    ``M`` content changed, ``U`` metadata only."""
    if kind is ChangeKind.ADDED:
        return "+"
    if kind is ChangeKind.REMOVED:
        return "-"
    if TYPE in what:
        return "T"
    return "M" if CONTENT in what else "U"


@dataclass(slots=True)
class Summary:
    """Counts of a diff. Bytes are sizes of regular files: those added plus
    the new size of each file whose content changed, and those removed plus
    the old size of each file whose content changed (a hardlink adds none)."""

    added: int = 0
    removed: int = 0
    modified: int = 0
    bytes_added: int = 0
    bytes_removed: int = 0

    def count(self, change: Change) -> None:
        if change.kind is ChangeKind.ADDED:
            self.added += 1
            self.bytes_added += _file_size(change.new)
        elif change.kind is ChangeKind.REMOVED:
            self.removed += 1
            self.bytes_removed += _file_size(change.old)
        else:
            self.modified += 1
            if CONTENT in change.what or TYPE in change.what:
                self.bytes_added += _file_size(change.new)
                self.bytes_removed += _file_size(change.old)

    def to_dict(self) -> dict[str, int]:
        return {"added": self.added, "removed": self.removed, "modified": self.modified,
                "bytes_added": self.bytes_added, "bytes_removed": self.bytes_removed}


def _file_size(entry: TreeEntry | None) -> int:
    return entry.size if entry is not None and entry.type is EntryType.FILE else 0


def display_path(path: bytes) -> str:
    """A raw path as text; bytes that are not UTF-8 shown as ``\\xNN``."""
    return path.decode("utf-8", "backslashreplace")


@dataclass(frozen=True, slots=True)
class Options:
    """How two entries are compared.

    ``content_ids``: both sides are backups in one chunk-id namespace, so a
    file's content is compared by its chunk ids and equal subtree ids are
    skipped. Otherwise (a live directory, or another namespace, whose ids
    are unrelated) a file's content counts as changed when its size or mtime
    differ, as restic's change detection does. ``ignore`` names fields not to
    compare (``xattrs`` where they cannot be read). ``loose_hardlinks``: a
    ``hardlink`` entry on one side equals a file on the other (a live walk
    cannot know which name of an inode a backup stored first).
    """

    content_ids: bool = True
    ignore: frozenset[str] = field(default_factory=frozenset)
    loose_hardlinks: bool = False


def entry_changes(old: TreeEntry, new: TreeEntry, options: Options = Options()) -> tuple[str, ...]:
    """What differs between two entries of the same name, in ``FIELDS`` order."""
    if old.type is not new.type:
        if options.loose_hardlinks and {old.type, new.type} == {EntryType.FILE,
                                                               EntryType.HARDLINK}:
            return ()
        return (TYPE,)
    what: list[str] = []
    if old.type is EntryType.FILE:
        if options.content_ids:
            if (old.content, old.content_list, old.extents) != \
                    (new.content, new.content_list, new.extents):
                what.append(CONTENT)
        elif old.size != new.size or old.mtime != new.mtime:
            what.append(CONTENT)
    if old.type in (EntryType.FILE, EntryType.SYMLINK) and old.size != new.size:
        what.append(SIZE)
    if old.mode != new.mode:
        what.append(MODE)
    if (old.uid, old.gid) != (new.uid, new.gid):
        what.append(OWNER)
    if old.mtime != new.mtime:
        what.append(MTIME)
    if old.xattrs != new.xattrs:
        what.append(XATTRS)
    if old.target != new.target:
        what.append(TARGET)
    if old.link != new.link:
        what.append(LINK)
    if old.rdev != new.rdev:
        what.append(DEVICE)
    return tuple(w for w in what if w not in options.ignore)


def _join(parent: bytes, name: bytes) -> bytes:
    return parent + b"/" + name


def _pairs(path: bytes, old: Sequence[TreeEntry], new: Sequence[TreeEntry]
           ) -> Iterator[tuple[bytes, TreeEntry | None, TreeEntry | None]]:
    """The names of two directories merged in raw byte order, each paired
    with its entry on either side (None where absent)."""
    olds = sorted(old, key=lambda e: e.name)
    news = sorted(new, key=lambda e: e.name)
    i = j = 0
    while i < len(olds) or j < len(news):
        a = olds[i] if i < len(olds) else None
        b = news[j] if j < len(news) else None
        if b is None or (a is not None and a.name < b.name):
            i += 1
            yield _join(path, a.name), a, None  # type: ignore[union-attr]
        elif a is None or b.name < a.name:
            j += 1
            yield _join(path, b.name), None, b
        else:
            i += 1
            j += 1
            yield _join(path, a.name), a, b


def diff_trees(old_root: TreeEntry, new_root: TreeEntry, list_old: Lister, list_new: Lister,
               *, options: Options = Options(), compare_root: bool = True,
               prefix: bytes = b"") -> Iterator[Change]:
    """Every change from ``old_root`` to ``new_root``, depth first in name
    order, a directory before what is inside it.

    An entry present on one side only is reported, and so is everything
    below it (a renamed directory is removed under its old name and added
    under its new one). A type change (a file that became a directory) is
    one ``modified`` entry whose ``what`` is ``("type",)``, followed by what
    the old directory held as removed or the new one holds as added.
    ``compare_root`` compares the two roots' own metadata too, reported as
    ``prefix`` (``/`` for the whole tree). Paths start with ``prefix``.
    Listers are called in the same depth-first name order, each directory
    once, so a lister may read the listings of a stream in order.
    """
    if compare_root:
        what = entry_changes(old_root, new_root, options)
        if what:
            yield Change(prefix or b"/", ChangeKind.MODIFIED, old_root, new_root, what)
    if _same_subtree(old_root, new_root, options):
        return
    stack = [_pairs(prefix, list_old(prefix, old_root), list_new(prefix, new_root))]
    while stack:
        item = next(stack[-1], None)
        if item is None:
            stack.pop()
            continue
        path, old, new = item
        if old is None:
            assert new is not None
            yield Change(path, ChangeKind.ADDED, None, new)
        elif new is None:
            yield Change(path, ChangeKind.REMOVED, old, None)
        else:
            what = entry_changes(old, new, options)
            if what:
                yield Change(path, ChangeKind.MODIFIED, old, new, what)
            if _same_subtree(old, new, options):
                continue
        old_dir = old is not None and old.type is EntryType.DIR
        new_dir = new is not None and new.type is EntryType.DIR
        if old_dir or new_dir:
            stack.append(_pairs(path,
                                list_old(path, old) if old_dir else (),  # type: ignore[arg-type]
                                list_new(path, new) if new_dir else ()))  # type: ignore[arg-type]


def _same_subtree(old: TreeEntry, new: TreeEntry, options: Options) -> bool:
    return (options.content_ids and old.type is EntryType.DIR and new.type is EntryType.DIR
            and old.subtree is not None and old.subtree == new.subtree)
