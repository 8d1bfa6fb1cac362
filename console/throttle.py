"""Slowing down guessing at the sign-in form.

Five failed sign-ins within a minute for one user name or from one address
refuse further tries for that name or address until the minute has passed.
Kept per controller in memory: several controllers each allow five, which
still turns guessing a password into years of work.
"""

from __future__ import annotations

import threading
import time
from collections import deque

WINDOW = 60.0
FAILURES = 5
MAX_KEYS = 10_000


class Throttle:
    def __init__(self) -> None:
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self._failures.setdefault(key, deque())
        while times and now - times[0] > WINDOW:
            times.popleft()
        return times

    def wait(self, keys: list[str], now: float | None = None) -> float:
        """Seconds until a sign-in for any of ``keys`` may be tried, 0 if now."""
        now = time.monotonic() if now is None else now
        with self._lock:
            waits = [WINDOW - (now - times[0]) for key in keys
                     if len(times := self._recent(key, now)) >= FAILURES]
        return max(waits, default=0.0)

    def failed(self, keys: list[str], now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            if len(self._failures) > MAX_KEYS:  # many names tried: forget the old ones
                for key in [k for k, t in self._failures.items() if not t or now - t[-1] > WINDOW]:
                    del self._failures[key]
            for key in keys:
                self._recent(key, now).append(now)

    def succeeded(self, keys: list[str]) -> None:
        with self._lock:
            for key in keys:
                self._failures.pop(key, None)
