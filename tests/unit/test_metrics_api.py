"""API calls are counted by method and the status the client got, in every handler form."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from cbr import errors
from controller import metrics
from controller.aioserver import LoopServer
from controller.api.interceptors import ErrorInterceptor
from controller.api.metering import MetricsInterceptor


def _ok(req: bytes, ctx: Any) -> bytes:
    return b"fine"


def _refused(req: bytes, ctx: Any) -> bytes:
    raise errors.VaultNotFound("no such vault")


def _bug(req: bytes, ctx: Any) -> bytes:
    raise RuntimeError("a bug")


def _abort(req: bytes, ctx: Any) -> bytes:
    ctx.abort(grpc.StatusCode.OUT_OF_RANGE, "aborted by hand")
    return b""


async def _async_ok(req: bytes, ctx: Any) -> bytes:
    return b"fine"


async def _async_refused(req: bytes, ctx: Any) -> bytes:
    raise errors.PermissionDenied("no")


def _stream_then_fail(req: bytes, ctx: Any) -> Iterator[bytes]:
    yield b"one"
    raise errors.VaultNotFound("gone mid-stream")


async def _async_stream(req: bytes, ctx: Any) -> AsyncIterator[bytes]:
    yield b"one"
    yield b"two"


HANDLERS: dict[str, Any] = {
    "Ok": grpc.unary_unary_rpc_method_handler(_ok),
    "Refused": grpc.unary_unary_rpc_method_handler(_refused),
    "Bug": grpc.unary_unary_rpc_method_handler(_bug),
    "Abort": grpc.unary_unary_rpc_method_handler(_abort),
    "AsyncOk": grpc.unary_unary_rpc_method_handler(_async_ok),
    "AsyncRefused": grpc.unary_unary_rpc_method_handler(_async_refused),
    "Stream": grpc.unary_stream_rpc_method_handler(_stream_then_fail),
    "AsyncStream": grpc.unary_stream_rpc_method_handler(_async_stream),
}


@pytest.fixture
def channel() -> Iterator[grpc.Channel]:
    """The API's kind of server and interceptor order: metrics outermost."""

    async def build() -> tuple[grpc.aio.Server, int]:
        server = grpc.aio.server(futures.ThreadPoolExecutor(4),
                                 interceptors=[MetricsInterceptor(), ErrorInterceptor()])
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("m.M", HANDLERS)])
        return server, server.add_insecure_port("127.0.0.1:0")

    server = LoopServer(build)
    server.start()
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        yield ch
    server.stop(None)


def _calls(method: str, code: str) -> float:
    return metrics.REGISTRY.get_sample_value(
        "cbr_api_calls_total", {"method": f"/m.M/{method}", "code": code}) or 0.0


def _settled(read: Any, want: float) -> float:
    """An abort sends the status before the handler's thread unwinds, so the
    client may hear it a moment before the call is counted."""
    deadline = time.monotonic() + 5
    while (value := read()) != want and time.monotonic() < deadline:
        time.sleep(0.01)
    return float(value)


def _latency_count(method: str) -> float:
    return metrics.REGISTRY.get_sample_value(
        "cbr_api_call_duration_seconds_count", {"method": f"/m.M/{method}"}) or 0.0


@pytest.mark.parametrize(("method", "code"), [
    ("Ok", "OK"), ("Refused", "NOT_FOUND"), ("Bug", "INTERNAL"), ("Abort", "OUT_OF_RANGE"),
    ("AsyncOk", "OK"), ("AsyncRefused", "PERMISSION_DENIED")])
def test_a_unary_call_is_counted_with_its_status_and_timed(
        channel: grpc.Channel, method: str, code: str) -> None:
    before, timed = _calls(method, code), _latency_count(method)
    try:
        channel.unary_unary(f"/m.M/{method}")(b"", timeout=10)
    except grpc.RpcError as exc:
        assert exc.code().name == code
    assert _settled(lambda: _calls(method, code), before + 1) == before + 1
    assert _settled(lambda: _latency_count(method), timed + 1) == timed + 1


def test_a_stream_is_counted_when_it_ends_and_not_timed(channel: grpc.Channel) -> None:
    ok, failed = _calls("AsyncStream", "OK"), _calls("Stream", "NOT_FOUND")
    assert list(channel.unary_stream("/m.M/AsyncStream")(b"", timeout=10)) == [b"one", b"two"]
    with pytest.raises(grpc.RpcError):
        list(channel.unary_stream("/m.M/Stream")(b"", timeout=10))
    assert _settled(lambda: _calls("AsyncStream", "OK"), ok + 1) == ok + 1
    assert _settled(lambda: _calls("Stream", "NOT_FOUND"), failed + 1) == failed + 1
    assert _latency_count("AsyncStream") == 0


def test_an_unknown_method_adds_no_series(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as exc:
        channel.unary_unary("/m.M/NoSuchMethod")(b"", timeout=10)
    assert exc.value.code() == grpc.StatusCode.UNIMPLEMENTED
    names = {s.labels.get("method") for family in metrics.REGISTRY.collect()
             for s in family.samples}
    assert "/m.M/NoSuchMethod" not in names

