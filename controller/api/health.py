"""What the standard health service answers: SERVING only while this
controller can do its work.

Load balancers and orchestrators ask ``grpc.health.v1.Health``. A controller
whose state database does not answer cannot serve a single call, so it says
NOT_SERVING until the database answers again, and a controller that is
stopping says NOT_SERVING before it stops taking calls, so traffic drains to
the others of the cloud first. Services differ where their dependencies do:
the vault, backup and replication services also need the vault storage, so
they say NOT_SERVING while it does not answer (an unmounted disk, an S3
endpoint down), while tasks, policies and IAM keep serving.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from grpc_health.v1 import health_pb2

from controller.app import App

log = logging.getLogger("cbr.controller.health")

# The services that need the vault storage besides the database: vaults are
# made and checked there, backups read (browse, diff) and replicas land there.
STORAGE_SERVICES = frozenset({"cbr.v1.VaultService", "cbr.v1.BackupService",
                              "cbr.v1.ReplicationService"})

# How often the database and the storage are asked, and how long an answer may take.
PROBE_EVERY_S = 2.0
PROBE_TIMEOUT_S = 5.0

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class _Probe:
    """One dependency asked on a worker thread; an answer slower than
    PROBE_TIMEOUT_S is no answer, and a probe still hanging from before
    counts as no answer: never more than one thread waits on it."""

    def __init__(self, name: str, ask: Callable[[], None]) -> None:
        self.name, self._ask = name, ask
        self._pending: asyncio.Future[None] | None = None

    async def answers(self) -> bool:
        if self._pending is not None and not self._pending.done():
            return False
        self._pending = asyncio.get_running_loop().run_in_executor(None, self._ask)
        try:
            await asyncio.wait_for(asyncio.shield(self._pending), PROBE_TIMEOUT_S)
        except Exception as exc:
            log.debug("%s probe: %s", self.name, exc)
            return False
        return True


class HealthWatch:
    """Probes the database and the vault storage on the API's event loop and
    sets each service's status."""

    def __init__(self, app: App, servicer: Any, names: Sequence[str]) -> None:
        self._servicer = servicer
        self._names = list(names)
        self._status: dict[str, bool] = {}
        self._up: dict[str, bool] = {}
        self._database = _Probe("the state database", app.db.ping)
        self._storage = _Probe("the vault storage", app.storage.probe)
        self._task: asyncio.Task[None] | None = None

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
        database = await self._database.answers()
        storage = await self._storage.answers()
        for probe, up in ((self._database, database), (self._storage, storage)):
            if self._up.get(probe.name, True) != up:
                log.log(logging.INFO if up else logging.ERROR, "%s %s", probe.name,
                        "answers again" if up else "does not answer")
            self._up[probe.name] = up
        first, changed = not self._status, []
        for name in self._names:
            serving = database and (storage or name not in STORAGE_SERVICES)
            if self._status.get(name) != serving:
                self._status[name] = serving
                await self._servicer.set(name, SERVING if serving else NOT_SERVING)
                changed.append(f"{name or 'the server'} {'SERVING' if serving else 'NOT_SERVING'}")
        if changed and not (first and database and storage):
            statuses = {self._status[name] for name in self._names}
            log.info("health: %s", ("every service " + ("SERVING" if database else
                                                         "NOT_SERVING"))
                     if len(changed) == len(self._names) and len(statuses) == 1
                     else ", ".join(changed))

    async def shutdown(self) -> None:
        """NOT_SERVING for good: the process is stopping."""
        if self._task is not None:
            self._task.cancel()
        await self._servicer.enter_graceful_shutdown()
        log.info("stopping: health is NOT_SERVING")
