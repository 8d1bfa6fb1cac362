"""Binding a gRPC server to its address, the same way in every process.

gRPC turns SO_REUSEPORT on by default, so a second controller or importer
started with the same address binds too and silently takes half of the
connections. Every listener here turns it off, and a clash is an error with
one line a person can act on, not a silent share nor a traceback.
"""

from __future__ import annotations

import errno
import socket
from typing import Any

import grpc


def _refuse_taken(address: str, what: str) -> None:
    """Tries the address with a plain socket first, so a port in use is our
    one line, not gRPC core's log line before it. (gRPC still decides: this
    only catches the common case early.)"""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if not port.isdigit() or int(port) == 0:
        return
    try:
        infos = socket.getaddrinfo(host or None, int(port), type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except OSError:
        return  # gRPC says what is wrong with the address
    for family, kind, proto, _name, sockaddr in infos[:1]:
        with socket.socket(family, kind, proto) as probe:
            # As gRPC does: a port whose old connections linger is free.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(sockaddr)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise OSError(f"cannot listen on {address} for {what}: the port is in use "
                                  "(by another process, or a second controller or agent "
                                  "given the same address)") from None


# Every server's options start with this.
NO_PORT_SHARING: tuple[str, int] = ("grpc.so_reuseport", 0)


def bind(server: Any, address: str, credentials: grpc.ServerCredentials | None = None,
         *, what: str) -> int:
    """Binds ``server`` (sync or aio) to ``address``; returns the port.

    Raises OSError naming ``what`` and the address when it cannot bind."""
    _refuse_taken(address, what)
    try:
        port = (server.add_secure_port(address, credentials) if credentials is not None
                else server.add_insecure_port(address))
    except RuntimeError:
        port = 0
    if not port:
        raise OSError(f"cannot listen on {address} for {what}: the port is in use (by another "
                      "process, or a second controller or agent given the same address) or "
                      "the address is not on this host")
    return int(port)
