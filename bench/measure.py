"""What the data benchmarks measure and check, and how a run fails.

Shared by ``scripts/bench data`` and ``scripts/bench replication``: bytes on
disk, a disk image's hash, and the tree comparison that makes a benchmark
stop on wrong data rather than report numbers about it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import blake3


class BenchFailed(Exception):
    """A step failed or restored wrong data: the numbers would mean nothing."""


def log(text: str) -> None:
    print(text, flush=True)


def du(path: Path) -> int:
    """Bytes allocated on disk, as ``du`` counts them (sparse files count
    what they hold, not their length)."""
    total = 0
    for p in path.rglob("*"):
        st = p.lstat()
        if stat.S_ISREG(st.st_mode):
            total += st.st_blocks * 512
    return total


def file_hash(path: Path) -> str:
    """Read, not mmap'd: a 2 GiB mapping would swell this process, and a
    worker spawned afterwards could inherit that peak in its ru_maxrss."""
    h = blake3.blake3(max_threads=blake3.blake3.AUTO)
    with open(path, "rb") as fh:
        while block := fh.read(16 << 20):
            h.update(block)
    return h.hexdigest()


def _entries(root: Path) -> dict[str, os.stat_result]:
    found: dict[str, os.stat_result] = {}
    stack = [root]
    while stack:
        here = stack.pop()
        with os.scandir(here) as listing:
            for entry in listing:
                st = entry.stat(follow_symlinks=False)
                found[os.path.relpath(entry.path, root)] = st
                if stat.S_ISDIR(st.st_mode):
                    stack.append(Path(entry.path))
    return found


def _same_content(a: Path, b: Path) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True


def tree_differences(source: Path, restored: Path, limit: int = 10) -> list[str]:
    """What differs between two trees: names, types, permission bits, symlink
    targets, file contents (never following links); empty when identical."""
    a, b = _entries(source), _entries(restored)
    diffs = [f"missing {p}" for p in sorted(a.keys() - b.keys())]
    diffs += [f"extra {p}" for p in sorted(b.keys() - a.keys())]
    for rel in sorted(a.keys() & b.keys()):
        if len(diffs) >= limit:
            break
        sa, sb = a[rel], b[rel]
        if stat.S_IFMT(sa.st_mode) != stat.S_IFMT(sb.st_mode):
            diffs.append(f"type of {rel}")
        elif stat.S_ISLNK(sa.st_mode):
            if os.readlink(source / rel) != os.readlink(restored / rel):
                diffs.append(f"link target of {rel}")
        elif stat.S_IMODE(sa.st_mode) != stat.S_IMODE(sb.st_mode):
            diffs.append(f"mode of {rel}: {sa.st_mode:o} != {sb.st_mode:o}")
        elif stat.S_ISREG(sa.st_mode) and (sa.st_size != sb.st_size or not _same_content(
                source / rel, restored / rel)):
            diffs.append(f"content of {rel}")
    return diffs[:limit]
