"""Reading a protected tree without changing it.

A backup records each entry's access time, and a change journal does not
see reads: so whatever the agent reads of a protected tree (the backup's
walk, the inventory's size count) must not set access times, or the next
journal incremental records a time the source no longer shows. Files and
directories are opened with ``O_NOATIME`` (allowed to their owner and to
root, which the agent is; others fall back to a plain open).
"""

from __future__ import annotations

import os

O_NOATIME = getattr(os, "O_NOATIME", 0)


def open_quietly(path: bytes | str, flags: int) -> int:
    """``os.open`` with ``O_NOATIME`` where this process may use it."""
    try:
        return os.open(path, flags | O_NOATIME)
    except PermissionError:
        return os.open(path, flags)


def list_dir(path: bytes | str) -> list[tuple[bytes, os.stat_result | OSError]]:
    """A directory's entries, sorted by name, with their ``lstat`` (or why it
    failed), listed without touching the directory's access time. Listed
    through a descriptor, which gives names as str: they are encoded back
    to the bytes they were."""
    fd = open_quietly(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        out: list[tuple[bytes, os.stat_result | OSError]] = []
        with os.scandir(fd) as it:
            for d in it:
                try:
                    out.append((os.fsencode(d.name), d.stat(follow_symlinks=False)))
                except OSError as exc:
                    out.append((os.fsencode(d.name), exc))
        out.sort(key=lambda p: p[0])
        return out
    finally:
        os.close(fd)
