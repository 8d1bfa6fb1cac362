"""A ``grpc.aio`` server on an event loop of its own thread, for plain code.

The controller is threads (the database, the scheduler, the hub) around two
asyncio servers: the API (controller.api.server) and the agent endpoint
(controller.agents.wiring). Each runs on its own loop thread, built and
stopped from plain code through this one class.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

T = TypeVar("T")


class LoopServer:
    """A ``grpc.aio`` server on an event loop of its own thread, driven from
    plain code (main, tests): ``start()``, ``stop(grace)``.

    ``build`` is a coroutine (run on that loop) that makes the server, adds
    its services and binds it, returning (server, port). Plain handlers run
    on ``threads`` (gRPC's migration pool); coroutine handlers on the loop.
    """

    def __init__(self, build: Callable[[], Awaitable[tuple[grpc.aio.Server, int]]],
                 name: str = "api") -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"{name}-loop",
                                        daemon=True)
        self._thread.start()
        # Run on the loop, in order, before the server stops taking calls
        # (the health service turns NOT_SERVING, so balancers drain it first).
        self.before_stop: list[Callable[[], Awaitable[None]]] = []
        try:
            self._server, self.port = self._run(build())
        except BaseException:
            self._run(_cancel_others())  # what build started, before the loop closes
            self._close_loop()
            raise

    def _run(self, coro: Awaitable[T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()  # type: ignore[arg-type]

    def start(self) -> None:
        self._run(self._server.start())

    def stop(self, grace: float | None = None) -> None:
        """Stops serving (in-flight calls get ``grace`` seconds), then the loop."""
        try:
            for hook in self.before_stop:
                self._run(hook())
            self._run(self._server.stop(grace))
            self._run(_cancel_others())
        finally:
            self._close_loop()

    def _close_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()


async def _cancel_others() -> None:
    """Ends what still runs on the loop (a watch poller), so nothing is
    destroyed while pending."""
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in others:
        task.cancel()
    await asyncio.gather(*others, return_exceptions=True)
