"""`cbr task`: operation logs, and watching them until they end.

Watching lives here because every asynchronous verb (`--wait`) reuses it: one
definition of which statuses are final and which count as success keeps the
exit codes of `task watch` and `vault delete --wait` the same.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Iterable, Iterator

from google.protobuf.message import Message
from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn

from cbr.v1 import task_pb2
from cli._common import (
    Column,
    Context,
    add_command,
    add_group,
    add_paging,
    enum_arg,
    enum_names,
    fmt_bytes,
    list_pages,
    to_dict,
)

OPERATION = enum_names(task_pb2.OperationType.DESCRIPTOR)
STATUS = enum_names(task_pb2.TaskStatus.DESCRIPTOR)

FINAL = frozenset(
    {
        task_pb2.TASK_STATUS_SUCCESS,
        task_pb2.TASK_STATUS_FAILED,
        task_pb2.TASK_STATUS_SKIPPED,
        task_pb2.TASK_STATUS_TIMEOUT,
        task_pb2.TASK_STATUS_CANCELLED,
    }
)
# Skipped is a success: an empty vault replicated is "nothing to do", not an error.
SUCCEEDED = frozenset({task_pb2.TASK_STATUS_SUCCESS, task_pb2.TASK_STATUS_SKIPPED})

COLUMNS: list[Column] = [
    ("ID", "id"),
    ("OPERATION", "operation_type"),
    ("STATUS", "status"),
    ("PROGRESS", lambda t: f"{t.progress}%"),
    ("VAULT", lambda t: t.vault_name or t.vault_id or "-"),
    ("RESOURCE", lambda t: t.resource_name or t.resource_id or "-"),
    ("CREATED", "created_at"),
    ("ENDED", "ended_at"),
    ("ERROR", lambda t: t.error_info.code or "-"),
]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    group = add_group(sub, "task", "operation logs of asynchronous operations")

    p = add_command(group, "list", cmd_list, "list tasks", rpc="TaskService.ListTasks")
    enum_arg(p, "--operation-type", OPERATION, "only this operation")
    enum_arg(p, "--status", STATUS, "only this status")
    p.add_argument("--vault", help="only tasks of this vault id")
    p.add_argument("--resource", help="only tasks of this resource id")
    p.add_argument("--checkpoint", help="only tasks of this checkpoint id")
    p.add_argument("--policy", help="only tasks started by this policy id")
    add_paging(p)

    p = add_command(group, "show", cmd_show, "show a task", rpc="TaskService.GetTask")
    p.add_argument("task_id", metavar="TASK_ID")

    p = add_command(
        group,
        "watch",
        cmd_watch,
        "follow a task until it ends (exit 0 success/skipped, 1 failed/timeout)",
        rpc="TaskService.WatchTask",
    )
    p.add_argument("task_ids", metavar="TASK_ID", nargs="+")

    p = add_command(
        group,
        "cancel",
        cmd_cancel,
        "stop a waiting or running backup, restore, replication or sync "
        "(exit 0 once cancelled)",
        rpc="TaskService.CancelTask",
    )
    p.add_argument("task_id", metavar="TASK_ID")
    p.add_argument("--wait", action="store_true",
                   help="follow the task until it has stopped and print its final state")


def build_list_request(args: argparse.Namespace) -> task_pb2.ListTasksRequest:
    return task_pb2.ListTasksRequest(
        operation_type=OPERATION.value(args.operation_type),  # type: ignore[arg-type]
        status=STATUS.value(args.status),  # type: ignore[arg-type]
        vault_id=args.vault or "",
        resource_id=args.resource or "",
        checkpoint_id=args.checkpoint or "",
        policy_id=args.policy or "",
    )


def cmd_list(ctx: Context, args: argparse.Namespace) -> int:
    items = list_pages(ctx, ctx.client.tasks.ListTasks, build_list_request(args), "tasks")
    ctx.out.items(items, COLUMNS)
    return 0


def cmd_show(ctx: Context, args: argparse.Namespace) -> int:
    resp = ctx.client.tasks.GetTask(
        task_pb2.GetTaskRequest(task_id=args.task_id), timeout=ctx.timeout
    )
    ctx.out.show(resp.task)
    return 0


def show_task(ctx: Context, task_id: str) -> None:
    resp = ctx.client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=task_id), timeout=ctx.timeout)
    ctx.out.show(resp.task)


def report_started(ctx: Context, response: Message, task_ids: list[str], what: str) -> int:
    """Prints the started task ids, then, with --wait, follows them. JSON with
    --wait is JSON Lines: the response first, then every task update."""
    wait = bool(getattr(ctx.args, "wait", False))
    ids = [t for t in task_ids if t]
    if ctx.out.json:
        ctx.out.json_value(to_dict(response), compact=wait)
    else:
        for task_id in ids:
            ctx.out.message(f"{what}: task {task_id}")
        if not ids:
            ctx.out.message(f"{what}: no task started")
    return wait_for_tasks(ctx, ids) if wait else 0


def cmd_cancel(ctx: Context, args: argparse.Namespace) -> int:
    """Prints the task as the call left it; with --wait, follows it to its
    end and prints that too. Exit 0 when it ended cancelled (or is still
    stopping, without --wait); 1 when it ended otherwise (it finished before
    the agent got the request)."""
    resp = ctx.client.tasks.CancelTask(
        task_pb2.CancelTaskRequest(task_id=args.task_id), timeout=ctx.timeout
    )
    task = resp.task
    if args.wait and task.status not in FINAL:
        for update in _updates(ctx, task.id):
            task = update
    ctx.out.show(task)
    if task.status in FINAL and task.status != task_pb2.TASK_STATUS_CANCELLED:
        ctx.out.note(f"cbr: error: task {task.id} ended {STATUS.short(task.status)} before it "
                     "could be cancelled")
        return 1
    if task.status not in FINAL:
        ctx.out.note(f"cbr: task {task.id} is stopping; `cbr task watch {task.id}` follows it")
    return 0


def cmd_watch(ctx: Context, args: argparse.Namespace) -> int:
    return wait_for_tasks(ctx, args.task_ids)


def _updates(ctx: Context, task_id: str) -> Iterator[task_pb2.Task]:
    """The task each time it changes, ending with its final state. If the
    stream ends early the task is read once more, so a dropped stream of a
    finished task is not reported as a failure."""
    last: task_pb2.Task | None = None
    stream = ctx.client.tasks.WatchTask(
        task_pb2.WatchTaskRequest(task_id=task_id), timeout=ctx.stream_timeout
    )
    for resp in stream:
        last = resp.task
        yield last
        if last.status in FINAL:
            return
    if last is None or last.status not in FINAL:
        resp = ctx.client.tasks.GetTask(
            task_pb2.GetTaskRequest(task_id=task_id), timeout=ctx.timeout
        )
        yield resp.task


def _label(task: task_pb2.Task) -> str:
    op = OPERATION.short(task.operation_type)
    target = task.resource_name or task.vault_name or task.resource_id or task.vault_id
    return f"{op} {task.id}" + (f" ({target})" if target else "")


class _Rate:
    """Bytes done, their rate (smoothed) and the time left, from a task's
    progress and counters as they arrive."""

    SMOOTHING = 0.3

    def __init__(self) -> None:
        self.last: tuple[float, int] | None = None
        self.rate = 0.0

    def detail(self, task: task_pb2.Task) -> str:
        info = task.extra_info
        total = _int(info.get("bytes_total"))
        sent = _int(info.get("bytes_sent"))
        if task.status in FINAL:
            return f"{fmt_bytes(sent)} sent" if sent else ""
        if not total:
            return f"{fmt_bytes(sent)} sent" if sent else ""
        done = total * task.progress // 100
        now = time.monotonic()
        if self.last is not None and now > self.last[0] and done >= self.last[1]:
            rate = (done - self.last[1]) / (now - self.last[0])
            self.rate = rate if not self.rate else (
                self.SMOOTHING * rate + (1 - self.SMOOTHING) * self.rate)
        self.last = (now, done)
        text = f"{fmt_bytes(done)} of {fmt_bytes(total)}"
        if self.rate > 0:
            left = (total - done) / self.rate
            text += f", {fmt_bytes(int(self.rate))}/s, {_duration(left)} left"
        return text


def _int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def wait_for_tasks(ctx: Context, task_ids: Iterable[str]) -> int:
    """Follows each task to its end, all at once; 0 when all succeeded or
    were skipped."""
    ids = [t for t in task_ids if t]
    final: dict[str, task_pb2.Task] = {}
    if ctx.out.json:
        for task_id in ids:
            for update in _updates(ctx, task_id):
                final[task_id] = update
                ctx.out.json_value(to_dict(update), compact=True)
    elif ids:
        progress = Progress(
            TextColumn("{task.description}"),
            TextColumn("{task.fields[status]}", style="bold"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[detail]}"),
            console=ctx.out.console,
        )
        errors: list[BaseException] = []

        def follow(task_id: str, bar: TaskID) -> None:
            rate = _Rate()
            try:
                for update in _updates(ctx, task_id):
                    final[task_id] = update
                    progress.update(
                        bar, description=_label(update), status=STATUS.short(update.status),
                        completed=100 if update.status in SUCCEEDED else update.progress,
                        detail=rate.detail(update))
            except BaseException as exc:  # the caller raises it
                errors.append(exc)

        with progress:
            threads = [threading.Thread(target=follow, daemon=True, args=(
                task_id, progress.add_task(task_id, total=100, status="waiting", detail="")))
                for task_id in ids]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        if errors:
            raise errors[0]
    failed = 0
    for task_id in ids:
        task: task_pb2.Task | None = final.get(task_id)
        if task is not None and task.status == task_pb2.TASK_STATUS_SKIPPED:
            reason = task.extra_info.get("reason") or task.error_info.message
            ctx.out.note(f"cbr: task {task_id} skipped" + (f": {reason}" if reason else ""))
            continue
        if task is not None and task.status in SUCCEEDED:
            continue
        failed += 1
        status = STATUS.short(task.status) if task is not None else "unknown"
        why = ""
        if task is not None and (task.error_info.code or task.error_info.message):
            why = f": {task.error_info.code}: {task.error_info.message}".rstrip(": ")
        elif task is not None and task.status not in FINAL:
            why = ": the watch ended before the task did"
        ctx.out.note(f"cbr: error: task {task_id} {status}{why}")
    return 1 if failed else 0
