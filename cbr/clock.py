"""The one source of time. Code takes a Clock instead of calling time.time or
datetime.now, so tests of expiry, heartbeats and schedules can move time."""

from __future__ import annotations

import datetime as dt
import threading
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> dt.datetime:
        """Aware UTC now."""
        ...

    def time(self) -> float:
        """Seconds since the epoch."""
        ...


class SystemClock:
    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)

    def time(self) -> float:
        return time.time()


class FakeClock:
    """A clock that moves only when told."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._t = start
        self._lock = threading.Lock()

    def now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.time(), dt.UTC)

    def time(self) -> float:
        with self._lock:
            return self._t

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._t += seconds


# The process's clock, for code that is not handed one (the agent's journal and
# change journal, the format layer's record times). Nothing else in the tree
# reads the wall clock (tests/unit/test_lint.py keeps it so); tests move time
# with ``install(FakeClock())``.
_process: Clock = SystemClock()


def utc_now() -> dt.datetime:
    """Aware UTC now, from the process's clock."""
    return _process.now()


def wall_time() -> float:
    """Seconds since the epoch, from the process's clock."""
    return _process.time()


def install(clock: Clock) -> Clock:
    """Makes ``clock`` the process's clock; returns the one it replaces."""
    global _process
    previous, _process = _process, clock
    return previous
