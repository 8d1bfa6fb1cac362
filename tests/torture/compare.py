"""Every entry of two trees, compared as a restore must reproduce them.

The oracle of the torture test: type, content, mode, owner, access and
modification times in ns, xattrs, symlink targets, device numbers, and
which names share an inode (hard-link groups inside the tree), the root
included. Only what no restore can or should reproduce is left out: ctime,
inode numbers, link counts to names outside the tree, a directory's size.

It reads without disturbing what it reads: directories and files are opened
with ``O_NOATIME`` and every ``lstat`` is taken before the entry is read.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

_O_NOATIME = getattr(os, "O_NOATIME", 0)


def _open(path: str, flags: int, dir_fd: int | None = None) -> int:
    try:
        return os.open(path, flags | _O_NOATIME, dir_fd=dir_fd)
    except PermissionError:
        return os.open(path, flags, dir_fd=dir_fd)


def _xattrs(path: str) -> dict[str, bytes]:
    try:
        return {k: os.getxattr(path, k, follow_symlinks=False)
                for k in os.listxattr(path, follow_symlinks=False)}
    except OSError:
        return {}


def _content(dir_fd: int | None, name: str) -> str:
    fd = _open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd)
    h = hashlib.sha256()
    try:
        while block := os.read(fd, 1 << 20):
            h.update(block)
    finally:
        os.close(fd)
    return h.hexdigest()


def describe(root: Path, skip: Iterable[str] = ()) -> tuple[dict[str, dict[str, Any]],
                                                            set[frozenset[str]]]:
    """Every entry below ``root`` (and "/" for the root itself) and the
    hard-link groups; entries in ``skip`` keep only their type."""
    skipped = set(skip)
    entries: dict[str, dict[str, Any]] = {}
    inodes: dict[tuple[int, int], list[str]] = {}

    def entry(st: os.stat_result, full: str) -> dict[str, Any]:
        kind = stat.S_IFMT(st.st_mode)
        out: dict[str, Any] = {
            "type": kind, "mode": stat.S_IMODE(st.st_mode), "uid": st.st_uid,
            "gid": st.st_gid, "mtime": st.st_mtime_ns, "atime": st.st_atime_ns}
        if not stat.S_ISLNK(st.st_mode):
            out["xattrs"] = _xattrs(full)
        else:
            del out["mode"]
        if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            out["rdev"] = st.st_rdev
        return out

    root_st = os.lstat(root)
    entries["/"] = entry(root_st, str(root))
    stack = [("", str(root))]
    while stack:
        rel, full = stack.pop()
        fd = _open(full, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            with os.scandir(fd) as it:
                names = sorted(d.name for d in it)
            for name in names:
                path = f"{rel}/{name}" if rel else name
                child = f"{full}/{name}"
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if path in skipped:
                    entries[path] = {"type": stat.S_IFMT(st.st_mode), "skipped": True}
                    continue
                e = entries[path] = entry(st, child)
                if stat.S_ISREG(st.st_mode):
                    e["size"] = st.st_size
                    e["sha256"] = _content(fd, name)
                    if st.st_nlink > 1:
                        inodes.setdefault((st.st_dev, st.st_ino), []).append(path)
                elif stat.S_ISLNK(st.st_mode):
                    e["target"] = os.readlink(name, dir_fd=fd)
                elif stat.S_ISDIR(st.st_mode):
                    stack.append((path, child))
        finally:
            os.close(fd)
    groups = {frozenset(names) for names in inodes.values() if len(names) > 1}
    return entries, groups


def differences(source: Path, restored: Path, skip: Iterable[str] = ()) -> list[str]:
    """What differs, one line each (empty: identical)."""
    skip = list(skip)
    want, want_groups = describe(source, skip)
    got, got_groups = describe(restored, skip)
    out = []
    for path in sorted(want.keys() | got.keys()):
        a, b = want.get(path), got.get(path)
        if a is None:
            out.append(f"{path}: restored but not in the source")
        elif b is None:
            out.append(f"{path}: in the source, not restored")
        elif a != b:
            fields = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
            out.append(f"{path}: " + ", ".join(
                f"{k} {_short(a.get(k))} != {_short(b.get(k))}" for k in fields))
    if want_groups != got_groups:
        out.append(f"hard-link groups differ: source {sorted(map(sorted, want_groups))}, "
                   f"restored {sorted(map(sorted, got_groups))}")
    return out


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) < 60 else text[:57] + "..."


def walk(root: Path) -> list[tuple[str, os.stat_result]]:
    """Every entry below ``root`` (relative path, lstat), listed as
    :func:`describe` lists: without touching access times."""
    out: list[tuple[str, os.stat_result]] = []
    stack = [("", str(root))]
    while stack:
        rel, full = stack.pop()
        try:
            fd = _open(full, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            with os.scandir(fd) as it:
                names = sorted(d.name for d in it)
            for name in names:
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except OSError:
                    continue
                path = f"{rel}/{name}" if rel else name
                out.append((path, st))
                if stat.S_ISDIR(st.st_mode):
                    stack.append((path, f"{full}/{name}"))
        finally:
            os.close(fd)
    return out


def file_digest(path: Path) -> str | None:
    """The content's SHA-256, read without touching its access time; None
    when it cannot be read (gone)."""
    try:
        return _content(None, str(path))
    except OSError:
        return None
