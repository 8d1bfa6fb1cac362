"""The SQLite database takes concurrent writers and keeps its WAL checkpointed."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path

from sqlalchemy import func, select

from controller.persistence import migrate
from controller.persistence.db import Database
from controller.persistence.models import Account
from tests.support.processes import wait_until


def test_concurrent_writers_all_land_without_lock_errors(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path}/c.db")
    migrate.upgrade(db.engine)
    now = dt.datetime.now(dt.UTC)
    failures: list[BaseException] = []

    def write(worker: int) -> None:
        try:
            for i in range(25):
                with db.begin() as s:
                    s.add(Account(name=f"w{worker}-{i}", created_at=now))
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    with db.read() as conn:
        assert conn.scalar(select(func.count()).select_from(Account)) == 200
    db.dispose()


def test_the_wal_is_checkpointed_in_the_background(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path}/c.db")
    migrate.upgrade(db.engine)
    now = dt.datetime.now(dt.UTC)
    with db.begin() as s:
        s.add_all(Account(name=f"a{i}", created_at=now) for i in range(500))
    main = tmp_path / "c.db"
    before = main.stat().st_size
    wait_until(lambda: main.stat().st_size > before, timeout=10,
               message="the checkpoint thread never copied the WAL into the database")
    db.dispose()
