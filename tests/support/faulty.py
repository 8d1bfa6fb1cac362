"""A storage that fails on cue: fault injection as test infrastructure.

:class:`FaultyBackend` wraps a real backend and, per method, applies
:class:`Fault` rules (kopia's ``internal/blobtesting/faulty.go``): fail the
Nth call, fail N times in a row, fail only for some names, fail *after* the
call went through (the write landed but the caller saw an error), or damage
what a read returns (truncate, flip a byte). Tests of retry, resume, garbage
collection and verification use it instead of hoping for bad luck.

This module is for tests only (it lives under tests/support); production code never
constructs it. It owns nothing but the fault bookkeeping.

Method names a fault can target: ``put``, ``put_if_absent``, ``put_stream``,
``get``, ``iter_get``, ``stat``, ``exists``, ``list``, ``delete``; the
pseudo-method ``"*"`` matches them all. Read damage (``truncate_to``,
``corrupt``) applies to ``get`` and ``iter_get``.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from cbr.storage.backend import (
    DEFAULT_CHUNK_SIZE,
    Backend,
    BackendWrapper,
    ObjectInfo,
    StorageError,
    StorageUnavailable,
)

METHODS = frozenset(
    {"put", "put_if_absent", "put_stream", "get", "iter_get", "stat", "exists", "list", "delete"}
)


@dataclass
class Fault:
    """One rule. Matching calls are counted; the first ``skip`` pass untouched,
    the next ``times`` are faulted (``None``: every one after that).

    - ``error``: raised instead of the call (or after it, with ``after``);
      default a :class:`StorageUnavailable`. Not raised when only read damage
      is configured.
    - ``after``: perform the call first, then raise (a lost reply).
    - ``truncate_to``: reads return at most this many bytes.
    - ``corrupt``: reads return the bytes with one bit flipped at offset
      ``corrupt_at`` of what the read returns (``get``: the last byte if beyond).
    - ``name_prefix``: only calls whose name (or list prefix) starts with this.
    - ``callback``: called with the method and name each time the fault fires
      (e.g. to stop a server at the right moment).
    """

    error: StorageError | None = None
    skip: int = 0
    times: int | None = 1
    after: bool = False
    truncate_to: int | None = None
    corrupt: bool = False
    corrupt_at: int = 0
    name_prefix: str = ""
    callback: Callable[[str, str], None] | None = None
    seen: int = field(default=0, init=False)
    fired: int = field(default=0, init=False)

    @property
    def damages_reads(self) -> bool:
        return self.truncate_to is not None or self.corrupt

    def exhausted(self) -> bool:
        return self.times is not None and self.fired >= self.times


def corrupt_bytes(data: bytes, at: int = 0) -> bytes:
    """``data`` with the lowest bit of byte ``at`` (the last byte if beyond) flipped."""
    if not data:
        return data
    index = min(at, len(data) - 1)
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


class FaultyBackend(BackendWrapper):
    """Wraps ``inner``; faults are added with :meth:`add` and fire in order.

    ``calls`` counts every call per method (faulted or not), for assertions.
    Thread-safe.
    """

    def __init__(self, inner: Backend) -> None:
        super().__init__(inner)
        self._faults: dict[str, list[Fault]] = {}
        self._lock = threading.Lock()
        self.calls: Counter[str] = Counter()

    def add(self, method: str, fault: Fault | None = None) -> Fault:
        """Adds ``fault`` (default: fail the next call once, transiently) to ``method``."""
        if method != "*" and method not in METHODS:
            raise ValueError(f"unknown method {method!r}; one of {sorted(METHODS)} or '*'")
        fault = fault or Fault()
        with self._lock:
            self._faults.setdefault(method, []).append(fault)
        return fault

    def fail_nth(self, method: str, n: int, error: StorageError | None = None) -> Fault:
        """Makes the ``n``-th (1-based, counted from now) call of ``method`` fail once."""
        return self.add(method, Fault(error=error, skip=n - 1, times=1))

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def _match(self, method: str, name: str) -> Fault | None:
        """The fault firing for this call, if any; advances the counters."""
        with self._lock:
            self.calls[method] += 1
            for key in (method, "*"):
                for fault in self._faults.get(key, ()):
                    if fault.exhausted() or not name.startswith(fault.name_prefix):
                        continue
                    fault.seen += 1
                    if fault.seen <= fault.skip:
                        continue
                    fault.fired += 1
                    break
                else:
                    continue
                break
            else:
                return None
        if fault.callback is not None:
            fault.callback(method, name)
        return fault

    @staticmethod
    def _error(fault: Fault, method: str, name: str) -> StorageError:
        if fault.error is not None:
            return fault.error
        return StorageUnavailable(f"injected fault in {method}({name!r})", name)

    def _run(self, method: str, name: str, call: Callable[[], object]) -> object:
        fault = self._match(method, name)
        if fault is None or fault.damages_reads:
            return call()
        if not fault.after:
            raise self._error(fault, method, name)
        call()
        raise self._error(fault, method, name)

    @staticmethod
    def _damage(fault: Fault, data: bytes) -> bytes:
        if fault.truncate_to is not None:
            data = data[: fault.truncate_to]
        if fault.corrupt:
            data = corrupt_bytes(data, fault.corrupt_at)
        return data

    # -- the interface -------------------------------------------------------------------

    def put(self, name: str, data: bytes) -> None:
        self._run("put", name, lambda: self.inner.put(name, data))

    def put_if_absent(self, name: str, data: bytes) -> bool:
        return bool(self._run("put_if_absent", name, lambda: self.inner.put_if_absent(name, data)))

    def put_stream(self, name: str, chunks: Iterable[bytes | memoryview]) -> int:
        result = self._run("put_stream", name, lambda: self.inner.put_stream(name, chunks))
        assert isinstance(result, int)
        return result

    def delete(self, name: str) -> None:
        self._run("delete", name, lambda: self.inner.delete(name))

    def stat(self, name: str) -> ObjectInfo:
        result = self._run("stat", name, lambda: self.inner.stat(name))
        assert isinstance(result, ObjectInfo)
        return result

    def exists(self, name: str) -> bool:
        return bool(self._run("exists", name, lambda: self.inner.exists(name)))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        result = self._run("list", prefix, lambda: self.inner.list(prefix))
        assert isinstance(result, Iterator)
        return result

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        fault = self._match("get", name)
        if fault is not None and not fault.damages_reads:
            if not fault.after:
                raise self._error(fault, "get", name)
            self.inner.get(name, offset, length)
            raise self._error(fault, "get", name)
        data = self.inner.get(name, offset, length)
        return data if fault is None else self._damage(fault, data)

    def iter_get(
        self,
        name: str,
        offset: int = 0,
        length: int | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> Iterator[bytes]:
        """A plain error fault breaks the stream after its first chunk (a
        connection lost midway); read damage applies to the whole stream."""
        fault = self._match("iter_get", name)
        stream = self.inner.iter_get(name, offset, length, chunk_size)
        if fault is None:
            return stream
        if fault.damages_reads:
            return self._damaged_stream(fault, stream)
        return self._broken_stream(self._error(fault, "iter_get", name), stream)

    def _damaged_stream(self, fault: Fault, stream: Iterator[bytes]) -> Iterator[bytes]:
        position = 0
        limit = fault.truncate_to
        for chunk in stream:
            if limit is not None:
                chunk = chunk[: max(0, limit - position)]
            if fault.corrupt and position <= fault.corrupt_at < position + len(chunk):
                chunk = corrupt_bytes(chunk, fault.corrupt_at - position)
            position += len(chunk)
            if chunk:
                yield chunk
            if limit is not None and position >= limit:
                return

    @staticmethod
    def _broken_stream(error: StorageError, stream: Iterator[bytes]) -> Iterator[bytes]:
        first = next(stream, None)
        close = getattr(stream, "close", None)
        if close is not None:
            close()
        if first is not None:
            yield first
        raise error
