"""Authentication, authorization and error mapping, each written once.

``ErrorInterceptor`` is the one place a ``cbr.errors.CbrError`` becomes a gRPC
status: the status code of its class, its message, and a
``google.rpc.ErrorInfo`` detail whose reason is the CBR code. Anything else
escaping a servicer is logged and returned as INTERNAL without internals.

The API runs on ``grpc.aio`` (controller.api.server): the servicers of
``cbr.v1`` are plain functions run on a bounded thread pool, while long-lived
streams (task watches, health watches, reflection) are coroutines that hold
no thread while they wait. So every wrapper here comes in the two forms, and
``wrap`` keeps each handler's form. ``StreamLimits`` caps open streams per
peer address and in total, so streams cannot take what calls need.

``AuthInterceptor`` checks the AK/SK signature over the exact request bytes
(so it wraps the request deserializer to see them), the time window, the
nonce and the key's life (``controller.services.replay``), and the IAM action
the method needs, then publishes the caller for the servicer through
``controller.api.caller``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, NoReturn

import grpc

from cbr import errors, limits, signing
from cbr.status import status_of
from controller.api.caller import Caller, attribute, reset_caller, set_caller
from controller.app import App
from controller.services import actions, console_sessions, iam, replay

log = logging.getLogger("cbr.controller.api")


def _abort(context: Any, err: errors.CbrError) -> NoReturn:
    status = status_of(err)
    context.abort(status.code, status.details, status.trailing_metadata)
    raise AssertionError("abort returned")  # it raises


async def _abort_async(context: Any, err: errors.CbrError) -> NoReturn:
    status = status_of(err)
    await context.abort(status.code, status.details, status.trailing_metadata)
    raise AssertionError("abort returned")


def _log_internal(method: str, exc: BaseException) -> None:
    log.exception("unhandled error in %s", method, exc_info=exc)


class Around:
    """What an interceptor does around a handler, in each form a handler has:
    ``call`` for plain functions (run on the API's thread pool), ``coro`` for
    coroutines and ``stream`` for async generators (run on the event loop)."""

    def call(self, req: Any, ctx: Any, inner: Callable[[Any, Any], Any]) -> Any:
        return inner(req, ctx)

    async def coro(self, req: Any, ctx: Any, inner: Callable[[Any, Any], Any]) -> Any:
        return await inner(req, ctx)

    async def stream(self, req: Any, ctx: Any,
                     inner: Callable[[Any, Any], Any]) -> AsyncIterator[Any]:
        async for item in inner(req, ctx):
            yield item


def _behaviour(inner: Callable[[Any, Any], Any], around: Around) -> Callable[[Any, Any], Any]:
    if inspect.isasyncgenfunction(inner):
        async def stream(req: Any, ctx: Any) -> AsyncIterator[Any]:
            async for item in around.stream(req, ctx, inner):
                yield item
        return stream
    if inspect.iscoroutinefunction(inner):
        async def coro(req: Any, ctx: Any) -> Any:
            return await around.coro(req, ctx, inner)
        return coro
    if inspect.isgeneratorfunction(inner):
        return _behaviour(_in_threads(inner), around)

    def call(req: Any, ctx: Any) -> Any:
        return around.call(req, ctx, inner)
    return call


def _in_threads(inner: Callable[[Any, Any], Iterator[Any]]
                ) -> Callable[[Any, Any], AsyncIterator[Any]]:
    """A plain generator (a diff or a walk reading storage) as an async one
    whose every step runs on a worker thread. grpc.aio would iterate it
    partly on its event loop, blocking every other call, and an abort from
    inside it there can deadlock."""

    async def run(req: Any, ctx: Any) -> AsyncIterator[Any]:
        items = await asyncio.to_thread(inner, req, ctx)
        done = object()
        while (item := await asyncio.to_thread(next, items, done)) is not done:
            yield item

    return run


def wrap(handler: grpc.RpcMethodHandler, around: Around,
          deserializer: Callable[[Any], Callable[[bytes], Any]] | None = None
          ) -> grpc.RpcMethodHandler:
    """A copy of handler whose behaviour runs inside ``around``, in the
    handler's own form (a coroutine stays a coroutine)."""
    req_deser = handler.request_deserializer
    if deserializer is not None and req_deser is not None:
        req_deser = deserializer(req_deser)
    kinds = (("unary_unary", grpc.unary_unary_rpc_method_handler),
             ("unary_stream", grpc.unary_stream_rpc_method_handler),
             ("stream_unary", grpc.stream_unary_rpc_method_handler),
             ("stream_stream", grpc.stream_stream_rpc_method_handler))
    for field, make in kinds:
        inner = getattr(handler, field)
        if inner:
            return make(_behaviour(inner, around), request_deserializer=req_deser,  # type: ignore[no-any-return]
                        response_serializer=handler.response_serializer)
    raise ValueError("a handler without a behaviour")


class _Malformed:
    """What the request deserializer returns for bytes that are not the
    method's message (corrupt, nested too deep, too large): grpc would log a
    traceback and answer INTERNAL, so the error is raised inside the call."""

    __slots__ = ("error",)

    def __init__(self, error: errors.CbrError) -> None:
        self.error = error


class _Throttled:
    """At most one log line per ``every`` seconds, with a count of the rest:
    bad input from anyone must not fill the log."""

    def __init__(self, every: float = 10.0) -> None:
        self._every = every
        self._next = 0.0
        self._dropped = 0
        self._lock = threading.Lock()

    def warning(self, message: str, *args: Any) -> None:
        now = time.monotonic()
        with self._lock:
            if now < self._next:
                self._dropped += 1
                return
            dropped, self._dropped, self._next = self._dropped, 0, now + self._every
        log.warning(message + (f" ({dropped} more since the last such line)" if dropped
                               else ""), *args)


_bad_input_log = _Throttled()


def _safe(method: str) -> Callable[[Callable[[bytes], Any]], Callable[[bytes], Any]]:
    def wrap(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
        def run(raw: bytes) -> Any:
            if len(raw) > limits.MAX_REQUEST_BYTES:
                return _Malformed(errors.RequestTooLarge(
                    f"The request is {len(raw)} bytes; at most {limits.MAX_REQUEST_BYTES} are "
                    "accepted. Send fewer items per call."))
            try:
                return deserialize(raw)
            except Exception as exc:  # DecodeError, RecursionError: the bytes are bad
                _bad_input_log.warning("refused a malformed %s request: %s", method,
                                       str(exc)[:200])
                return _Malformed(errors.InvalidParameter(
                    f"The request is not a valid {method} message (corrupt protobuf, or "
                    "nested deeper than 100 levels)."))

        return run

    return wrap


def _checked(requests: Iterator[Any]) -> Iterator[Any]:
    for request in requests:
        if isinstance(request, _Malformed):
            raise request.error
        yield request


async def _checked_async(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, _Malformed):
            raise request.error
        yield request


def peer_host(ctx: Any) -> str:
    """The address part of a peer (``ipv4:1.2.3.4:5678`` -> ``1.2.3.4``)."""
    peer = str(ctx.peer() or "")
    kind, _, rest = peer.partition(":")
    return rest.rpartition(":")[0] if kind in ("ipv4", "ipv6") else peer


class StreamLimits:
    """Open long-lived streams, per peer address and in total.

    On the event loop an idle stream costs memory only, so the caps are
    about memory and fairness: one client (or one address behind which many
    sit) cannot open so many that others are refused."""

    def __init__(self, total: int, per_peer: int) -> None:
        self.total, self.per_peer = total, per_peer
        self._open: dict[str, int] = {}
        self._count = 0
        self._lock = threading.Lock()

    def enter(self, peer: str) -> None:
        with self._lock:
            mine = self._open.get(peer, 0)
            if self._count >= self.total or mine >= self.per_peer:
                raise errors.TooManyStreams(
                    f"{self._count} streams are open ({mine} from {peer}); at most "
                    f"{self.total} in all and {self.per_peer} per address. Close some, or "
                    "poll instead of watching.")
            self._open[peer] = mine + 1
            self._count += 1

    def leave(self, peer: str) -> None:
        with self._lock:
            self._count -= 1
            left = self._open.get(peer, 1) - 1
            if left:
                self._open[peer] = left
            else:
                self._open.pop(peer, None)


class _Errors(Around):
    def __init__(self, method: str, client_streaming: bool, limits: StreamLimits | None,
                 streaming: bool) -> None:
        self.method = method
        self.client_streaming = client_streaming
        self.limits = limits if streaming else None

    def call(self, req: Any, ctx: Any, inner: Callable[[Any, Any], Any]) -> Any:
        if isinstance(req, _Malformed):
            _abort(ctx, req.error)
        if self.client_streaming:
            req = _checked(req)
        try:
            return inner(req, ctx)
        except errors.CbrError as err:
            _abort(ctx, err)
        except Exception as exc:
            if _is_abort(exc):
                raise
            _log_internal(self.method, exc)
            _abort(ctx, errors.InternalError())

    async def _enter(self, req: Any, ctx: Any) -> tuple[Any, str]:
        """Refuses a malformed request and a stream past the caps; returns
        the request to pass on and the peer whose stream count went up."""
        if isinstance(req, _Malformed):
            await _abort_async(ctx, req.error)
        if self.client_streaming:
            req = _checked_async(req)
        peer = ""
        if self.limits is not None:
            try:
                self.limits.enter(candidate := peer_host(ctx))
            except errors.CbrError as err:
                await _abort_async(ctx, err)
            peer = candidate
        return req, peer

    async def _fail(self, ctx: Any, exc: Exception) -> NoReturn:
        if isinstance(exc, errors.CbrError):
            await _abort_async(ctx, exc)
        if _is_abort(exc):
            raise exc
        _log_internal(self.method, exc)
        await _abort_async(ctx, errors.InternalError())

    def _leave(self, peer: str) -> None:
        if self.limits is not None and peer:
            self.limits.leave(peer)

    async def coro(self, req: Any, ctx: Any, inner: Callable[[Any, Any], Any]) -> Any:
        # Streams written with context.write() are coroutines too.
        req, peer = await self._enter(req, ctx)
        try:
            return await inner(req, ctx)
        except Exception as exc:
            await self._fail(ctx, exc)
        finally:
            self._leave(peer)

    async def stream(self, req: Any, ctx: Any,
                     inner: Callable[[Any, Any], Any]) -> AsyncIterator[Any]:
        req, peer = await self._enter(req, ctx)
        try:
            async for item in inner(req, ctx):
                yield item
        except Exception as exc:
            await self._fail(ctx, exc)
        finally:
            self._leave(peer)


class ErrorInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, limits: StreamLimits | None = None) -> None:
        self._limits = limits

    async def intercept_service(self, continuation: Any,
                                details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        method = details.method
        around = _Errors(method, bool(handler.stream_unary or handler.stream_stream),
                         self._limits, bool(handler.unary_stream or handler.stream_stream))
        return wrap(handler, around, deserializer=_safe(method))


def _is_abort(exc: BaseException) -> bool:
    # A sync context's abort() raises a bare Exception() (grpc.server) or an
    # AbortError (grpc.aio's thread pool); an async one raises AbortError.
    return (type(exc) is Exception and not exc.args) \
        or isinstance(exc, grpc.RpcError | grpc.aio.AbortError)


class Signed:
    """A request message together with the digest of the bytes it came from."""

    __slots__ = ("digest", "message")

    def __init__(self, message: Any, digest: str) -> None:
        self.message = message
        self.digest = digest


def _digesting(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def run(raw: bytes) -> Signed:
        return Signed(deserialize(raw), signing.body_digest(raw))

    return run


class _Auth(Around):
    def __init__(self, interceptor: AuthInterceptor, method: str,
                 metadata: dict[str, str]) -> None:
        self.interceptor, self.method, self.metadata = interceptor, method, metadata

    def check(self, digest: str, ctx: Any) -> Caller:
        caller = self.interceptor.authenticate(self.method, self.metadata, digest,
                                               str(ctx.peer() or ""))
        self.interceptor.authorize(self.method, caller)
        return caller

    def call(self, req: Signed, ctx: Any, inner: Callable[[Any, Any], Any]) -> Any:
        token = set_caller(self.check(req.digest, ctx))
        try:
            return inner(req.message, ctx)
        finally:
            reset_caller(token)

    async def coro(self, req: Signed, ctx: Any, inner: Callable[[Any, Any], Any]) -> Any:
        # The database work of checking a key runs off the event loop.
        caller = await asyncio.to_thread(self.check, req.digest, ctx)
        token = set_caller(caller)
        try:
            return await inner(req.message, ctx)
        finally:
            reset_caller(token)

    async def stream(self, req: Signed, ctx: Any,
                     inner: Callable[[Any, Any], Any]) -> AsyncIterator[Any]:
        caller = await asyncio.to_thread(self.check, req.digest, ctx)
        token = set_caller(caller)
        try:
            async for item in inner(req.message, ctx):
                yield item
        finally:
            reset_caller(token)


class _Refuse(Around):
    def __init__(self, err: errors.CbrError) -> None:
        self.err = err

    def call(self, req: Any, ctx: Any, inner: Callable[[Any, Any], Any]) -> Any:
        raise self.err

    async def coro(self, req: Any, ctx: Any, inner: Callable[[Any, Any], Any]) -> Any:
        raise self.err

    async def stream(self, req: Any, ctx: Any,
                     inner: Callable[[Any, Any], Any]) -> AsyncIterator[Any]:
        raise self.err
        yield  # an async generator


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, app: App) -> None:
        self._app = app
        self._guard = replay.ReplayGuard(app.db, signing.SIGNATURE_WINDOW_SECONDS)
        self._keys = iam.access_key_cache(app)

    async def intercept_service(self, continuation: Any,
                                details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        method = details.method
        if handler is None or method in actions.UNSIGNED_METHODS:
            return handler
        if handler.stream_unary or handler.stream_stream:
            return wrap(handler, _Refuse(errors.PermissionDenied(
                f"{method} takes no signed calls.")))
        metadata = {k: v for k, v in (details.invocation_metadata or ())
                    if isinstance(v, str)}
        return wrap(handler, _Auth(self, method, metadata), deserializer=_digesting)

    def authenticate(self, method: str, metadata: dict[str, str], digest: str,
                     peer: str = "") -> Caller:
        if console_sessions.API_SESSION_HEADER in metadata:
            return self._console_caller(metadata, peer)
        try:
            headers = signing.SignedHeaders(
                metadata[signing.HEADER_ACCESS_KEY], metadata[signing.HEADER_TIMESTAMP],
                metadata[signing.HEADER_NONCE], metadata[signing.HEADER_SIGNATURE])
        except KeyError as missing:
            raise errors.Unauthenticated(
                f"The call is not signed: metadata {missing} is missing. Sign every call "
                "with an access key (see README, 'Signed calls').") from None
        now = self._app.clock.time()
        try:
            ts = int(headers.timestamp)
        except ValueError:
            raise errors.Unauthenticated(
                f"{signing.HEADER_TIMESTAMP} must be Unix seconds.") from None
        if abs(now - ts) > signing.SIGNATURE_WINDOW_SECONDS:
            raise errors.Unauthenticated(
                f"The signature's timestamp is {int(now - ts)} s from the controller's clock; "
                f"it must be within {signing.SIGNATURE_WINDOW_SECONDS // 60} minutes. "
                "Check the client's clock.")
        if not 8 <= len(headers.nonce) <= signing.NONCE_MAX_LENGTH:
            raise errors.Unauthenticated(
                f"{signing.HEADER_NONCE} must be 8 to {signing.NONCE_MAX_LENGTH} characters.")
        key = self._keys.lookup(headers.access_key)
        if key is not None:
            attribute(key.caller)  # a refusal from here on is recorded as this key's
        if key is None or not signing.verify(key.secret, method, headers, digest):
            raise errors.Unauthenticated(
                "The signature does not match: unknown or inactive access key, wrong secret "
                "key, or a request changed after signing.")
        admission = self._guard.admit(headers.access_key, headers.nonce, ts, now)
        if admission is replay.Admission.KEY_GONE:
            raise errors.Unauthenticated(
                "The access key was deleted or disabled; use another key.")
        if admission is replay.Admission.REPLAY:
            raise errors.Unauthenticated(
                "This signature was already used (replay refused). Sign each call anew.")
        return key.caller

    def _console_caller(self, metadata: dict[str, str], peer: str) -> Caller:
        """A call the web console makes for a signed-in browser: it comes over
        the controller's private socket (console.api), never from the
        network, and carries the session token, from which the caller is
        rebuilt at each call. The browser's address is its audit source."""
        if not peer.startswith("unix:"):
            raise errors.Unauthenticated(
                "Console sessions are accepted only from the controller's own console; "
                "sign calls with an access key.")
        token = metadata[console_sessions.API_SESSION_HEADER]
        with self._app.db.begin() as session:
            caller = console_sessions.caller_for(session, token, self._app.clock.now())
        if caller is None:
            raise errors.Unauthenticated(
                "The console session ended (signed out or expired); sign in again.")
        source = metadata.get(console_sessions.API_SOURCE_HEADER, "")
        attribute(caller, source=f"console {source}".strip())
        return caller

    @staticmethod
    def authorize(method: str, caller: Caller) -> None:
        action = actions.missing_action(method, caller)
        if action is None:
            return
        if action == method:
            raise errors.PermissionDenied(f"{method} is not open to API calls.")
        raise errors.PermissionDenied(
            f"The caller lacks the action {action}; grant it (or a policy that covers it, "
            f"such as {iam.policy_covering(action)}) to the user.", action=action)


def server_interceptors(app: App) -> list[grpc.aio.ServerInterceptor]:
    """Outermost first: errors wrap the audit, which wraps authentication, so
    authentication's refusals map to statuses and are recorded."""
    from controller.api.auditing import AuditInterceptor

    return [ErrorInterceptor(StreamLimits(app.config.max_streams,
                                          app.config.max_streams_per_peer)),
            AuditInterceptor(app), AuthInterceptor(app)]
