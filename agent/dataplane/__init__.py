"""The agent's data plane: reading disks and trees into a vault, and back.

Modules (each a library over :class:`cbr.repo.Repository`; none talks to
the controller, the command layer in ``agent.commands`` does):

- ``snapshot``: point-in-time copies of a server's disks (reflink where the
  filesystem has it) and the changed ranges between two of them (FIEMAP).
- ``disk``: backing a disk up into a disk map, and restoring one.
- ``tree``: a stored tree, read: listing a backup, finding a path in it,
  its sizes; ``tree_backup`` (the walk), ``tree_files`` (file contents) and
  ``tree_entries`` (what each name records): backing a directory tree up
  into tree blobs; ``tree_restore``: restoring one (never writing outside
  the target).
- ``changes``: the change journal of a tree (fanotify, through
  ``fanotify``), its answer ``changed_dirs``, the agent's watches in
  ``watches``; ``listing``: reading the source without touching its access
  times.

Every long operation takes a :class:`Progress`, which the command layer
reads to report bytes and percent while the operation runs.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from cbr import errors
from cbr.repo.objects.manifest import DiskContent, TreeContent


class Progress:
    """Counters a running backup or restore updates from any thread.

    ``total`` is the number of bytes the operation expects to scan (a disk's
    size, a tree's byte count when known, 0 when unknown). ``scanned`` counts
    logical bytes examined (holes included), ``read`` bytes actually read
    from the source, ``sent`` bytes uploaded to storage (after compression),
    ``new`` plaintext bytes of chunks the vault did not have.
    """

    def __init__(self, total: int = 0, cancelled: threading.Event | None = None) -> None:
        self._lock = threading.Lock()
        self.total = total
        self.scanned = 0
        self.read = 0
        self.sent = 0
        self.new = 0
        # Set when the task is cancelled (CommandContext.cancelled); the
        # engines check it at each chunk, file or directory and raise Cancelled.
        self.cancelled = cancelled if cancelled is not None else threading.Event()

    def add(self, *, scanned: int = 0, read: int = 0, sent: int = 0, new: int = 0) -> None:
        with self._lock:
            self.scanned += scanned
            self.read += read
            self.sent += sent
            self.new += new

    def set_total(self, total: int) -> None:
        with self._lock:
            self.total = total

    def percent(self) -> int:
        """0..99 while running (100 is reported only when the task ends)."""
        with self._lock:
            if self.total <= 0:
                return 0
            return max(0, min(99, self.scanned * 100 // self.total))

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {"bytes_total": self.total, "bytes_scanned": self.scanned,
                    "bytes_read": self.read, "bytes_sent": self.sent, "bytes_new": self.new}


class DataplaneError(Exception):
    """A backup or restore cannot go on; the message says what and where.

    ``code`` is the CBR error code the controller reports for it.
    """

    code = errors.InternalError.code


class Cancelled(DataplaneError):
    """The operation was asked to stop (``Progress.cancelled`` was set)."""

    code = errors.TaskCancelled.code


class SourceUnreadable(DataplaneError):
    """The disk or tree to back up cannot be opened or read."""


class TargetTooSmall(DataplaneError):
    """A restore target is smaller than the backed-up disk (the reference's 2001)."""

    code = errors.RestoreTargetTooSmall.code


class UnsafeTarget(DataplaneError):
    """A restore would write outside its target, or onto something it must not replace."""

    code = errors.UnsafeRestoreTarget.code


@dataclass
class BackupResult:
    """What one disk or tree backup produced, for its manifest.

    ``stats`` holds at least ``bytes_scanned``, ``bytes_read``, ``bytes_sent``,
    ``bytes_new`` and, for disks, ``blocks`` (stored blocks) and
    ``blocks_read``; for trees, ``files``, ``dirs``, ``files_unchanged``.
    ``warnings`` are short lines a person can act on (a vanished file, a file
    that changed while read).
    """

    content: DiskContent | TreeContent
    stats: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    # Trees: directories a change journal must list again at the next backup
    # (agent.dataplane.changes): they hold files with several links, or
    # something in them could not be read.
    recheck_dirs: list[tuple[bytes, ...]] = field(default_factory=list)


@dataclass
class RestoreResult:
    stats: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
