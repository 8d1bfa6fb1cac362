"""Writer and prune locks (``docs/storage-format.md`` section 12).

A lock is a small clear JSON object ``locks/<lock-id>``, rewritten every
``LOCK_REFRESH`` by a thread while its holder works. Staleness is judged by
the object's mtime against the storage's own clock (the mtime of an object
the reader has just written), so clock skew between hosts does not matter.
Prune relies on these: it never deletes a pack while a lock that was live
at its mark is still live, so a holder that cannot refresh must stop before
prune could think it gone (:meth:`Lock.check`).

This module owns the lock objects and the one-prune-at-a-time rule. It must
not decide what a lock protects; prune does.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from cbr.clock import utc_now
from cbr.repo import layout
from cbr.repo.errors import RepoError
from cbr.storage import Backend, ObjectNotFound, StorageError

LOCK_REFRESH = dt.timedelta(minutes=5)
"""How often a holder rewrites its lock."""
LOCK_STALE = dt.timedelta(minutes=30)
"""A lock not rewritten for this long (storage clock) counts as gone."""
KINDS = ("backup", "import", "restore", "verify", "prune")
_LOCK_ID = re.compile(r"[0-9a-f]{32}")
_PROBE = "clock-"

Clock = Callable[[], float]
"""Monotonic seconds (``time.monotonic``); injectable so tests need not sleep."""


class LockLost(RepoError):
    """The lock could not be refreshed for half the stale time; the holder must
    not write a manifest (prune may already treat it as gone)."""


class LockConflict(RepoError):
    """Another live prune holds the vault."""


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def _process_start(pid: int) -> str:
    """Field 22 of /proc/<pid>/stat (start time in ticks since boot): with the
    pid it names one process, though pids are reused. "" when none runs."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
    except OSError:
        return ""
    # The command name (field 2) may hold spaces and parentheses; fields
    # after its closing parenthesis start with field 3.
    fields = stat.rpartition(")")[2].split()
    return fields[19] if len(fields) > 19 else ""


_HOST = socket.gethostname()
_BOOT_ID = _boot_id()


@dataclass(frozen=True)
class LockInfo:
    """One lock as a reader sees it: its id, kind, storage mtime and document."""

    lock_id: str
    kind: str
    mtime: dt.datetime
    doc: dict[str, Any]

    def is_stale(self, now: dt.datetime, stale: dt.timedelta = LOCK_STALE) -> bool:
        """Whether the holder has not refreshed for ``stale`` (``now`` on the storage's
        clock), or is known to be dead (:meth:`holder_dead`)."""
        return now - self.mtime >= stale or self.holder_dead()

    def holder_dead(self) -> bool:
        """Whether the holder is a process of this host that no longer runs
        (storage format section 12). Only this host can tell; elsewhere, age."""
        doc = self.doc
        if doc.get("host") != _HOST or not _BOOT_ID:
            return False
        if doc.get("boot_id") and doc.get("boot_id") != _BOOT_ID:
            return True  # this host rebooted since the lock was written
        pid = doc.get("pid")
        if not isinstance(pid, int) or pid <= 0:
            return False
        running = _process_start(pid)
        if not running:
            return True
        wanted = str(doc.get("pid_start", ""))
        return bool(doc.get("boot_id")) and bool(wanted) and running != wanted


def storage_now(backend: Backend) -> dt.datetime:
    """The storage's clock: the mtime of a probe object written just now.

    A lock holder has a cheaper probe, its own lock (:meth:`Lock.storage_time`).
    """
    name = layout.LOCKS + _PROBE + secrets.token_hex(8)
    backend.put(name, b"{}")
    try:
        return backend.stat(name).mtime
    finally:
        with suppress(StorageError):
            backend.delete(name)


def is_lock_name(name: str) -> bool:
    """A lock's or a clock probe's name (section 12)."""
    rest = name[len(layout.LOCKS):] if name.startswith(layout.LOCKS) else ""
    return bool(_LOCK_ID.fullmatch(rest)) or (
        rest.startswith(_PROBE) and all(c in "0123456789abcdef" for c in rest[len(_PROBE):])
        and len(rest) > len(_PROBE))


def list_locks(backend: Backend) -> list[LockInfo]:
    """Every lock in ``locks/`` (probes and foreign names skipped; a lock
    deleted while listing is left out)."""
    out = []
    for info in backend.list(layout.LOCKS):
        lock_id = info.name[len(layout.LOCKS):]
        if not _LOCK_ID.fullmatch(lock_id):
            continue
        try:
            doc = json.loads(backend.get(info.name))
        except ObjectNotFound:
            continue
        except ValueError:
            doc = {}  # torn or foreign: still a lock until it goes stale
        if not isinstance(doc, dict):
            doc = {}
        out.append(LockInfo(lock_id, str(doc.get("kind", "")), info.mtime, doc))
    return out


def live_locks(backend: Backend, *, stale_after: dt.timedelta = LOCK_STALE,
               now: dt.datetime | None = None) -> list[LockInfo]:
    """Locks refreshed within ``stale_after`` of ``now`` (default: the storage's clock)."""
    when = now if now is not None else storage_now(backend)
    return [lock for lock in list_locks(backend) if not lock.is_stale(when, stale_after)]


class Lock:
    """One held lock, refreshed by a daemon thread until released.

    Use :meth:`acquire` (a context manager) or ``with Lock(...).start():``.
    Times are injectable: ``refresh`` and ``stale`` set the protocol's
    intervals and ``clock`` is the monotonic clock :meth:`check` measures with.
    """

    def __init__(self, backend: Backend, kind: str, task_id: str = "", *,
                 refresh: dt.timedelta = LOCK_REFRESH, stale: dt.timedelta = LOCK_STALE,
                 clock: Clock = time.monotonic) -> None:
        if kind not in KINDS:
            raise ValueError(f"lock kind {kind!r} is not one of {KINDS}")
        if refresh >= stale / 2:
            raise ValueError("a lock must be refreshed well within half its stale time")
        self.backend = backend
        self.kind = kind
        self.task_id = task_id
        self.lock_id = secrets.token_hex(16)
        self.name = layout.LOCKS + self.lock_id
        self.created_at = utc_now()
        self._doc = json.dumps({
            "kind": kind, "host": _HOST, "pid": os.getpid(), "task_id": task_id,
            "created_at": self.created_at.isoformat().replace("+00:00", "Z"),
            "boot_id": _BOOT_ID, "pid_start": _process_start(os.getpid())},
            sort_keys=True).encode()
        self._refresh = refresh
        self._stale = stale
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._state = threading.Lock()
        self._last_ok = clock()
        self._lost = False

    # -- holding --------------------------------------------------------------------------

    def start(self) -> Lock:
        """Writes the lock and starts refreshing it."""
        self.backend.put(self.name, self._doc)
        with self._state:
            self._last_ok = self._clock()
        self._thread = threading.Thread(target=self._loop, name=f"lock-{self.kind}",
                                        daemon=True)
        self._thread.start()
        return self

    def refresh(self) -> None:
        """Rewrites the lock now. A success after a gap of half the stale time
        does not revive it: prune may have swept meanwhile, so lost is sticky."""
        started = self._clock()
        self.backend.put(self.name, self._doc)
        with self._state:
            if started - self._last_ok >= self._stale / 2 / dt.timedelta(seconds=1):
                self._lost = True
            self._last_ok = self._clock()

    def _loop(self) -> None:
        wait = self._refresh.total_seconds()
        while not self._stop.wait(wait):
            try:
                self.refresh()
                wait = self._refresh.total_seconds()
            except StorageError:
                wait = self._refresh.total_seconds() / 4  # try again sooner

    def storage_time(self) -> dt.datetime:
        """The storage's clock, read by rewriting this lock (which also refreshes it)."""
        self.refresh()
        return self.backend.stat(self.name).mtime

    def check(self) -> None:
        """Raises :class:`LockLost` when the lock has gone unrefreshed for half
        the stale time. Writers call it before writing a manifest."""
        with self._state:
            gap = self._clock() - self._last_ok
            if gap >= self._stale / 2 / dt.timedelta(seconds=1):
                self._lost = True
            lost = self._lost
        if lost:
            raise LockLost(f"lock {self.lock_id} ({self.kind}) was not refreshed for "
                           f"{self._stale / 2}; prune may treat it as gone, refusing to "
                           "write on")

    def release(self) -> None:
        """Stops refreshing and deletes the lock (if that fails, it goes stale)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)
        with suppress(StorageError):
            self.backend.delete(self.name)

    def __enter__(self) -> Lock:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

    # -- taking ---------------------------------------------------------------------------

    @classmethod
    @contextmanager
    def acquire(cls, backend: Backend, *, kind: str, task_id: str = "",
                refresh: dt.timedelta = LOCK_REFRESH, stale: dt.timedelta = LOCK_STALE,
                clock: Clock = time.monotonic) -> Iterator[Lock]:
        """Holds a lock of ``kind`` for the ``with`` block.

        A prune lock is exclusive: refused (:class:`LockConflict`) if another
        live prune lock exists before ours is written, and given back if one
        exists after (two prunes racing both back off; neither deletes).
        """
        lock = cls(backend, kind, task_id, refresh=refresh, stale=stale, clock=clock)
        if kind == "prune":
            _refuse_other_prunes(backend, stale, storage_now(backend), "")
        lock.start()
        try:
            if kind == "prune":
                _refuse_other_prunes(backend, stale, lock.storage_time(), lock.lock_id)
            yield lock
        finally:
            lock.release()


def _refuse_other_prunes(backend: Backend, stale: dt.timedelta, now: dt.datetime,
                         own: str) -> None:
    for dead in list_locks(backend):
        if dead.kind == "prune" and dead.lock_id != own and dead.holder_dead():
            # Its holder was killed (a controller restarted mid-prune): the
            # prune it ran is this one's to finish; sweeps are idempotent.
            with suppress(StorageError):
                backend.delete(layout.LOCKS + dead.lock_id)
    others = [x for x in live_locks(backend, stale_after=stale, now=now)
              if x.kind == "prune" and x.lock_id != own]
    if others:
        raise LockConflict(f"another prune holds this vault (lock {others[0].lock_id}, "
                           f"host {others[0].doc.get('host', '?')}); try again later")
