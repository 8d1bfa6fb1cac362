"""What a backup records of one name of the source tree: its entry from an
``lstat``, its owner's names, its extended attributes, a symlink's target,
and the access time a kept document of the parent's takes on.

The walk (``tree_backup``) and the file readers (``tree_files``) both read
names of the source, and an entry must hold the same whichever of them
read it: so what an entry holds of the source is decided here, once.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from typing import Any

from cbr.repo.objects.tree import EntryType, TreeEntry


class Names:
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


def read_xattrs(path: bytes | int, follow: bool = False) -> dict[str, bytes]:
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


def read_link(entry: TreeEntry, st: os.stat_result, path: bytes) -> None:
    """A symlink's target, and its access time after reading it: reading a
    link may set its access time (relatime), and no flag avoids that, so the
    backup records the time the source shows once the backup is done."""
    entry.target = os.readlink(path)
    after = os.lstat(path)
    if (after.st_ino, after.st_ctime_ns, after.st_mtime_ns) == (
            st.st_ino, st.st_ctime_ns, st.st_mtime_ns):
        entry.atime = after.st_atime_ns


def entry_of(name: bytes, st: os.stat_result, path: bytes, names: Names,
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
        user=names.user(st.st_uid), group=names.group(st.st_gid),
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
                read_link(entry, st, path)
        return entry, False
    if kind == EntryType.FILE:
        return entry, True
    if kind == EntryType.SYMLINK:
        read_link(entry, st, path)
    entry.xattrs = read_xattrs(path)
    return entry, False


def with_atime(doc: dict[str, Any], st: os.stat_result) -> dict[str, Any]:
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
