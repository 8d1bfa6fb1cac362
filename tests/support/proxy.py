"""A TCP proxy on loopback that breaks connections on purpose.

Tests put it between a source agent and an importer: it forwards bytes both
ways, counts what the client sent, cuts a connection once it has carried a
set number of client bytes, and can run a hook when the total crosses a
threshold (to kill a process mid-stream).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable


class CuttingProxy:
    def __init__(self, upstream: tuple[str, int], *, cut_after: list[int] | None = None) -> None:
        """``cut_after[i]``: client bytes after which connection ``i`` is cut
        (connections beyond the list are never cut)."""
        self.upstream = upstream
        self.cut_after = list(cut_after or [])
        self.total_client_bytes = 0
        self.connections = 0
        self.cuts = 0
        self._hooks: list[tuple[int, Callable[[], None]]] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="proxy", daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def when_total_exceeds(self, count: int, hook: Callable[[], None]) -> None:
        """Runs ``hook`` once, on its own thread, when the client bytes of all
        connections pass ``count``."""
        with self._lock:
            self._hooks.append((count, hook))

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                index = self.connections
                self.connections += 1
            limit = self.cut_after[index] if index < len(self.cut_after) else None
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            closed = threading.Event()
            threading.Thread(target=self._pump, args=(client, server, limit, closed, True),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, None, closed, False),
                             daemon=True).start()

    def _count(self, n: int) -> None:
        fire = []
        with self._lock:
            self.total_client_bytes += n
            for hook in list(self._hooks):
                if self.total_client_bytes >= hook[0]:
                    self._hooks.remove(hook)
                    fire.append(hook[1])
        for hook in fire:
            threading.Thread(target=hook, daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, limit: int | None,
              closed: threading.Event, from_client: bool) -> None:
        carried = 0
        try:
            while not closed.is_set():
                data = src.recv(65536)
                if not data:
                    break
                if limit is not None and carried + len(data) >= limit:
                    with self._lock:
                        self.cuts += 1
                    break
                dst.sendall(data)
                carried += len(data)
                if from_client:
                    self._count(len(data))
        except OSError:
            pass
        finally:
            closed.set()
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._listener.close()
