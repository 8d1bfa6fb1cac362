"""Point-in-time copies of a server's disks, and what changed between two of them.

Where a disk image lives on a filesystem with reflink (XFS ``reflink=1``,
Btrfs), the snapshot is a reflink copy (``FICLONE``): instant, and sharing
every extent with the disk until one of them is written. All of a server's
disks are copied inside one freeze (pre hook, copies, post hook), so the set
is crash-consistent and the freeze lasts milliseconds.

The latest snapshot of each disk is kept after a successful backup, named
after that backup. The next backup of the disk compares the kept snapshot
with the new one through ``FIEMAP``: a range both map to the same physical
extent was not written since, so only the other ranges are read. That is
exact changed-block tracking without a kernel driver.

Elsewhere (ext4, block devices) no copy is made: the live disk is read, and
with hooks the freeze lasts until the read ends (``release``), which is
correct but not short; the backup says which kind it got.
"""

from __future__ import annotations

import bisect
import contextlib
import fcntl
import hashlib
import itertools
import logging
import os
import stat
import struct
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from agent.dataplane import DataplaneError

log = logging.getLogger("cbr.agent.snapshot")

FICLONE = 0x40049409
FS_IOC_FIEMAP = 0xC020660B
FIEMAP_FLAG_SYNC = 0x1
FIEMAP_EXTENT_LAST = 0x1
# Extents whose placement says nothing reliable about their content.
FIEMAP_EXTENT_UNKNOWN = 0x2
FIEMAP_EXTENT_DELALLOC = 0x4
FIEMAP_EXTENT_UNWRITTEN = 0x800
_UNRELIABLE = FIEMAP_EXTENT_UNKNOWN | FIEMAP_EXTENT_DELALLOC
_HEADER = struct.Struct("=QQIIII")
_EXTENT = struct.Struct("=QQQQQIIII")
_BATCH = 512

SNAPSHOT_DIR = ".cbr-snapshots"
REFLINK, LIVE = "reflink", "live"


class HookFailed(DataplaneError):
    """A pre or post snapshot hook failed or timed out."""


Extent = tuple[int, int, int, int]  # logical, length, physical, flags


def fiemap(path: Path) -> list[Extent]:
    """The file's extents (logical, length, physical, flags), synced first."""
    out: list[Extent] = []
    start = 0
    with open(path, "rb") as fh:
        while True:
            buf = bytearray(_HEADER.size + _EXTENT.size * _BATCH)
            _HEADER.pack_into(buf, 0, start, 2**64 - 1 - start, FIEMAP_FLAG_SYNC, 0, _BATCH, 0)
            fcntl.ioctl(fh.fileno(), FS_IOC_FIEMAP, buf)
            mapped = _HEADER.unpack_from(buf, 0)[3]
            if mapped == 0:
                return out
            last = False
            for i in range(mapped):
                logical, physical, length, _r1, _r2, flags, _a, _b, _c = _EXTENT.unpack_from(
                    buf, _HEADER.size + i * _EXTENT.size)
                out.append((logical, length, physical, flags))
                last = bool(flags & FIEMAP_EXTENT_LAST)
            if last:
                return out
            start = out[-1][0] + out[-1][1]


def changed_ranges(old: Sequence[Extent], new: Sequence[Extent], size: int
                   ) -> list[tuple[int, int]]:
    """Byte ranges ``[start, end)`` of ``new`` whose content may differ from ``old``.

    A range is unchanged when both files map it to the same physical bytes
    (shared extents of a reflink copy), or when both have a hole there.
    """
    def index(extents: Sequence[Extent]) -> tuple[list[int], Sequence[Extent]]:
        return [e[0] for e in extents], extents

    old_starts, old_ext = index(old)
    new_starts, new_ext = index(new)
    points = {0, size}
    for e in (*old, *new):
        points.add(min(size, e[0]))
        points.add(min(size, e[0] + e[1]))
    bounds = sorted(p for p in points if 0 <= p <= size)

    def at(starts: list[int], extents: Sequence[Extent], offset: int) -> Extent | None:
        i = bisect.bisect_right(starts, offset) - 1
        if i >= 0 and extents[i][0] <= offset < extents[i][0] + extents[i][1]:
            return extents[i]
        return None

    out: list[tuple[int, int]] = []
    for a, b in itertools.pairwise(bounds):
        if a >= b:
            continue
        o, n = at(old_starts, old_ext, a), at(new_starts, new_ext, a)
        if o is None and n is None:
            continue
        same = (o is not None and n is not None
                and not (o[3] | n[3]) & _UNRELIABLE
                and (o[3] & FIEMAP_EXTENT_UNWRITTEN) == (n[3] & FIEMAP_EXTENT_UNWRITTEN)
                and o[2] - o[0] == n[2] - n[0])
        if same:
            continue
        if out and out[-1][1] == a:
            out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


def reflink(src: Path, dst: Path) -> bool:
    """Clones src to dst (same filesystem); False where reflink is unsupported."""
    try:
        with open(src, "rb") as s, open(dst, "wb") as d:
            fcntl.ioctl(d.fileno(), FICLONE, s.fileno())
        return True
    except OSError:
        with contextlib.suppress(FileNotFoundError):
            dst.unlink()
        return False


def _run_hook(argv: Sequence[str] | None, timeout: float, which: str) -> None:
    if not argv:
        return
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise HookFailed(f"{which} hook {argv[0]} failed: {exc}") from exc
    if done.returncode != 0:
        raise HookFailed(f"{which} hook {argv[0]} exited {done.returncode}: "
                         f"{(done.stderr or done.stdout).strip()[-300:]}")


class SnapshotSet:
    """The snapshots of one backup run; use as a context manager.

    Leaving the block discards uncommitted new snapshots (a failed backup
    keeps the previous kept snapshot, whose backup is still the parent) and
    runs a pending post hook.
    """

    def __init__(self, post_hook: Sequence[str] | None, hook_timeout: float) -> None:
        self._post_hook = list(post_hook or [])
        self._hook_timeout = hook_timeout
        self._post_pending = False
        self._frozen_at = 0.0
        self.freeze_seconds = 0.0
        self._live: dict[str, Path] = {}
        self._new: dict[str, Path] = {}
        self._dirs: dict[str, tuple[Path, str]] = {}

    def source(self, key: str) -> Path:
        return self._new.get(key) or self._live[key]

    def kind(self, key: str) -> str:
        return REFLINK if key in self._new else LIVE

    def _kept(self, key: str) -> list[Path]:
        directory, stem = self._dirs[key]
        return sorted(directory.glob(f"{stem}.kept-*"))

    def changed_ranges(self, key: str, parent_backup_id: str) -> list[tuple[int, int]] | None:
        """Ranges changed since the kept snapshot of ``parent_backup_id``, or
        None when there is none (the caller compares block hashes instead)."""
        if key not in self._new or not parent_backup_id:
            return None
        directory, stem = self._dirs[key]
        kept = directory / f"{stem}.kept-{parent_backup_id}"
        if not kept.exists():
            return None
        try:
            new = self._new[key]
            return changed_ranges(fiemap(kept), fiemap(new), os.stat(new).st_size)
        except OSError as exc:
            log.warning("FIEMAP failed on %s (%s); comparing block hashes instead", kept, exc)
            return None

    def commit(self, key: str, backup_id: str) -> None:
        """The new snapshot becomes the kept one for ``backup_id``; older ones go."""
        new = self._new.pop(key, None)
        if new is None:
            return
        directory, stem = self._dirs[key]
        old = self._kept(key)
        os.replace(new, directory / f"{stem}.kept-{backup_id}")
        for path in old:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def discard(self) -> None:
        for path in self._new.values():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self._new.clear()

    def _thaw(self) -> None:
        self.freeze_seconds = time.monotonic() - self._frozen_at
        self._post_pending = False
        _run_hook(self._post_hook, self._hook_timeout, "post-snapshot")

    def release(self) -> None:
        """Runs the post hook if it still waits (live reads hold the freeze)."""
        if self._post_pending:
            self._thaw()

    def __enter__(self) -> SnapshotSet:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            self.release()
        finally:
            self.discard()


def _stem(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:24]


def take_snapshots(disks: Sequence[tuple[str, Path]], *, pre_hook: Sequence[str] | None = None,
                   post_hook: Sequence[str] | None = None, hook_timeout: float = 60.0
                   ) -> SnapshotSet:
    """Snapshots all ``(key, path)`` disks inside one freeze."""
    snaps = SnapshotSet(post_hook, hook_timeout)
    plans = []
    for key, path in disks:
        snaps._live[key] = path
        try:
            regular = stat.S_ISREG(os.stat(path).st_mode)
        except OSError as exc:
            raise DataplaneError(f"cannot read disk {path}: {exc}") from exc
        if regular:
            directory = path.parent / SNAPSHOT_DIR
            stem = _stem(key)
            snaps._dirs[key] = (directory, stem)
            plans.append((key, path, directory, stem))
        else:
            snaps._dirs[key] = (path.parent, _stem(key))
    for _key, _path, directory, stem in plans:
        with contextlib.suppress(OSError):
            directory.mkdir(mode=0o700, exist_ok=True)
            for stale in directory.glob(f"{stem}.new-*"):
                stale.unlink()
    _run_hook(pre_hook, hook_timeout, "pre-snapshot")
    snaps._frozen_at = time.monotonic()
    snaps._post_pending = True
    try:
        for key, path, directory, stem in plans:
            target = directory / f"{stem}.new-{os.getpid()}"
            if directory.is_dir() and reflink(path, target):
                snaps._new[key] = target
    except BaseException:
        snaps.discard()
        snaps.release()
        raise
    if len(snaps._new) == len(disks):
        snaps._thaw()  # every disk is a copy now: thaw at once
    return snaps
