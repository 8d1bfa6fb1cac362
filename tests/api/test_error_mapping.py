"""The error interceptor is the one place errors become statuses."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from cbr import errors
from cbr.client import error_from_rpc
from controller.aioserver import LoopServer
from controller.api.interceptors import ErrorInterceptor


def _raise_cbr(req: bytes, ctx: grpc.ServicerContext) -> bytes:
    raise errors.ResourceInOtherVault("Resource 'web' is in vault 'a'.", vault_id="a")


def _raise_bug(req: bytes, ctx: grpc.ServicerContext) -> bytes:
    raise RuntimeError("secret internals /etc/passwd")


def _abort(req: bytes, ctx: grpc.ServicerContext) -> bytes:
    ctx.abort(grpc.StatusCode.OUT_OF_RANGE, "aborted by hand")
    return b""


def _stream_then_fail(req: bytes, ctx: Any) -> Iterator[bytes]:
    yield b"one"
    raise errors.VaultNotFound("gone mid-stream")


async def _async_stream_then_fail(req: bytes, ctx: Any) -> AsyncIterator[bytes]:
    yield b"one"
    raise errors.VaultNotFound("gone mid-stream")


@pytest.fixture
def channel() -> Iterator[grpc.Channel]:
    """The API's kind of server: grpc.aio, plain handlers on a thread pool."""
    handlers: dict[str, Any] = {
        "Cbr": grpc.unary_unary_rpc_method_handler(_raise_cbr),
        "Bug": grpc.unary_unary_rpc_method_handler(_raise_bug),
        "Abort": grpc.unary_unary_rpc_method_handler(_abort),
        "AsyncStream": grpc.unary_stream_rpc_method_handler(_async_stream_then_fail),
        "Stream": grpc.unary_stream_rpc_method_handler(_stream_then_fail),
    }

    async def build() -> tuple[grpc.aio.Server, int]:
        server = grpc.aio.server(futures.ThreadPoolExecutor(4),
                                 interceptors=[ErrorInterceptor()])
        server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler("t.T", handlers)])
        return server, server.add_insecure_port("127.0.0.1:0")

    server = LoopServer(build)
    server.start()
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        yield ch
    server.stop(None)


def test_a_cbr_error_carries_status_code_message_and_error_info(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as exc:
        channel.unary_unary("/t.T/Cbr")(b"")
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert exc.value.details() == "Resource already in other vault. Resource 'web' is in vault 'a'."
    err = error_from_rpc(exc.value)
    assert isinstance(err, errors.ResourceInOtherVault)
    assert err.metadata == {"vault_id": "a"}


def test_an_unexpected_exception_is_internal_without_internals(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as exc:
        channel.unary_unary("/t.T/Bug")(b"")
    assert exc.value.code() == grpc.StatusCode.INTERNAL
    assert "passwd" not in (exc.value.details() or "")
    err = error_from_rpc(exc.value)
    assert err is not None and err.code == "BackupService.0500"


def test_a_servicer_abort_passes_through_unchanged(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as exc:
        channel.unary_unary("/t.T/Abort")(b"")
    assert exc.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert exc.value.details() == "aborted by hand"


def test_an_error_in_a_stream_ends_it_with_the_mapped_status(
        channel: grpc.Channel) -> None:
    stream = channel.unary_stream("/t.T/AsyncStream")(b"")
    assert next(stream) == b"one"
    with pytest.raises(grpc.RpcError) as exc:
        next(stream)
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND
    err = error_from_rpc(exc.value)
    assert err is not None and err.code == "BackupService.6105"


def test_an_error_in_a_plain_generator_stream_ends_it_with_the_mapped_status(
        channel: grpc.Channel) -> None:
    for _ in range(20):  # an abort from a plain generator once deadlocked at times
        stream = channel.unary_stream("/t.T/Stream")(b"", timeout=10)
        assert next(stream) == b"one"
        with pytest.raises(grpc.RpcError) as exc:
            next(stream)
        assert exc.value.code() == grpc.StatusCode.NOT_FOUND
