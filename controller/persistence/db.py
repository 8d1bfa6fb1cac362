"""Engine and sessions. SQLite under the data dir by default, PostgreSQL by URL.

One ``with db.begin() as session:`` per unit of work: a change is one
transaction, so no state is ever half-written.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker

CHECKPOINT_INTERVAL_S = 2.0


def sqlite_url(data_dir: Path) -> str:
    return f"sqlite:///{data_dir / 'controller.db'}"


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets readers proceed during a write; foreign keys are off by default.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    # Checkpoints (which fsync) run on Database's own thread, not inside
    # whichever commit crosses the threshold while holding the write lock.
    cur.execute("PRAGMA wal_autocheckpoint=0")
    cur.close()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        # A connection per API and hub worker thread: SQLite connections are
        # cheap, and a reader must never queue behind writers waiting for the
        # database's write lock just to get a connection.
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                               pool_size=48, max_overflow=16)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # SQLite has one writer at a time, and a writer that finds the file
        # locked polls with sleeps of up to 100 ms. The controller is SQLite's
        # only writer, so its writers queue on this lock instead and take the
        # file as soon as it is free. PostgreSQL locks rows; no lock there.
        self._writer = threading.Lock() if self.engine.dialect.name == "sqlite" else None
        self._stop = threading.Event()
        if self._writer is not None:
            threading.Thread(target=self._checkpoint, name="sqlite-checkpoint",
                             daemon=True).start()

    def after_commit(self, listener: Callable[[Session], None]) -> None:
        """Calls ``listener`` with each session of this database that commits
        (the notifier sends what a transaction queued without waiting to poll)."""
        event.listen(self._sessions, "after_commit", listener)

    def _checkpoint(self) -> None:
        """Copies the WAL into the database every few seconds (PASSIVE: never
        waits for readers or writers), keeping the WAL and reads small."""
        while not self._stop.wait(CHECKPOINT_INTERVAL_S):
            try:
                with self.engine.connect() as conn:
                    conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
            except Exception:  # a busy or closing database: the next round retries
                continue

    @contextmanager
    def begin(self) -> Iterator[Session]:
        """A session in one transaction, committed on success, rolled back on error."""
        if self._writer is None:
            with self._sessions.begin() as session:
                yield session
            return
        with self._writer, self._sessions.begin() as session:
            yield session

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A plain connection in one transaction, for read paths.

        Core statements on a connection skip the ORM's per-statement and
        per-row work (about 3x cheaper per query); every List and Get of the
        API reads this way. Writes go through ``begin()`` and the models.
        """
        with self.engine.begin() as conn:
            yield conn

    def ping(self) -> None:
        """Raises unless the database answers a query now (the health probe)."""
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def dispose(self) -> None:
        self._stop.set()
        self.engine.dispose()
