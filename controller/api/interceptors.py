"""Authentication, authorization and error mapping, each written once.

``ErrorInterceptor`` is the one place a ``cbr.errors.CbrError`` becomes a gRPC
status: the status code of its class, its message, and a
``google.rpc.ErrorInfo`` detail whose reason is the CBR code. Anything else
escaping a servicer is logged and returned as INTERNAL without internals.

``AuthInterceptor`` checks the AK/SK signature over the exact request bytes
(so it wraps the request deserializer to see them), the time window, the
nonce and the key's life (``controller.services.replay``), and the IAM action
the method needs, then publishes the caller for the servicer through
``controller.api.caller``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from cbr import errors, limits, signing
from cbr.status import status_of
from controller.api import actions
from controller.api.caller import Caller, reset_caller, set_caller
from controller.app import App
from controller.services import iam, replay

log = logging.getLogger("cbr.controller.api")


def _abort(context: grpc.ServicerContext, err: errors.CbrError) -> None:
    context.abort_with_status(status_of(err))


def _internal(context: grpc.ServicerContext, method: str, exc: BaseException) -> None:
    log.exception("unhandled error in %s", method, exc_info=exc)
    _abort(context, errors.InternalError())


def _wrap(handler: grpc.RpcMethodHandler, method: str,
          around: Callable[[Any, grpc.ServicerContext, Callable[[Any, Any], Any]], Any],
          deserializer: Callable[[Any], Callable[[bytes], Any]] | None = None
          ) -> grpc.RpcMethodHandler:
    """A copy of handler whose behavior runs inside ``around``."""
    req_deser = handler.request_deserializer
    if deserializer is not None and req_deser is not None:
        req_deser = deserializer(req_deser)
    if handler.unary_unary:
        inner = handler.unary_unary
        return grpc.unary_unary_rpc_method_handler(
            lambda req, ctx: around(req, ctx, inner),
            request_deserializer=req_deser, response_serializer=handler.response_serializer)
    if handler.unary_stream:
        inner_us = handler.unary_stream
        return grpc.unary_stream_rpc_method_handler(
            lambda req, ctx: around(req, ctx, inner_us),
            request_deserializer=req_deser, response_serializer=handler.response_serializer)
    if handler.stream_unary:
        inner_su = handler.stream_unary
        return grpc.stream_unary_rpc_method_handler(
            lambda req, ctx: around(req, ctx, inner_su),
            request_deserializer=req_deser, response_serializer=handler.response_serializer)
    inner_ss: Any = handler.stream_stream
    return grpc.stream_stream_rpc_method_handler(
        lambda req, ctx: around(req, ctx, inner_ss),
        request_deserializer=req_deser, response_serializer=handler.response_serializer)


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


class ErrorInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        method = details.method
        streaming = handler.unary_stream or handler.stream_stream
        client_streaming = handler.stream_unary or handler.stream_stream

        def around(req: Any, ctx: grpc.ServicerContext, inner: Callable[[Any, Any], Any]) -> Any:
            if isinstance(req, _Malformed):
                _abort(ctx, req.error)
            if client_streaming:
                req = _checked(req)
            if streaming:
                return _guard_stream(req, ctx, inner, method)
            try:
                return inner(req, ctx)
            except errors.CbrError as err:
                _abort(ctx, err)
            except Exception as exc:
                if _is_abort(exc):
                    raise
                _internal(ctx, method, exc)
            return None

        return _wrap(handler, method, around, deserializer=_safe(method))


def _is_abort(exc: BaseException) -> bool:
    # grpc's context.abort() sets the status, then raises a bare Exception().
    return (type(exc) is Exception and not exc.args) or isinstance(exc, grpc.RpcError)


def _guard_stream(req: Any, ctx: grpc.ServicerContext, inner: Callable[[Any, Any], Any],
                  method: str) -> Iterator[Any]:
    try:
        yield from inner(req, ctx)
    except errors.CbrError as err:
        _abort(ctx, err)
    except Exception as exc:
        if _is_abort(exc):
            raise
        _internal(ctx, method, exc)


class _Signed:
    """A request message together with the digest of the bytes it came from."""

    __slots__ = ("digest", "message")

    def __init__(self, message: Any, digest: str) -> None:
        self.message = message
        self.digest = digest


def _digesting(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def run(raw: bytes) -> _Signed:
        return _Signed(deserialize(raw), signing.body_digest(raw))

    return run


class AuthInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, app: App) -> None:
        self._app = app
        self._guard = replay.ReplayGuard(app.db, signing.SIGNATURE_WINDOW_SECONDS)
        self._keys = iam.AccessKeyCache(app)

    def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        method = details.method
        if handler is None or method in actions.UNSIGNED_METHODS:
            return handler
        if handler.stream_unary or handler.stream_stream:
            return _refuse_handler(handler, errors.PermissionDenied(
                f"{method} takes no signed calls."))
        metadata = {k: v for k, v in (details.invocation_metadata or ())
                    if isinstance(v, str)}

        def around(req: _Signed, ctx: grpc.ServicerContext,
                   inner: Callable[[Any, Any], Any]) -> Any:
            caller = self.authenticate(method, metadata, req.digest)
            self.authorize(method, caller)
            token = set_caller(caller)
            try:
                result = inner(req.message, ctx)
                if handler.unary_stream:
                    return _with_caller(result, caller)
                return result
            finally:
                reset_caller(token)

        return _wrap(handler, method, around, deserializer=_digesting)

    def authenticate(self, method: str, metadata: dict[str, str], digest: str) -> Caller:
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

    @staticmethod
    def authorize(method: str, caller: Caller) -> None:
        action = actions.METHOD_ACTIONS.get(method)
        if action is None:
            raise errors.PermissionDenied(f"{method} is not open to API calls.")
        if action in actions.ALWAYS_ALLOWED or action in caller.actions:
            return
        raise errors.PermissionDenied(
            f"The caller lacks the action {action}; grant it (or a policy that covers it, "
            f"such as {iam.policy_covering(action)}) to the user.", action=action)


def _with_caller(stream: Iterator[Any], caller: Caller) -> Iterator[Any]:
    token = set_caller(caller)
    try:
        yield from stream
    finally:
        reset_caller(token)


def _refuse_handler(handler: grpc.RpcMethodHandler, err: errors.CbrError) -> Any:
    def refuse(req: Any, ctx: grpc.ServicerContext, inner: Any) -> Any:
        raise err

    return _wrap(handler, "", refuse)


def server_interceptors(app: App) -> list[grpc.ServerInterceptor]:
    """Outermost first: errors wrap authentication, so its refusals map too."""
    return [ErrorInterceptor(), AuthInterceptor(app)]
