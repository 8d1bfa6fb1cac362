"""Tasks: the list with filters, one task with its live progress, cancel.

The progress fragment is what htmx polls every second while the task runs;
once the task is final the fragment comes back without its trigger, so the
polling stops by itself (and the Cancel control is removed out of band).
"""

from __future__ import annotations

from urllib.parse import quote

from aiohttp import web

from cbr.v1 import task_pb2
from console import formats
from console import web as cw
from console.api import ApiError

PAGE_SIZE = 50
STOP_POLLING = 286

# What the filter form sends ("backup") to the enum value's name the request takes.
OPERATION_TYPES = {name.removeprefix("OPERATION_TYPE_").lower(): name
                   for name, number in task_pb2.OperationType.items() if number}
STATUSES = {name.removeprefix("TASK_STATUS_").lower(): name
            for name, number in task_pb2.TaskStatus.items() if number}
# Tasks CancelTask accepts (task.proto): the others are refused by the API.
CANCELLABLE = frozenset({task_pb2.OPERATION_TYPE_BACKUP, task_pb2.OPERATION_TYPE_RESTORE,
                         task_pb2.OPERATION_TYPE_REPLICATION, task_pb2.OPERATION_TYPE_COPY,
                         task_pb2.OPERATION_TYPE_SYNC})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/tasks", list_page)
    app.router.add_get("/tasks/{task_id}", detail)
    app.router.add_get("/tasks/{task_id}/progress", progress_fragment)
    app.router.add_post("/tasks/{task_id}/cancel", cancel)


def is_final(task: task_pb2.Task) -> bool:
    return task.status in formats.FINAL_TASK_STATUSES


async def list_page(request: web.Request) -> web.Response:
    api = cw.api(request)
    query = request.query
    chosen = {key: str(query.get(key, ""))[:64] for key in
              ("operation_type", "status", "vault_id", "resource_id")}
    listed = await api(api.stubs.tasks.ListTasks, task_pb2.ListTasksRequest(
        page_size=PAGE_SIZE, page_token=str(query.get("page_token", ""))[:512],
        operation_type=OPERATION_TYPES.get(chosen["operation_type"], "OPERATION_TYPE_UNSPECIFIED"),
        status=STATUSES.get(chosen["status"], "TASK_STATUS_UNSPECIFIED"),
        vault_id=chosen["vault_id"], resource_id=chosen["resource_id"], newest_first=True))
    filters = {k: v for k, v in chosen.items() if v}
    return cw.render(request, "tasks.html", tasks=listed.tasks, total=listed.total_count,
                     next_page_token=listed.next_page_token, filters=filters, chosen=chosen,
                     operation_types=OPERATION_TYPES, statuses=STATUSES,
                     paged="page_token" in query)


async def _task(request: web.Request) -> task_pb2.Task:
    api = cw.api(request)
    response = await api(api.stubs.tasks.GetTask,
                         task_pb2.GetTaskRequest(task_id=request.match_info["task_id"]))
    task: task_pb2.Task = response.task
    return task


async def detail(request: web.Request) -> web.Response:
    task = await _task(request)
    return cw.render(request, "task.html", task=task, final=is_final(task),
                     cancellable=task.operation_type in CANCELLABLE)


async def progress_fragment(request: web.Request) -> web.Response:
    """The part of the task page that changes; polled while the task runs."""
    try:
        task = await _task(request)
    except ApiError as err:
        if err.status == "UNAUTHENTICATED":
            raise  # the middleware sends the browser to sign in
        # Polling again would only repeat the refusal: stop, and say why.
        return cw.render(request, "_error.html", status=STOP_POLLING, error=err)
    final = is_final(task)
    # 286: htmx stops polling (and still swaps this last fragment in).
    return cw.render(request, "_task_progress.html", status=STOP_POLLING if final else 200,
                     task=task, final=final, swap_cancel=final)


async def cancel(request: web.Request) -> web.Response:
    api = cw.api(request)
    task_id = request.match_info["task_id"]
    await api(api.stubs.tasks.CancelTask, task_pb2.CancelTaskRequest(task_id=task_id))
    return cw.redirect(request, f"/tasks/{quote(task_id, safe='')}")
