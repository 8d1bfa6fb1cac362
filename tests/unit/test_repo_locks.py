"""Locks (storage format section 12): documents, refresh, staleness on the
storage's clock, LockLost, and the one-prune rule."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cbr.repo import layout
from cbr.repo.maintenance.locks import (
    Lock,
    LockConflict,
    LockLost,
    list_locks,
    live_locks,
    storage_now,
)
from cbr.storage import StorageError
from cbr.storage.local import LocalBackend
from tests.support.faulty import Fault, FaultyBackend

FAST = {"refresh": dt.timedelta(seconds=0.05), "stale": dt.timedelta(seconds=10)}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _age(root: Path, lock: Lock, seconds: float) -> None:
    """Sets the lock object's mtime into the past (as if its holder died)."""
    path = root / layout.LOCKS / lock.lock_id
    old = time.time() - seconds
    os.utime(path, (old, old))


def test_a_lock_is_clear_json_naming_its_holder_and_is_removed_on_release(
        tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path)
    with Lock.acquire(backend, kind="backup", task_id="t-1") as lock:
        doc = json.loads((tmp_path / "locks" / lock.lock_id).read_bytes())
        assert doc["kind"] == "backup" and doc["task_id"] == "t-1"
        assert doc["pid"] == os.getpid() and doc["host"] and doc["created_at"].endswith("Z")
        assert [x.lock_id for x in live_locks(backend)] == [lock.lock_id]
    assert list_locks(backend) == []


def test_the_refresher_rewrites_the_lock(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path)
    with Lock.acquire(backend, kind="backup", **FAST) as lock:  # type: ignore[arg-type]
        _age(tmp_path, lock, 3600)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if backend.stat(lock.name).mtime > storage_now(backend) - dt.timedelta(seconds=5):
                break
            time.sleep(0.02)
        else:
            pytest.fail("lock was not refreshed")


def test_a_lock_not_refreshed_for_the_stale_time_is_ignored(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path)
    lock = Lock(backend, "backup").start()
    try:
        _age(tmp_path, lock, 31 * 60)
        assert live_locks(backend) == []
        assert len(list_locks(backend)) == 1  # still there, just not live
        assert live_locks(backend, stale_after=dt.timedelta(hours=1)) != []
    finally:
        lock.release()


def test_check_raises_lock_lost_after_half_the_stale_time_without_refresh(
        tmp_path: Path) -> None:
    faulty = FaultyBackend(LocalBackend(tmp_path))
    clock = FakeClock()
    lock = Lock(faulty, "backup", refresh=dt.timedelta(hours=1), stale=dt.timedelta(hours=4),
                clock=clock).start()
    try:
        faulty.add("put", Fault(error=StorageError("down"), name_prefix="locks/", times=None))
        clock.now += 3600
        with pytest.raises(StorageError):
            lock.refresh()
        lock.check()  # an hour without refresh: still fine
        clock.now += 3600
        with pytest.raises(LockLost):
            lock.check()
        faulty.clear()
        lock.refresh()  # the storage is back, but prune may have swept meanwhile
        with pytest.raises(LockLost):
            lock.check()
    finally:
        lock.release()


def test_a_second_prune_is_refused_but_a_stale_one_does_not_block(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path)
    with Lock.acquire(backend, kind="prune") as first:
        with pytest.raises(LockConflict), Lock.acquire(backend, kind="prune"):
            pass
        with Lock.acquire(backend, kind="backup"):
            pass  # writers never wait for prune
        _age(tmp_path, first, 31 * 60)
        with Lock.acquire(backend, kind="prune") as second:
            assert second.lock_id != first.lock_id
    assert list_locks(backend) == []


def test_a_prune_backs_off_when_another_appears_after_it_wrote_its_lock(
        tmp_path: Path) -> None:
    inner = LocalBackend(tmp_path)
    faulty = FaultyBackend(inner)
    rival: list[Lock] = []

    def race(_method: str, name: str) -> None:
        rival.append(Lock(inner, "prune").start())  # lands between our check and our write

    # The first put is the clock probe of the pre-check, the second our lock;
    # a fault that only "damages reads" lets the put through and runs the callback.
    faulty.add("put", Fault(callback=race, name_prefix="locks/", skip=1, corrupt=True))
    with pytest.raises(LockConflict), Lock.acquire(faulty, kind="prune"):
        pytest.fail("two prunes must not run at once")
    assert [x.lock_id for x in list_locks(inner)] == [rival[0].lock_id]  # ours is gone
    rival[0].release()


def _prune_lock_of_a_killed_process(root: Path) -> str:
    """A real process takes a prune lock and is killed holding it."""
    code = ("import os, sys; from cbr.repo.maintenance.locks import Lock; "
            "from cbr.storage.local import LocalBackend; "
            f"lock = Lock(LocalBackend({str(root)!r}), 'prune').start(); "
            "print(lock.lock_id, flush=True); os.kill(os.getpid(), 9)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == -9, done.stderr
    return done.stdout.strip()


def test_a_prune_lock_whose_holder_was_killed_on_this_host_is_taken_over_at_once(
        tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path)
    dead = _prune_lock_of_a_killed_process(tmp_path)
    [left] = list_locks(backend)
    assert left.lock_id == dead and left.holder_dead()
    assert live_locks(backend) == []  # fresh, but its holder is gone
    with Lock.acquire(backend, kind="prune") as mine:
        assert [x.lock_id for x in list_locks(backend)] == [mine.lock_id]


def _forged(root: Path, **doc: object) -> None:
    lock_id = os.urandom(16).hex()
    (root / "locks").mkdir(exist_ok=True)
    base = json.loads(Lock(LocalBackend(root), "prune")._doc)
    (root / "locks" / lock_id).write_text(json.dumps({**base, **doc}))


@pytest.mark.parametrize("doc, dead", [
    ({}, False),                                        # this very process: alive
    ({"host": "another-host", "pid": 1}, False),        # elsewhere: judged by age alone
    ({"pid_start": "1"}, True),                         # our pid, reused by another process
    ({"boot_id": "00000000-0000-0000-0000-000000000000"}, True),  # this host rebooted since
])
def test_only_a_holder_known_dead_on_this_host_frees_a_fresh_lock(
        tmp_path: Path, doc: dict[str, object], dead: bool) -> None:
    backend = LocalBackend(tmp_path)
    _forged(tmp_path, **doc)
    [lock] = list_locks(backend)
    assert lock.holder_dead() is dead
    if dead:
        with Lock.acquire(backend, kind="prune"):
            pass
    else:
        with pytest.raises(LockConflict), Lock.acquire(backend, kind="prune"):
            pass
