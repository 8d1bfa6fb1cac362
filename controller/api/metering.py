"""API calls by method and status code, and unary calls' latency.

Outermost of the API's interceptors (``controller.api.server``), so it sees
the status the client gets: every error has become a status by then. It is
written like the others (``controller.api.interceptors``): an ``Around``
for each handler form, kept by ``wrap``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any, NoReturn

import grpc

from controller import metrics
from controller.api.interceptors import Around, wrap


class _Measured(Around):
    """Counts a call by its status code once it ends and, for a unary call,
    observes its latency: two dict lookups, a clock read and two increments
    per call."""

    def __init__(self, interceptor: MetricsInterceptor, method: str, unary: bool) -> None:
        self.interceptor, self.method = interceptor, method
        self.latency = interceptor.latency(method) if unary else None

    def _done(self, ctx: Any, start: float, failed: bool) -> None:
        if self.latency is not None:
            self.latency.observe(time.perf_counter() - start)
        self.interceptor.count(self.method, _code_name(ctx, failed))

    def call(self, req: Any, ctx: Any, inner: Callable[[Any, Any], Any]) -> Any:
        start, failed = time.perf_counter(), True
        ctx = _CodeKept(ctx)
        try:
            answer = inner(req, ctx)
            failed = False
            return answer
        finally:
            self._done(ctx, start, failed)

    async def coro(self, req: Any, ctx: Any, inner: Callable[[Any, Any], Any]) -> Any:
        start, failed = time.perf_counter(), True
        try:
            answer = await inner(req, ctx)
            failed = False
            return answer
        finally:
            self._done(ctx, start, failed)

    async def stream(self, req: Any, ctx: Any,
                     inner: Callable[[Any, Any], Any]) -> AsyncIterator[Any]:
        start, failed = time.perf_counter(), True
        try:
            async for item in inner(req, ctx):
                yield item
            failed = False
        finally:
            self._done(ctx, start, failed)


class _CodeKept:
    """A plain handler's context (grpc.aio's, for the thread pool) that
    keeps the status an abort or set_code gave, which that context cannot
    tell afterwards."""

    __slots__ = ("_ctx", "status")

    def __init__(self, ctx: Any) -> None:
        self._ctx = ctx
        self.status: grpc.StatusCode | None = None

    def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()
              ) -> NoReturn:
        self.status = code
        self._ctx.abort(code, details, trailing_metadata)
        raise AssertionError("abort returned")  # it raises

    def set_code(self, code: grpc.StatusCode) -> None:
        self.status = code
        self._ctx.set_code(code)

    def code(self) -> grpc.StatusCode | None:
        return self.status

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ctx, name)


_CODE_NAMES = {code: code.name for code in grpc.StatusCode}


def _code_name(ctx: Any, failed: bool) -> str:
    """The status the call ended with: what an abort set, else OK for a
    call that returned and CANCELLED for one that was stopped (the client
    left, the server stops)."""
    try:
        code = ctx.code()
    except Exception:  # a context that cannot say
        code = None
    if isinstance(code, grpc.StatusCode):
        return _CODE_NAMES[code]
    if isinstance(code, int) and code:
        return next((c.name for c in grpc.StatusCode if c.value[0] == code), "UNKNOWN")
    return "CANCELLED" if failed else "OK"


class MetricsInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """API calls by method and status code, and unary calls' latency
    (``controller.metrics``). Unknown methods are not counted: their names
    come from clients and would make the series unbounded."""

    def __init__(self) -> None:
        self._calls: dict[tuple[str, str], Any] = {}
        self._latency: dict[str, Any] = {}

    def count(self, method: str, code: str) -> None:
        child = self._calls.get((method, code))
        if child is None:
            child = self._calls[(method, code)] = metrics.API_CALLS.labels(method, code)
        child.inc()

    def latency(self, method: str) -> Any:
        child = self._latency.get(method)
        if child is None:
            child = self._latency[method] = metrics.API_LATENCY.labels(method)
        return child

    async def intercept_service(self, continuation: Any,
                                details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        return wrap(handler, _Measured(self, details.method, bool(handler.unary_unary)))
