"""Retrying transient storage failures: a wrapper, not a branch in each backend.

:class:`RetryingBackend` retries only :class:`StorageUnavailable` (the
``retryable`` errors), with exponential backoff and full jitter, bounded both
in attempts and in total time (restic's ``backend/retry``). Permanent errors
(not found, full, permission denied, invalid name) pass through at once.
This module owns the retry policy; it must not classify errors (backends do)
nor know any concrete backend.

What is retried how:

- ``put``, ``delete``, ``get``, ``stat``, ``exists``: repeated as a whole;
  they are idempotent.
- ``put_if_absent``: repeated; when a retry finds the object already there
  it may be this call's own earlier attempt, whose reply was lost. The wrapper
  then reads the object back and returns True if it holds exactly ``data``.
- ``put_stream``: repeated only when ``chunks`` can be iterated again (a list,
  a tuple, any re-iterable); a one-shot iterator is consumed by the first
  attempt, so its failure is raised as is.
- ``iter_get``: a stream broken midway is resumed at the first byte not yet
  delivered, which assumes the object did not change meanwhile (objects are
  written once by convention).
- ``list``: retried while nothing has been yielded yet; a listing broken
  midway raises, and the caller lists again.
"""

from __future__ import annotations

import functools
import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from cbr.storage.backend import (
    DEFAULT_CHUNK_SIZE,
    Backend,
    BackendWrapper,
    ObjectInfo,
    StorageError,
)

T = TypeVar("T")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    """Bounds of the retrying: whichever of ``max_attempts`` and
    ``max_elapsed_s`` is reached first ends it (the last error is raised).

    Delay before retry *n* (1-based) is uniform in
    ``[0, min(max_delay_s, initial_delay_s * multiplier ** (n - 1))]``.
    """

    max_attempts: int = 10
    max_elapsed_s: float = 120.0
    initial_delay_s: float = 0.2
    max_delay_s: float = 10.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if self.initial_delay_s < 0 or self.max_delay_s < 0 or self.max_elapsed_s < 0:
            raise ValueError("delays must be >= 0")

    def delay(self, retry: int, rng: random.Random) -> float:
        cap = min(self.max_delay_s, self.initial_delay_s * self.multiplier ** (retry - 1))
        return rng.uniform(0, cap)


RetryCallback = Callable[[str, int, StorageError, float], None]
"""Called before each retry with (operation, attempt that failed, error, delay)."""


class RetryingBackend(BackendWrapper):
    """Wraps ``inner`` and retries its transient failures per ``policy``.

    ``sleep`` and ``monotonic`` are injectable so tests do not wait;
    ``on_retry`` is told of every retry (for logs and progress reports).
    """

    def __init__(
        self,
        inner: Backend,
        policy: RetryPolicy | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        on_retry: RetryCallback | None = None,
    ) -> None:
        super().__init__(inner)
        self.policy = policy or RetryPolicy()
        self._sleep = sleep
        self._monotonic = monotonic
        self._rng = rng or random.Random()
        self._on_retry = on_retry

    def _call(self, operation: str, fn: Callable[[int], T]) -> T:
        """Runs ``fn(attempt)`` until it succeeds, fails permanently, or the policy ends."""
        start = self._monotonic()
        attempt = 1
        while True:
            try:
                return fn(attempt)
            except StorageError as exc:
                if not exc.retryable or attempt >= self.policy.max_attempts:
                    raise
                delay = self.policy.delay(attempt, self._rng)
                if self._monotonic() - start + delay > self.policy.max_elapsed_s:
                    raise
                log.info(
                    "storage %s failed (attempt %d), retrying in %.2fs: %s",
                    operation,
                    attempt,
                    delay,
                    exc,
                )
                if self._on_retry is not None:
                    self._on_retry(operation, attempt, exc, delay)
                self._sleep(delay)
                attempt += 1

    # -- writing -------------------------------------------------------------------------

    def put(self, name: str, data: bytes) -> None:
        self._call("put", lambda _: self.inner.put(name, data))

    def put_if_absent(self, name: str, data: bytes) -> bool:
        def attempt(n: int) -> bool:
            if self.inner.put_if_absent(name, data):
                return True
            # On a retry, "exists" may be our own earlier attempt that landed.
            return n > 1 and self.inner.get(name) == data

        return self._call("put_if_absent", attempt)

    def put_stream(self, name: str, chunks: Iterable[bytes | memoryview]) -> int:
        if iter(chunks) is chunks:  # one-shot iterator: cannot be replayed
            return self.inner.put_stream(name, chunks)
        return self._call("put_stream", lambda _: self.inner.put_stream(name, chunks))

    def delete(self, name: str) -> None:
        self._call("delete", lambda _: self.inner.delete(name))

    # -- reading -------------------------------------------------------------------------

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        return self._call("get", lambda _: self.inner.get(name, offset, length))

    def stat(self, name: str) -> ObjectInfo:
        return self._call("stat", lambda _: self.inner.stat(name))

    def exists(self, name: str) -> bool:
        return self._call("exists", lambda _: self.inner.exists(name))

    def iter_get(
        self,
        name: str,
        offset: int = 0,
        length: int | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> Iterator[bytes]:
        first = self._call(
            "iter_get", lambda _: self.inner.iter_get(name, offset, length, chunk_size)
        )
        return self._resuming(first, name, offset, length, chunk_size)

    def _resuming(
        self,
        stream: Iterator[bytes],
        name: str,
        offset: int,
        length: int | None,
        chunk_size: int,
    ) -> Iterator[bytes]:
        delivered = 0
        start = self._monotonic()
        attempt = 1
        while True:
            try:
                for chunk in stream:
                    delivered += len(chunk)
                    attempt = 1  # progress resets the attempt budget
                    yield chunk
                return
            except StorageError as exc:
                delay = self.policy.delay(attempt, self._rng)
                if (
                    not exc.retryable
                    or attempt >= self.policy.max_attempts
                    or self._monotonic() - start + delay > self.policy.max_elapsed_s
                ):
                    raise
                if self._on_retry is not None:
                    self._on_retry("iter_get", attempt, exc, delay)
                self._sleep(delay)
                attempt += 1
                remaining = None if length is None else length - delivered
                if remaining == 0:
                    return
                reopen = functools.partial(
                    self._reopen, name, offset + delivered, remaining, chunk_size
                )
                stream = self._call("iter_get", reopen)

    def _reopen(
        self, name: str, offset: int, length: int | None, chunk_size: int, _attempt: int
    ) -> Iterator[bytes]:
        return self.inner.iter_get(name, offset, length, chunk_size)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self._listing(prefix)

    def _listing(self, prefix: str) -> Iterator[ObjectInfo]:
        def first() -> tuple[Iterator[ObjectInfo], ObjectInfo | None]:
            iterator = self.inner.list(prefix)
            return iterator, next(iterator, None)

        iterator, head = self._call("list", lambda _: first())
        if head is None:
            return
        yield head
        yield from iterator
