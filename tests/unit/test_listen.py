"""No listener shares its port; a clash is one clear error."""

from __future__ import annotations

from concurrent import futures

import grpc
import pytest

from agent.importer import server_options
from cbr.listen import bind


def test_a_second_server_on_a_taken_port_is_refused_not_shared() -> None:
    first = grpc.server(futures.ThreadPoolExecutor(1), options=server_options())
    port = bind(first, "127.0.0.1:0", what="imports")
    first.start()
    try:
        second = grpc.server(futures.ThreadPoolExecutor(1), options=server_options())
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port} for imports: "
                                          "the port is in use"):
            bind(second, f"127.0.0.1:{port}", what="imports")
    finally:
        first.stop(None)
