"""TaskService: get, list, and a live watch of one task."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc

from cbr.v1 import task_pb2, task_pb2_grpc
from controller.api import convert
from controller.api.base import Servicer
from controller.persistence.models import Task
from controller.services import paging, tasks

# How often a watch looks for changes; progress moves at human speed.
WATCH_POLL_S = 0.2


class TaskServicer(Servicer, task_pb2_grpc.TaskServiceServicer):
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
            checkpoint_id=request.checkpoint_id, policy_id=request.policy_id)
        with self.app.db.read() as conn:
            items, token, total = paging.paginate(conn, tasks.task_query(self.project_id, f),
                                                  Task, request.page_size, request.page_token,
                                                  rows=True)
            return task_pb2.ListTasksResponse(tasks=[convert.task(t) for t in items],
                                              next_page_token=token, total_count=total)

    def WatchTask(self, request: task_pb2.WatchTaskRequest,
                  context: grpc.ServicerContext) -> Iterator[task_pb2.WatchTaskResponse]:
        project_id = self.project_id
        last: task_pb2.Task | None = None
        while context.is_active():
            with self.app.db.read() as conn:
                current = convert.task(tasks.task_row(conn, project_id, request.task_id))
                status = convert.enum_name(task_pb2.TaskStatus, current.status)
            if current != last:
                yield task_pb2.WatchTaskResponse(task=current)
                last = current
            if status in tasks.FINAL_STATUSES:
                return
            time.sleep(WATCH_POLL_S)
