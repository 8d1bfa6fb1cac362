"""What the standard health service answers: SERVING only while this
controller can do its work.

Load balancers and orchestrators ask ``grpc.health.v1.Health``. A controller
whose state database does not answer cannot serve a single call, so it says
NOT_SERVING until the database answers again, and a controller that is
stopping says NOT_SERVING before it stops taking calls, so traffic drains to
the others of the cloud first. Every service of the API depends on the same
database, so all report the same status.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from grpc_health.v1 import health_pb2

from controller.app import App

log = logging.getLogger("cbr.controller.health")

# How often the database is asked, and how long an answer may take.
PROBE_EVERY_S = 2.0
PROBE_TIMEOUT_S = 5.0

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class HealthWatch:
    """Probes the database on the API's event loop and sets every service's status."""

    def __init__(self, app: App, servicer: Any, names: Sequence[str]) -> None:
        self._app = app
        self._servicer = servicer
        self._names = list(names)
        self._serving: bool | None = None
        self._task: asyncio.Task[None] | None = None
        self._probe: asyncio.Future[None] | None = None

    async def start(self) -> None:
        """Sets the first status from a first probe, then keeps probing."""
        await self._check()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(PROBE_EVERY_S)
            try:
                await self._check()
            except asyncio.CancelledError:
                raise
            except Exception:  # a health probe must never stop probing
                log.exception("health probe failed unexpectedly")

    async def _check(self) -> None:
        serving = await self._database_answers()
        if serving == self._serving:
            return
        for name in self._names:
            await self._servicer.set(name, SERVING if serving else NOT_SERVING)
        if self._serving is not None or not serving:
            log.log(logging.INFO if serving else logging.ERROR,
                    "the state database %s; health is %s",
                    "answers again" if serving else "does not answer",
                    "SERVING" if serving else "NOT_SERVING")
        self._serving = serving

    async def _database_answers(self) -> bool:
        # A probe still hanging from before counts as no answer: never more
        # than one thread waits on a database that does not answer.
        if self._probe is not None and not self._probe.done():
            return False
        loop = asyncio.get_running_loop()
        self._probe = loop.run_in_executor(None, self._app.db.ping)
        try:
            await asyncio.wait_for(asyncio.shield(self._probe), PROBE_TIMEOUT_S)
        except Exception as exc:
            log.debug("database probe: %s", exc)
            return False
        return True

    async def shutdown(self) -> None:
        """NOT_SERVING for good: the process is stopping."""
        if self._task is not None:
            self._task.cancel()
        await self._servicer.enter_graceful_shutdown()
        log.info("stopping: health is NOT_SERVING")
