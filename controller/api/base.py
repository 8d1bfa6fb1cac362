"""What every servicer needs: the app, the caller's project, now."""

from __future__ import annotations

import asyncio
import contextvars
import datetime as dt
import functools
from collections.abc import Awaitable, Callable
from concurrent import futures
from typing import Any, TypeVar

from controller.api.caller import Caller, current_caller
from controller.app import App
from controller.jobs.maintenance import Maintenance


class Servicer:
    def __init__(self, app: App) -> None:
        self.app = app

    @property
    def caller(self) -> Caller:
        return current_caller()

    @property
    def project_id(self) -> str:
        return current_caller().account_id

    @property
    def maintenance(self) -> Maintenance:
        return self.app.jobs[0]

    def policy_changed(self, policy_id: str) -> None:
        """The policy loop follows a changed policy or association at once
        (in the leading controller; others follow within its reconcile
        interval)."""
        if self.app.scheduler is not None:
            self.app.scheduler.reconcile(policy_id)

    def now(self) -> dt.datetime:
        return self.app.clock.now()


R = TypeVar("R")
# Calls that wait on another cloud run here, so a slow or silent target
# holds none of the threads every other API call needs.
OUTBOUND_THREADS = 8
_outbound = futures.ThreadPoolExecutor(OUTBOUND_THREADS, thread_name_prefix="outbound")


def calls_other_clouds(method: Callable[..., R]) -> Callable[..., Awaitable[R]]:
    """A servicer method that calls another cloud, made a coroutine that
    runs its body on the small outbound pool (with the caller's context)."""

    @functools.wraps(method)
    async def run(self: Any, request: Any, context: Any) -> R:
        call = functools.partial(contextvars.copy_context().run, method, self, request, context)
        return await asyncio.get_running_loop().run_in_executor(_outbound, call)

    return run
