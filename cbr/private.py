"""Files only their owner may read: what a backup system keeps is the data.

A catalog, a key, a certificate or a pack of an unencrypted vault read by
another user of the host is a leak, so the controller and agents create their
directories 0700 and files 0600, and at start they close up what an older
version or an operator left open, saying so in the log.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterable
from pathlib import Path

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def close_up(path: Path, log: logging.Logger) -> bool:
    """Takes group and other permissions off ``path`` (never following a
    symlink); True when it had to."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(st.st_mode):
        return False
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077 == 0:
        return False
    os.chmod(path, mode & ~0o077)
    log.warning("%s was readable by other users (mode %04o); made it %04o", path, mode,
                mode & ~0o077)
    return True


def close_up_tree(root: Path, log: logging.Logger) -> int:
    """``close_up`` on ``root`` and everything below it; only for directories
    the process owns whole (a CA directory, a journal), never an operator's
    directory; returns how many it changed."""
    changed = int(close_up(root, log))
    for directory, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            changed += close_up(Path(directory) / name, log)
    return changed


def close_up_own(directory: Path, names: Iterable[str], trees: Iterable[str],
                 log: logging.Logger) -> int:
    """Closes up ``directory``, the files ``names`` in it, and the subtrees
    ``trees``: what a process keeps in a directory an operator chose, which
    may hold other things (so it is never walked whole)."""
    changed = int(close_up(directory, log))
    changed += sum(close_up(directory / name, log) for name in names)
    changed += sum(close_up_tree(directory / name, log) for name in trees
                   if (directory / name).is_dir())
    return changed
