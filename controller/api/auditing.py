"""The audit interceptor: records each call of ``cbr.v1`` the audit trail
keeps (``controller.services.audit``) with its caller, the ids it named and
returned, its outcome and its duration, and hands it to the batched writer
(``controller.jobs.audit_log``).

It sits between the error mapping and authentication, so it sees a
refusal by authentication or IAM as the typed error it is, and the caller
once authentication has named it (``controller.api.caller.attribute``).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from cbr import errors
from controller.api import caller as caller_mod
from controller.api.interceptors import Around, Signed, peer_host, wrap
from controller.app import App
from controller.services import audit

AUDITED_PREFIX = "/cbr.v1."


def _outcome(entry: audit.Entry, exc: BaseException, ctx: Any) -> None:
    if isinstance(exc, errors.CbrError):
        entry.status_code = exc.status.name
        entry.error_code = exc.code
        entry.error_message = exc.message
        return
    code = None
    try:
        code = ctx.code()  # a servicer's own context.abort()
    except Exception:
        code = None
    if isinstance(code, grpc.StatusCode) and code is not grpc.StatusCode.OK:
        entry.status_code = code.name
        details = ctx.details() if hasattr(ctx, "details") else ""
        entry.error_message = details if isinstance(details, str) else ""
    else:
        entry.status_code = grpc.StatusCode.INTERNAL.name
        entry.error_code = errors.InternalError.code


class _Audit(Around):
    def __init__(self, app: App, method: str) -> None:
        self.app, self.method = app, method

    def _begin(self, ctx: Any) -> tuple[audit.Entry, float]:
        entry = audit.Entry(method=self.method, source=peer_host(ctx),
                            created_at=self.app.clock.now())
        return entry, time.monotonic()

    def _end(self, entry: audit.Entry, started: float, req: Any, response: Any) -> None:
        log = self.app.audit
        entry.duration_ms = int((time.monotonic() - started) * 1000)
        if log is None or not entry.kept:
            return
        request = req.message if isinstance(req, Signed) else req
        entry.resource_ids = audit.resource_ids(request, response)
        log.record(entry)

    def call(self, req: Any, ctx: Any, inner: Callable[[Any, Any], Any]) -> Any:
        entry, started = self._begin(ctx)
        token = caller_mod.audit_entry.set(entry)
        response = None
        try:
            response = inner(req, ctx)
            return response
        except BaseException as exc:
            _outcome(entry, exc, ctx)
            raise
        finally:
            caller_mod.audit_entry.reset(token)
            self._end(entry, started, req, response)

    async def coro(self, req: Any, ctx: Any, inner: Callable[[Any, Any], Any]) -> Any:
        entry, started = self._begin(ctx)
        token = caller_mod.audit_entry.set(entry)
        response = None
        try:
            response = await inner(req, ctx)
            return response
        except BaseException as exc:
            _outcome(entry, exc, ctx)
            raise
        finally:
            caller_mod.audit_entry.reset(token)
            self._end(entry, started, req, response)

    async def stream(self, req: Any, ctx: Any,
                     inner: Callable[[Any, Any], Any]) -> AsyncIterator[Any]:
        entry, started = self._begin(ctx)
        token = caller_mod.audit_entry.set(entry)
        try:
            async for item in inner(req, ctx):
                yield item
        except BaseException as exc:
            _outcome(entry, exc, ctx)
            raise
        finally:
            caller_mod.audit_entry.reset(token)
            self._end(entry, started, req, None)


class AuditInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, app: App) -> None:
        self._app = app

    async def intercept_service(self, continuation: Any,
                                details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        method = details.method
        if handler is None or not method.startswith(AUDITED_PREFIX):
            return handler
        return wrap(handler, _Audit(self._app, method))
