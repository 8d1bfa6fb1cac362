"""TaskService: get, list, a live watch of one task, and cancelling one."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc

from cbr.v1 import task_pb2, task_pb2_grpc
from controller.api import convert
from controller.api.base import Servicer
from controller.app import App
from controller.persistence.vocabulary import TaskStatus
from controller.services import tasks

log = logging.getLogger("cbr.controller.api")

# How often watches look for changes; progress moves at human speed.
WATCH_POLL_S = 0.2


class TaskServicer(Servicer, task_pb2_grpc.TaskServiceServicer):
    def __init__(self, app: App) -> None:
        super().__init__(app)
        self._watches = TaskWatches(app)

    def GetTask(self, request: task_pb2.GetTaskRequest,
                context: grpc.ServicerContext) -> task_pb2.GetTaskResponse:
        with self.app.db.read() as conn:
            return task_pb2.GetTaskResponse(
                task=convert.task(tasks.task_row(conn, self.project_id, request.task_id)))

    def ListTasks(self, request: task_pb2.ListTasksRequest,
                  context: grpc.ServicerContext) -> task_pb2.ListTasksResponse:
        f = tasks.TaskFilter(
            operation_type=convert.optional_enum(task_pb2.OperationType, request.operation_type,
                                                 "operation_type"),
            status=convert.optional_enum(task_pb2.TaskStatus, request.status, "status"),
            vault_id=request.vault_id, resource_id=request.resource_id,
            checkpoint_id=request.checkpoint_id, policy_id=request.policy_id,
            newest_first=request.newest_first)
        with self.app.db.read() as conn:
            items, token, total = tasks.list_tasks(conn, self.project_id, f, request.page_size,
                                                   request.page_token)
            return task_pb2.ListTasksResponse(tasks=[convert.task(t) for t in items],
                                              next_page_token=token, total_count=total)

    def CancelTask(self, request: task_pb2.CancelTaskRequest,
                   context: grpc.ServicerContext) -> task_pb2.CancelTaskResponse:
        """A waiting task ends cancelled in this transaction; a running one's
        agent is asked after the commit (the hub ends the task when the agent
        confirms, or without it when it cannot be asked or stays silent)."""
        hub = self.app.hub
        with self.app.db.begin() as session:
            task = tasks.request_cancel(session, self.project_id, request.task_id,
                                        self.app.clock.now())
            agent_id, running = task.agent_id, task.status == TaskStatus.RUNNING
            if not running and hub is not None:
                hub.end_cancelled(session, task.id, tasks.CANCELLED_BEFORE_START)
            elif not running:  # no agents here: nothing handles its end
                tasks.finish_cancelled(session, task.id, tasks.CANCELLED_BEFORE_START,
                                       self.app.clock.now())
        if running and hub is not None:
            hub.cancel_running(agent_id, request.task_id)
        with self.app.db.read() as conn:
            return task_pb2.CancelTaskResponse(
                task=convert.task(tasks.task_row(conn, self.project_id, request.task_id)))

    async def WatchTask(self, request: task_pb2.WatchTaskRequest,
                        context: grpc.aio.ServicerContext
                        ) -> AsyncIterator[task_pb2.WatchTaskResponse]:
        """A coroutine: a watch waits on the event loop, holding no thread,
        and one poller (TaskWatches) serves every watch."""
        project_id = self.project_id
        last: task_pb2.Task | None = None
        while True:
            current, stamp = await asyncio.to_thread(self._read, project_id, request.task_id)
            if current != last:
                yield task_pb2.WatchTaskResponse(task=current)
                last = current
            if convert.enum_name(task_pb2.TaskStatus, current.status) in tasks.FINAL_STATUSES:
                return
            await self._watches.changed(request.task_id, stamp)

    def _read(self, project_id: str, task_id: str) -> tuple[task_pb2.Task, Any]:
        with self.app.db.read() as conn:
            row = tasks.task_row(conn, project_id, task_id)
            return convert.task(row), row.updated_at


class TaskWatches:
    """Wakes task watches when their task changes, for any number of
    watches with one query per tick: the ids watched and when each last
    changed. Lives on the API's event loop; the poller runs while anyone
    watches."""

    def __init__(self, app: App) -> None:
        self._app = app
        self._waiting: dict[str, list[tuple[Any, asyncio.Event]]] = {}
        self._poller: asyncio.Task[None] | None = None

    async def changed(self, task_id: str, seen: Any) -> None:
        """Returns once the task's change stamp is no longer ``seen``."""
        event = asyncio.Event()
        entry = (seen, event)
        self._waiting.setdefault(task_id, []).append(entry)
        if self._poller is None or self._poller.done():
            self._poller = asyncio.get_running_loop().create_task(self._poll())
        try:
            await event.wait()
        finally:
            waiters = self._waiting.get(task_id, [])
            if entry in waiters:
                waiters.remove(entry)
            if not waiters:
                self._waiting.pop(task_id, None)

    async def _poll(self) -> None:
        while self._waiting:
            await asyncio.sleep(WATCH_POLL_S)
            ids = list(self._waiting)
            try:
                stamps = await asyncio.to_thread(self._stamps, ids)
            except Exception:  # a busy database: the next tick tries again
                log.warning("task watch poll failed", exc_info=True)
                continue
            for task_id in ids:
                for seen, event in self._waiting.get(task_id, []):
                    if stamps.get(task_id) != seen:
                        event.set()

    def _stamps(self, ids: list[str]) -> dict[str, Any]:
        with self._app.db.read() as conn:
            return tasks.change_stamps(conn, ids)
