"""Point-in-time copies of a server's disks, and what changed between two of them.

Public API::

    take_snapshots(disks: Sequence[tuple[str, Path]], *, pre_hook=None, post_hook=None,
                   hook_timeout=60.0) -> SnapshotSet
    SnapshotSet.source(key) -> Path          # what backup_disk reads
    SnapshotSet.kind(key) -> "reflink" | "live"
    SnapshotSet.changed_ranges(key, parent_backup_id) -> list[tuple[int, int]] | None
    SnapshotSet.kept_backup_id(key) -> str | None
    SnapshotSet.commit(key, backup_id)       # the new snapshot becomes the kept one
    SnapshotSet.discard()                    # drops uncommitted new snapshots
    SnapshotSet.release()                    # runs the post hook if still pending
    SnapshotSet.freeze_seconds               # pre hook done -> post hook started
    fiemap(path) -> Iterator[Extent];  changed_ranges(old, new, size) -> list[...]
    HookFailed (a DataplaneError)

``disks`` are ``(key, path)`` pairs; the key names a disk across backups
(the command layer passes the disk's local id). Use the set as a context
manager: leaving it discards what was not committed and runs a pending post
hook, whatever happened inside.

**Reflink.** Where a disk image lives on a filesystem with reflink (XFS
``reflink=1``, Btrfs), the snapshot is a reflink copy (``FICLONE``) in
``.cbr-snapshots/`` beside the disk: instant, and sharing every extent with
the disk until one of them is written. All of a server's disks are copied
in one step between the pre and post hooks, so the set is crash-consistent
and the freeze lasts milliseconds.

**Changed-block tracking.** After a successful backup the new snapshot is
kept, named after that backup (``<key hash>.kept-<backup id>``); older ones
are removed. The next backup compares the kept snapshot with its new one
through ``FIEMAP`` (``FIEMAP_FLAG_SYNC``): a logical range is unchanged iff
both files map it to the same physical bytes (or both have a hole there),
because a reflink filesystem never overwrites a shared extent in place.
Everything else (new placement, data that became a hole, a hole that became
data, extents whose placement says nothing, such as delayed allocation,
inline or encoded ones) is reported changed. That is exact changed-block
tracking with no kernel driver; a wrong parent or a missing kept snapshot
gives ``None`` and the caller falls back to comparing block hashes. The
kept snapshot costs the space of whatever the disk rewrote since.

**Elsewhere** (no reflink, block devices) no copy is made and the kind is
``live``: the disk itself is read. With hooks, the post hook then runs only
at :meth:`SnapshotSet.release` (after the read), so the freeze is as long as
the backup: correct, but not short, and ``freeze_seconds`` shows it.

**Hooks** are argv lists (no shell) run with a timeout; a hook that times
out is killed with its whole process group. The post hook runs exactly once
whenever the pre hook was started, even if the pre hook or the snapshot
failed, so a partial freeze is always undone.

This module must not read disk contents or touch the vault.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import re
import secrets
import signal
import stat
import struct
import subprocess
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import NamedTuple

from agent.dataplane import DataplaneError

log = logging.getLogger("cbr.agent.snapshot")

FICLONE = 0x40049409
FS_IOC_FIEMAP = 0xC020660B
FIEMAP_FLAG_SYNC = 0x1
FIEMAP_EXTENT_LAST = 0x1
FIEMAP_EXTENT_UNKNOWN = 0x2
FIEMAP_EXTENT_DELALLOC = 0x4
FIEMAP_EXTENT_ENCODED = 0x8
FIEMAP_EXTENT_NOT_ALIGNED = 0x100
FIEMAP_EXTENT_DATA_INLINE = 0x200
FIEMAP_EXTENT_DATA_TAIL = 0x400
FIEMAP_EXTENT_UNWRITTEN = 0x800
# Placement that says nothing reliable about content: never "unchanged".
_UNRELIABLE = (FIEMAP_EXTENT_UNKNOWN | FIEMAP_EXTENT_DELALLOC | FIEMAP_EXTENT_NOT_ALIGNED
               | FIEMAP_EXTENT_DATA_INLINE | FIEMAP_EXTENT_DATA_TAIL)
_HEADER = struct.Struct("=QQIIII")  # start, length, flags, mapped, count, reserved
_EXTENT = struct.Struct("=QQQQQIIII")  # logical, physical, length, 2 reserved, flags, 3 reserved
_BATCH = 512

SNAPSHOT_DIR = ".cbr-snapshots"
REFLINK, LIVE = "reflink", "live"
_NO_REFLINK = {errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS,
               errno.EBADF, errno.EPERM}
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class HookFailed(DataplaneError):
    """A pre or post snapshot hook failed or timed out."""


class Extent(NamedTuple):
    logical: int
    length: int
    physical: int
    flags: int

    @property
    def end(self) -> int:
        return self.logical + self.length


# -- FIEMAP -------------------------------------------------------------------------------------

def fiemap(path: Path) -> Iterator[Extent]:
    """The file's extents in logical order, dirty data synced first.

    Streams in batches so memory does not grow with a fragmented file.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        start = 0
        flags = FIEMAP_FLAG_SYNC
        buf = bytearray(_HEADER.size + _EXTENT.size * _BATCH)
        while True:
            buf[:] = bytes(len(buf))
            _HEADER.pack_into(buf, 0, start, 2**64 - 1 - start, flags, 0, _BATCH, 0)
            fcntl.ioctl(fd, FS_IOC_FIEMAP, buf)
            mapped = _HEADER.unpack_from(buf, 0)[3]
            if mapped == 0:
                return
            last: Extent | None = None
            for i in range(mapped):
                logical, physical, length, _r1, _r2, eflags, _a, _b, _c = _EXTENT.unpack_from(
                    buf, _HEADER.size + i * _EXTENT.size)
                last = Extent(logical, length, physical, eflags)
                yield last
            assert last is not None
            if last.flags & FIEMAP_EXTENT_LAST or last.end <= start:
                return
            start = last.end
            flags = 0  # synced once is enough
    finally:
        os.close(fd)


def _same_bytes(old: Extent, new: Extent) -> bool:
    """Whether two extents covering the same logical offset store it in the
    same physical place (so the content is the same)."""
    if (old.flags | new.flags) & _UNRELIABLE:
        return False
    if (old.flags ^ new.flags) & (FIEMAP_EXTENT_UNWRITTEN | FIEMAP_EXTENT_ENCODED):
        return False
    if (old.flags | new.flags) & FIEMAP_EXTENT_ENCODED:
        # Compressed extents report the start of the whole compressed run;
        # only identical references are known to hold identical bytes.
        return old == new
    return old.physical - old.logical == new.physical - new.logical


def changed_ranges(old: Iterable[Extent | tuple[int, int, int, int]],
                   new: Iterable[Extent | tuple[int, int, int, int]], size: int
                   ) -> list[tuple[int, int]]:
    """Byte ranges ``[start, end)`` below ``size`` whose content in ``new`` may
    differ from ``old``, merged where adjacent. Extents are
    ``(logical, length, physical, flags)`` in logical order, as FIEMAP gives."""
    olds = (Extent(*e) for e in old)
    news = (Extent(*e) for e in new)
    o, n = next(olds, None), next(news, None)
    out: list[tuple[int, int]] = []
    pos = 0
    while pos < size:
        while o is not None and o.end <= pos:
            o = next(olds, None)
        while n is not None and n.end <= pos:
            n = next(news, None)
        if o is None and n is None:
            break
        nxt = size
        for e in (o, n):
            if e is not None:
                nxt = min(nxt, e.logical if e.logical > pos else e.end)
        o_here = o is not None and o.logical <= pos
        n_here = n is not None and n.logical <= pos
        if o_here or n_here:
            same = (o is not None and n is not None and o_here and n_here
                    and _same_bytes(o, n))
            if not same:
                if out and out[-1][1] == pos:
                    out[-1] = (out[-1][0], nxt)
                else:
                    out.append((pos, nxt))
        pos = nxt
    return out


def reflink(src: Path, dst: Path) -> bool:
    """Clones ``src`` to a new ``dst`` on the same filesystem; False where the
    filesystem cannot (the caller then reads the live disk)."""
    try:
        dfd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        log.warning("cannot create snapshot %s (%s); reading the live disk", dst, exc)
        return False
    try:
        sfd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.ioctl(dfd, FICLONE, sfd)
        finally:
            os.close(sfd)
        return True
    except OSError as exc:
        if exc.errno not in _NO_REFLINK:
            log.warning("reflink of %s failed (%s); reading the live disk", src, exc)
        with contextlib.suppress(FileNotFoundError):
            dst.unlink()
        return False
    finally:
        os.close(dfd)


# -- hooks --------------------------------------------------------------------------------------

def _run_hook(argv: Sequence[str], timeout: float, which: str) -> None:
    """Runs one hook in its own process group; a timeout kills the whole group."""
    try:
        proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
    except OSError as exc:
        raise HookFailed(f"{which} hook {argv[0]} could not start: {exc}") from exc
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        try:
            proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:  # a daemonised child still holds the pipe
            proc.kill()
            proc.wait()
        raise HookFailed(f"{which} hook {argv[0]} did not finish within {timeout:g} s "
                         "and was killed") from None
    if proc.returncode != 0:
        tail = output.decode(errors="replace").strip()[-300:]
        raise HookFailed(f"{which} hook {argv[0]} exited {proc.returncode}"
                         + (f": {tail}" if tail else ""))


# -- snapshot sets ------------------------------------------------------------------------------

def _stem(key: str) -> str:
    """File-name-safe name of a disk key (keys are ids, not trusted as names)."""
    return hashlib.sha256(key.encode()).hexdigest()[:24]


def _kept_name(stem: str, backup_id: str) -> str:
    safe = backup_id if _SAFE_ID.match(backup_id) else \
        "h" + hashlib.sha256(backup_id.encode()).hexdigest()[:32]
    return f"{stem}.kept-{safe}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SnapshotSet:
    """The snapshots of one backup run (see the module docstring)."""

    def __init__(self, post_hook: Sequence[str] | None, hook_timeout: float) -> None:
        self._post_hook = list(post_hook or [])
        self._hook_timeout = hook_timeout
        self._post_pending = False
        self._frozen_at: float | None = None
        self.freeze_seconds = 0.0
        self._live: dict[str, Path] = {}
        self._new: dict[str, Path] = {}
        self._dirs: dict[str, tuple[Path, str]] = {}  # regular files only
        self._kinds: dict[str, str] = {}

    def source(self, key: str) -> Path:
        """What to read for this disk: its snapshot, or the disk itself."""
        return self._new.get(key) or self._live[key]

    def kind(self, key: str) -> str:
        """How this run saw the disk (it stays so after :meth:`commit`)."""
        return self._kinds.get(key, LIVE)

    def _kept(self, key: str) -> list[Path]:
        if key not in self._dirs:
            return []
        directory, stem = self._dirs[key]
        try:
            return sorted(p for p in directory.iterdir() if p.name.startswith(f"{stem}.kept-"))
        except OSError:
            return []

    def kept_backup_id(self, key: str) -> str | None:
        """The backup the kept snapshot of this disk belongs to, if any."""
        kept = self._kept(key)
        return kept[-1].name.split(".kept-", 1)[1] if kept else None

    def changed_ranges(self, key: str, parent_backup_id: str) -> list[tuple[int, int]] | None:
        """Byte ranges changed since the kept snapshot of ``parent_backup_id``,
        or None when there is no such snapshot (or FIEMAP cannot tell): the
        caller then compares block hashes instead."""
        if key not in self._new or not parent_backup_id:
            return None
        directory, stem = self._dirs[key]
        kept = directory / _kept_name(stem, parent_backup_id)
        new = self._new[key]
        try:
            if not kept.exists():
                return None
            size = os.stat(new).st_size
            return changed_ranges(fiemap(kept), fiemap(new), size)
        except OSError as exc:
            log.warning("FIEMAP failed on %s (%s); comparing block hashes instead", kept, exc)
            return None

    def commit(self, key: str, backup_id: str) -> None:
        """The new snapshot becomes the kept one of ``backup_id``; older ones go.

        Call it only once the backup's manifest is written: the kept
        snapshot must describe a backup that exists.
        """
        new = self._new.pop(key, None)
        if new is None:
            return
        directory, stem = self._dirs[key]
        target = directory / _kept_name(stem, backup_id)
        old = [p for p in self._kept(key) if p != target]
        os.replace(new, target)
        for path in old:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def discard(self) -> None:
        """Removes new snapshots not committed; kept ones stay (their backup is
        still the parent of the next one)."""
        for key, path in self._new.items():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            self._kinds.pop(key, None)
        self._new.clear()

    def _freeze(self) -> None:
        self._frozen_at = time.monotonic()
        self._post_pending = True

    def _thaw(self) -> None:
        if self._frozen_at is not None:
            self.freeze_seconds = time.monotonic() - self._frozen_at
        if not self._post_pending:
            return
        self._post_pending = False  # once, even if the hook fails
        if self._post_hook:
            _run_hook(self._post_hook, self._hook_timeout, "post-snapshot")

    def release(self) -> None:
        """Runs the post hook if it still waits (a live read held the freeze)."""
        if self._post_pending:
            self._thaw()

    def __enter__(self) -> SnapshotSet:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            self.release()
        except HookFailed as failed:
            if exc is None:
                raise
            log.error("%s (while failing: %s)", failed, exc)
        finally:
            self.discard()


def take_snapshots(disks: Sequence[tuple[str, Path]], *, pre_hook: Sequence[str] | None = None,
                   post_hook: Sequence[str] | None = None, hook_timeout: float = 60.0
                   ) -> SnapshotSet:
    """Snapshots all ``(key, path)`` disks in one step between the hooks.

    Raises :class:`HookFailed` when a hook fails (after running the post
    hook) and ``DataplaneError`` when a disk cannot be found.
    """
    snaps = SnapshotSet(post_hook, hook_timeout)
    plans: list[tuple[str, Path, Path, str]] = []
    for key, path in disks:
        try:
            mode = os.stat(path).st_mode
        except OSError as exc:
            raise DataplaneError(f"cannot read disk {path}: {exc}") from exc
        snaps._live[key] = path
        if stat.S_ISREG(mode):
            directory, stem = path.parent / SNAPSHOT_DIR, _stem(key)
            snaps._dirs[key] = (directory, stem)
            plans.append((key, path, directory, stem))
    made_dirs = []
    for _key, _path, directory, stem in plans:
        if not directory.exists():
            with contextlib.suppress(OSError):
                directory.mkdir(mode=0o700)
                made_dirs.append(directory)
        _remove_stale(directory, stem)
    if pre_hook:
        snaps._freeze()
        try:
            _run_hook(pre_hook, hook_timeout, "pre-snapshot")
        except HookFailed as failed:
            try:
                snaps._thaw()  # undo whatever part of the freeze took effect
            except HookFailed as also:
                raise HookFailed(f"{failed}; then {also}") from failed
            raise
    snaps._freeze()  # the freeze proper starts once the pre hook is done
    try:
        for key, path, directory, stem in plans:
            target = directory / f"{stem}.new-{os.getpid()}-{secrets.token_hex(4)}"
            if directory.is_dir() and reflink(path, target):
                snaps._new[key] = target
                snaps._kinds[key] = REFLINK
        if len(snaps._new) == len(disks):
            snaps._thaw()  # every disk is a copy now: thaw at once
    except BaseException:
        snaps.discard()
        with contextlib.suppress(HookFailed):
            snaps.release()
        raise
    finally:
        for directory in made_dirs:
            with contextlib.suppress(OSError):
                directory.rmdir()  # only if empty: no reflink here after all
    return snaps


def _remove_stale(directory: Path, stem: str) -> None:
    """Removes new snapshots left by agents that died mid-backup (never those of
    a live process, which may be another backup of this disk running now)."""
    try:
        names = [p for p in directory.iterdir() if p.name.startswith(f"{stem}.new-")]
    except OSError:
        return
    for path in names:
        pid_text = path.name[len(stem) + 5:].split("-", 1)[0]
        if pid_text.isdigit() and _pid_alive(int(pid_text)):
            continue
        with contextlib.suppress(OSError):
            path.unlink()
