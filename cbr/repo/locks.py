"""Writer and prune locks (``docs/storage-format.md`` section 12).

A lock is a small clear JSON object in ``locks/``, rewritten every
``LOCK_REFRESH`` by a thread while its holder works. Staleness is judged by
the object's mtime against the storage's own clock (the mtime of an object
the reader has just written), so clock skew between hosts does not matter.
Prune relies on these: it never deletes a pack while a lock that was live
at its mark is still live.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass

from cbr.repo import layout
from cbr.repo.errors import RepoError
from cbr.storage import Backend, ObjectNotFound, StorageError

LOCK_REFRESH = dt.timedelta(minutes=5)
LOCK_STALE = dt.timedelta(minutes=30)
KINDS = ("backup", "import", "restore", "verify", "prune")


class LockLost(RepoError):
    """The lock could not be refreshed for half the stale time; the holder must
    not write a manifest (prune may already treat it as gone)."""


class LockConflict(RepoError):
    """Another live prune holds the vault."""


@dataclass(frozen=True)
class LockInfo:
    lock_id: str
    kind: str
    mtime: dt.datetime
    doc: dict[str, object]


def storage_now(backend: Backend) -> dt.datetime:
    """The storage's clock: the mtime of an object written just now."""
    name = layout.LOCKS + "clock-" + secrets.token_hex(8)
    backend.put(name, b"{}")
    try:
        return backend.stat(name).mtime
    finally:
        with suppress(StorageError):
            backend.delete(name)


def list_locks(backend: Backend) -> list[LockInfo]:
    out = []
    for info in backend.list(layout.LOCKS):
        lock_id = info.name[len(layout.LOCKS):]
        if lock_id.startswith("clock-"):
            continue
        try:
            doc = json.loads(backend.get(info.name))
        except (ObjectNotFound, ValueError):
            continue
        out.append(LockInfo(lock_id, str(doc.get("kind", "")), info.mtime, doc))
    return out


def live_locks(backend: Backend, *, stale_after: dt.timedelta = LOCK_STALE) -> list[LockInfo]:
    now = storage_now(backend)
    return [lock for lock in list_locks(backend) if now - lock.mtime < stale_after]


class Lock:
    """One held lock, refreshed by a daemon thread until released."""

    def __init__(self, backend: Backend, kind: str, task_id: str = "", *,
                 refresh: dt.timedelta = LOCK_REFRESH, stale: dt.timedelta = LOCK_STALE) -> None:
        if kind not in KINDS:
            raise ValueError(f"lock kind {kind!r} is not one of {KINDS}")
        self.backend = backend
        self.kind = kind
        self.lock_id = secrets.token_hex(16)
        self.name = layout.LOCKS + self.lock_id
        self._doc = json.dumps({
            "kind": kind, "host": socket.gethostname(), "pid": os.getpid(), "task_id": task_id,
            "created_at": dt.datetime.now(dt.UTC).isoformat()}).encode()
        self._refresh = refresh
        self._stale = stale
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_refresh = dt.datetime.now(dt.UTC)
        self._failed_since: dt.datetime | None = None

    def _write(self) -> None:
        self.backend.put(self.name, self._doc)

    def start(self) -> Lock:
        self._write()
        self._last_refresh = dt.datetime.now(dt.UTC)
        self._thread = threading.Thread(target=self._loop, name=f"lock-{self.kind}",
                                        daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self._refresh.total_seconds()):
            try:
                self._write()
                self._last_refresh = dt.datetime.now(dt.UTC)
                self._failed_since = None
            except StorageError:
                self._failed_since = self._failed_since or dt.datetime.now(dt.UTC)

    def check(self) -> None:
        """Raises :class:`LockLost` when the lock has not been refreshed for
        half the stale time (writers call this before a manifest)."""
        if dt.datetime.now(dt.UTC) - self._last_refresh >= self._stale / 2:
            raise LockLost(f"lock {self.lock_id} ({self.kind}) was not refreshed for "
                           f"{self._stale / 2}; refusing to write on")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        with suppress(StorageError):  # if not, it goes stale
            self.backend.delete(self.name)

    @classmethod
    @contextmanager
    def acquire(cls, backend: Backend, *, kind: str, task_id: str = "",
                refresh: dt.timedelta = LOCK_REFRESH,
                stale: dt.timedelta = LOCK_STALE) -> Iterator[Lock]:
        lock = cls(backend, kind, task_id, refresh=refresh, stale=stale).start()
        try:
            if kind == "prune":
                others = [x for x in live_locks(backend, stale_after=stale)
                          if x.kind == "prune" and x.lock_id != lock.lock_id]
                if others:
                    raise LockConflict(f"another prune holds this vault (lock "
                                       f"{others[0].lock_id}); try again later")
            yield lock
        finally:
            lock.release()
