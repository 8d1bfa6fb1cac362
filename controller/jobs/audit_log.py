"""Writes the audit trail in batches, off the calls it records, and forgets
records past their retention.

Why batches: a record per call in its own transaction would add a commit to
every change (and on SQLite, a turn at its one writer), which the API's
latency budget does not have. Records wait here at most ``FLUSH_EVERY_S``;
the controller flushes them when it stops and before any audit list it
serves, so a user reads their own calls at once. A controller killed with
SIGKILL loses at most that last fraction of a second of records; a database
that is down keeps them queued (up to ``MAX_PENDING``, then the oldest are
dropped with a count in the log, never blocking a call).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections import deque

from controller.app import App
from controller.services import audit

log = logging.getLogger("cbr.controller.audit")

FLUSH_EVERY_S = 0.25
PURGE_EVERY_S = 3600.0
MAX_PENDING = 100_000


class AuditLog:
    def __init__(self, app: App) -> None:
        self._app = app
        self._pending: deque[audit.Entry] = deque()
        self._lock = threading.Lock()
        self._flushing = threading.Lock()
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._dropped = 0
        self._next_purge = 0.0

    def record(self, entry: audit.Entry) -> None:
        """Queues one finished call (only the kept ones are ever written)."""
        if not entry.kept:
            return
        with self._lock:
            if len(self._pending) >= MAX_PENDING:
                self._pending.popleft()
                self._dropped += 1
            self._pending.append(entry)
            if self._thread is None and not self._stopped.is_set():
                self._thread = threading.Thread(target=self._run, name="audit-log",
                                                daemon=True)
                self._thread.start()

    def flush(self) -> None:
        """Writes everything queued so far, in one transaction; on a database
        error the records stay queued for the next try."""
        with self._flushing:
            with self._lock:
                batch = list(self._pending)
                self._pending.clear()
                dropped, self._dropped = self._dropped, 0
            if dropped:
                log.error("the audit trail dropped %d records: the database was unreachable "
                          "while more than %d waited", dropped, MAX_PENDING)
            if not batch:
                return
            try:
                with self._app.db.begin() as session:
                    audit.write(session, batch)
            except Exception as exc:
                log.warning("cannot write %d audit records yet: %s", len(batch), exc)
                with self._lock:
                    self._pending.extendleft(reversed(batch))

    def purge(self) -> int:
        days = self._app.config.audit_retention_days
        before = self._app.clock.now() - dt.timedelta(days=days)
        with self._app.db.begin() as session:
            return audit.purge(session, before)

    def _run(self) -> None:
        while not self._stopped.wait(FLUSH_EVERY_S):
            self.flush()
            now = time.monotonic()
            if now >= self._next_purge:
                self._next_purge = now + PURGE_EVERY_S
                try:
                    if gone := self.purge():
                        log.info("forgot %d audit records older than %d days", gone,
                                 self._app.config.audit_retention_days)
                except Exception as exc:
                    log.warning("cannot purge old audit records: %s", exc)

    def stop(self) -> None:
        """Flushes what is queued; later records are written by flush() only."""
        self._stopped.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=5)
        self.flush()
