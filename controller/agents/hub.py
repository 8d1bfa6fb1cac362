"""The agent hub: every live Connect stream of this controller, and delivery.

Owns the registry of streams (one per agent; a second connection of the same
agent replaces the first), each stream's outbound queue, the in-memory
``last_seen`` of every agent and the background thread that writes it to the
database in one batched transaction every few seconds, never one write per
heartbeat (hundreds of agents heartbeat against one controller), and closes
streams that went silent.

The hub carries typed messages and knows no command by name: what a command
carries when sent (storage access, tokens) and what its end changes in the
catalog are handlers registered by action (``controller.jobs``).

Delivery is at least once: ``dispatch`` sends a task's stored command with its
task id, and after every Hello the hub sends again every non-final task of
that agent that has a command, so a command survives controller and agent
restarts. The agent's journal makes a second delivery harmless, and a result
that arrives twice is applied once (``controller.services.tasks``).

Cancelling a running task is ``controller.agents.cancels``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import threading
from collections.abc import AsyncIterator, Callable
from concurrent import futures
from typing import Any, cast

import grpc
from google.protobuf import json_format
from sqlalchemy import Table, bindparam, func, select, update
from sqlalchemy.orm import Session

from cbr import errors
from cbr.v1 import agent_pb2
from controller.agents import convert
from controller.agents.cancels import CANCEL_GRACE_S, CancelsMixin
from controller.app import App
from controller.persistence.models import Agent, Task, UtcDateTime
from controller.persistence.vocabulary import TaskStatus
from controller.services import agents as service
from controller.services import commands, tasks

log = logging.getLogger("cbr.controller.agents.hub")

# Metadata sent with the stream's first response: the heartbeat interval in
# milliseconds, finer than Welcome's whole seconds (tests run at 0.5 s).
# A stream silent for this many offline timeouts is closed; a live agent reconnects.
STALE_AFTER_OFFLINE_TIMEOUTS = 4.0

# Runs in the transaction that first ends a task, with its result (None when
# the task ended without one).
ResultHandler = Callable[[Session, Task, "agent_pb2.CommandResult | None"], None]
# Adds to a command, as it is sent, what its task never stores.
Enricher = Callable[[Session, Task, "agent_pb2.Command"], None]


class _Stream:
    """One open Connect stream of one agent.

    The stream is served on the agent endpoint's event loop; ``send`` and
    ``close`` may be called from any thread (API handlers dispatch commands,
    the flusher closes silent streams) and hand over to the loop.
    """

    def __init__(self, agent_id: str, project_id: str, now: float,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.agent_id = agent_id
        self.project_id = project_id
        self.loop = loop
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.opened = now
        self.last_seen = now
        self.flushed_last_seen = 0.0
        self.closed = threading.Event()
        # Set once the agent's Hello is handled. Commands go out only after:
        # a task sent before would be missing from that Hello (written before
        # the agent had it), and the Hello would fail it as lost.
        self.greeted = threading.Event()

    def _put(self, message: Any) -> bool:
        if self.loop is None:
            return False
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, message)
        except RuntimeError:  # the loop has stopped: the endpoint is shutting down
            return False
        return True

    def send(self, message: Any) -> bool:
        if self.closed.is_set():
            return False
        return self._put(message)

    def close(self) -> None:
        if not self.closed.is_set():
            self.closed.set()
            self._put(None)


def _utc(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, dt.UTC)


class AgentHub(CancelsMixin):
    def __init__(self, app: App, *, flush_interval: float | None = None) -> None:
        self._app = app
        self._clock = app.clock
        offline_after = app.config.agent_offline_after
        self.flush_interval = flush_interval or max(0.2, min(2.0, offline_after / 4))
        self._seen_write_every = offline_after / 3
        self._stale_after = max(STALE_AFTER_OFFLINE_TIMEOUTS * offline_after,
                                3 * app.config.heartbeat_interval)
        self._lock = threading.Lock()
        self._streams: dict[str, _Stream] = {}
        # Agents whose stream opened or closed since the last flush: id -> connected_at or None.
        self._connection_changes: dict[str, dt.datetime | None] = {}
        # What this process knows of agents it has seen; newer than the database.
        self._live: dict[str, service.LiveState] = {}
        self._result_handlers: dict[str, list[ResultHandler]] = {}
        self._enrichers: dict[str, list[Enricher]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._cancels: dict[str, float] = {}
        self.cancel_grace_s = CANCEL_GRACE_S
        # Database work of agent messages runs here, off the endpoint's event loop.
        self._executor = futures.ThreadPoolExecutor(max_workers=8,
                                                    thread_name_prefix="agent-messages")

    # -- life cycle ------------------------------------------------------------

    def start(self) -> None:
        """Forgets stale 'connected' flags of a previous run and starts the flusher."""
        with self._app.db.begin() as session:
            n = service.mark_all_disconnected(session)
        if n:
            log.info("%d agents were marked connected by a previous run; they reconnect", n)
        self._thread = threading.Thread(target=self._run, name="agent-hub", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Closes every stream and writes the last state; safe to call twice."""
        self._stop.set()
        with self._lock:
            streams = list(self._streams.values())
        for stream in streams:
            stream.close()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self._executor.shutdown(wait=True, cancel_futures=True)
        try:
            self.flush()
        except Exception:
            log.exception("could not write the agents' last state")

    # -- extension -------------------------------------------------------------

    def register_result_handler(self, action: str, handler: ResultHandler) -> None:
        """Runs handler(session, task, CommandResult | None) in the transaction
        that first finishes a task whose command has that action (never for a
        repeat)."""
        self._result_handlers.setdefault(action, []).append(handler)

    def register_enricher(self, action: str, enricher: Enricher) -> None:
        """Runs enricher(session, task, command) each time a command with that
        action is sent; it may raise a CbrError, which fails the task."""
        self._enrichers.setdefault(action, []).append(enricher)

    # -- state -----------------------------------------------------------------

    def live_states(self) -> dict[str, service.LiveState]:
        with self._lock:
            out = dict(self._live)
            for agent_id, stream in self._streams.items():
                out[agent_id] = service.LiveState(True, _utc(stream.last_seen),
                                                  _utc(stream.opened))
        return out

    def live_state(self, agent_id: str) -> service.LiveState | None:
        """What this process knows of one agent, or None if it has not seen it."""
        with self._lock:
            stream = self._streams.get(agent_id)
            if stream is not None:
                return service.LiveState(True, _utc(stream.last_seen), _utc(stream.opened))
            return self._live.get(agent_id)

    def is_online(self, agent_id: str) -> bool:
        with self._lock:
            stream = self._streams.get(agent_id)
            if stream is None:
                return False
            return self._clock.time() - stream.last_seen <= self._app.config.agent_offline_after

    def online_agent_ids(self) -> set[str]:
        now = self._clock.time()
        limit = self._app.config.agent_offline_after
        with self._lock:
            return {a for a, s in self._streams.items() if now - s.last_seen <= limit}

    def connected_count(self) -> int:
        with self._lock:
            return len(self._streams)

    # -- streams ---------------------------------------------------------------

    def _attach(self, agent_id: str, project_id: str,
                loop: asyncio.AbstractEventLoop | None = None) -> _Stream:
        now = self._clock.time()
        stream = _Stream(agent_id, project_id, now, loop)
        with self._lock:
            old = self._streams.get(agent_id)
            self._streams[agent_id] = stream
            self._connection_changes[agent_id] = _utc(now)
            self._live[agent_id] = service.LiveState(True, _utc(now), _utc(now))
        if old is not None:
            log.info("agent %s connected again; closing its previous stream", agent_id)
            old.close()
        return stream

    def _detach(self, stream: _Stream) -> None:
        stream.close()
        with self._lock:
            if self._streams.get(stream.agent_id) is not stream:
                return
            del self._streams[stream.agent_id]
            self._connection_changes[stream.agent_id] = None
            self._live[stream.agent_id] = service.LiveState(False, _utc(stream.last_seen), None)
        log.info("agent %s disconnected", stream.agent_id)

    def disconnect(self, agent_id: str) -> None:
        """Closes the agent's stream, if open (used when it is deleted)."""
        with self._lock:
            stream = self._streams.get(agent_id)
        if stream is not None:
            stream.close()

    async def serve(self, agent_id: str, project_id: str,
                    requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """The response side of one Connect stream, on the endpoint's event loop.

        Heartbeats only touch memory on the loop; messages that need the
        database run on the hub's executor, one at a time per stream, so
        hundreds of idle streams cost no threads.
        """
        loop = asyncio.get_running_loop()
        stream = self._attach(agent_id, project_id, loop)
        reader = asyncio.create_task(self._read(stream, requests))
        interval = self._app.config.heartbeat_interval
        log.info("agent %s connected", agent_id)
        try:
            yield agent_pb2.ConnectResponse(
                welcome=agent_pb2.Welcome(heartbeat_interval_ms=max(50, round(interval * 1000)))
            )
            while True:
                message = await stream.queue.get()
                if message is None:
                    return
                yield message
        finally:
            reader.cancel()
            self._detach(stream)

    async def _read(self, stream: _Stream, requests: AsyncIterator[Any]) -> None:
        loop = asyncio.get_running_loop()
        handlers: dict[str, Callable[[_Stream, Any], None]] = {
            "hello": self._on_hello, "inventory": self._on_inventory,
            "progress": self._on_progress, "result": self._on_result,
        }
        try:
            async for request in requests:
                stream.last_seen = self._clock.time()
                kind = request.WhichOneof("message")
                handler = handlers.get(kind or "")
                if handler is not None:
                    await loop.run_in_executor(self._executor, handler, stream,
                                               getattr(request, kind))
                if stream.closed.is_set():
                    return
        except asyncio.CancelledError:
            raise
        except grpc.RpcError:
            pass  # the agent went away; the stream closes below
        except Exception:
            # The agent reconnects and reports everything again.
            log.exception("agent %s: error handling its message; closing the stream",
                          stream.agent_id)
        finally:
            stream.close()

    # -- messages from agents --------------------------------------------------

    def _on_hello(self, stream: _Stream, hello: Any) -> None:
        """Sends the agent its waiting commands, and fails the tasks it lost.

        A task marked running that the agent reports neither running nor
        finished died with an earlier agent process (killed, host rebooted):
        it fails now, so its backup becomes ``error`` and never ``available``.
        """
        alive = set(hello.running_task_ids) | set(hello.finished_task_ids)
        now = self._clock.now()
        with self._app.db.begin() as session:
            service.update_identity(session, stream.agent_id, hostname=hello.hostname,
                                    version=hello.version, endpoint=hello.importer_endpoint,
                                    restore_roots=list(hello.restore_roots))
            pending = session.scalars(
                select(Task)
                .where(Task.agent_id == stream.agent_id,
                       Task.status.in_(tasks.OPEN_STATUSES))
                .order_by(Task.created_at)
            ).all()
            to_send: list[Any] = []
            for task in pending:
                if task.status == TaskStatus.WAITING and task.command:
                    command = self._command_or_fail(session, task, now)
                    if command is not None and tasks.start_task(session, task.id, now):
                        to_send.append(command)
                elif task.status == TaskStatus.RUNNING and "cancel_requested_at" in \
                        task.extra_info:
                    if task.id in alive:  # asked while the agent was away: ask again
                        to_send.append(agent_pb2.CancelCommand(task_id=task.id))
                    else:  # lost with its process, which may have written a manifest
                        self._finish_cancelled(session, task.id, now,
                                               tasks.CANCELLED_BY_CONTROLLER)
                elif task.status == TaskStatus.RUNNING and task.id not in alive \
                        and commands.kind(task) == "import":
                    # An import survives its importer: what reached storage
                    # stays, and the source resumes once the grant is back.
                    command = self._command_or_fail(session, task, now)
                    if command is not None:
                        to_send.append(command)
                        log.info("agent %s restarted during import task %s; sent again",
                                 stream.agent_id, task.id)
                elif task.status == TaskStatus.RUNNING and task.id not in alive:
                    self._finish(session, task.id, TaskStatus.FAILED, now,
                                 errors.AgentUnavailable.code,
                                 "The agent restarted while this task ran; what it did is "
                                 "not marked done. Run it again.", {})
                    log.warning("agent %s lost task %s (%s); marked failed", stream.agent_id,
                                task.id, task.operation_type)
            # Cancelled here while the agent was away, and still running there.
            to_send.extend(agent_pb2.CancelCommand(task_id=task_id) for task_id in session.scalars(
                select(Task.id).where(Task.agent_id == stream.agent_id,
                                      Task.id.in_(list(hello.running_task_ids)),
                                      Task.status == TaskStatus.CANCELLED)))
        sent = 0
        for message in to_send:
            if isinstance(message, agent_pb2.CancelCommand):
                stream.send(agent_pb2.ConnectResponse(cancel=message))
                self._expect_cancel(message.task_id)
                continue
            stream.send(agent_pb2.ConnectResponse(command=message))
            sent += 1
        stream.greeted.set()
        if sent:
            log.info("agent %s: sent %d waiting commands", stream.agent_id, sent)

    def _finish(self, session: Session, task_id: str, status: TaskStatus, now: dt.datetime,
                code: str, message: str, extra: dict[str, Any],
                result: agent_pb2.CommandResult | None = None) -> Task | None:
        """Ends a task once and runs its command's result handlers in the same
        transaction."""
        done = tasks.finish_task(session, task_id, status, now, error_code=code,
                                 error_message=message, extra_info=extra)
        if done is not None:
            for handler in self._result_handlers.get(commands.kind(done), []):
                handler(session, done, result)
        return done

    def _on_inventory(self, stream: _Stream, inventory: Any) -> None:
        reported = [convert.reported_from_pb(p) for p in inventory.protectables]
        with self._app.db.begin() as session:
            outcome = service.record_inventory(session, stream.agent_id, reported,
                                               self._clock.now())
        log.info("agent %s reported %d protectables (%d new, %d changed, %d gone)",
                 stream.agent_id, outcome.reported, len(outcome.created), outcome.updated,
                 outcome.gone)

    def _own_task(self, session: Session, stream: _Stream, task_id: str) -> Task | None:
        task = session.get(Task, task_id)
        if task is None or task.agent_id != stream.agent_id:
            log.warning("agent %s reported on task %r, which is not its own", stream.agent_id,
                        task_id)
            return None
        return task

    def _on_progress(self, stream: _Stream, progress: Any) -> None:
        with self._app.db.begin() as session:
            if self._own_task(session, stream, progress.task_id) is not None:
                tasks.report_progress(session, progress.task_id, progress.progress,
                                      self._clock.now(), progress.message,
                                      counters=dict(progress.counters))

    def _on_result(self, stream: _Stream, result: agent_pb2.CommandResult) -> None:
        extra = commands.result_info(result)
        status = TaskStatus.SUCCESS if result.success else TaskStatus.FAILED
        self._cancel_confirmed(result.task_id)
        with self._app.db.begin() as session:
            task = self._own_task(session, stream, result.task_id)
            if task is None:
                return
            if not result.success and result.error_code == errors.TaskCancelled.code:
                status = TaskStatus.CANCELLED
                done = self._finish_cancelled(session, result.task_id, self._clock.now(),
                                              tasks.CANCELLED_BY_AGENT, result)
            else:
                done = self._finish(session, result.task_id, status, self._clock.now(),
                                    result.error_code, result.error_message, extra, result)
            if done is None:
                return
        log.info("task %s of agent %s finished: %s", result.task_id, stream.agent_id, status)

    # -- commands to agents ----------------------------------------------------

    def _command_or_fail(self, session: Session, task: Task,
                         now: dt.datetime) -> agent_pb2.Command | None:
        """The task's command, or None after failing the task (and, through
        the result handlers, its backups) when it cannot be built: a key that
        may not be used, storage that cannot be read, an unencodable body."""
        try:
            command = self._command(session, task)
        except errors.CbrError as exc:
            log.warning("task %s not sent: %s", task.id, exc.message)
            self._finish(session, task.id, TaskStatus.FAILED, now, exc.code, exc.message, {})
            return None
        if command is None:
            self._finish(session, task.id, TaskStatus.FAILED, now, errors.NotImplementedYet.code,
                         "This controller cannot encode the task's command for agents.", {})
        return command

    def _command(self, session: Session, task: Task) -> agent_pb2.Command | None:
        """The task's stored command with what the registered enrichers add
        at send time (so the task row never holds storage credentials, keys
        or tokens); None when the stored command does not parse."""
        try:
            command = commands.of(task)
        except json_format.ParseError as exc:
            log.error("task %s: its command is not a cbr.v1.Command: %s", task.id, exc)
            return None
        for enrich in self._enrichers.get(commands.kind(task), []):
            enrich(session, task, command)
        return command

    def dispatch(self, agent_id: str, task_id: str) -> bool:
        """Sends a task's command now if the agent is connected.

        Returns False when it is not: the task stays waiting and goes out
        when the agent next says Hello.
        """
        with self._lock:
            stream = self._streams.get(agent_id)
        now = self._clock.now()
        with self._app.db.begin() as session:
            task = session.get(Task, task_id)
            if task is None or task.status in tasks.FINAL_STATUSES or not task.command:
                return False
            command = self._command_or_fail(session, task, now)
            if command is None:
                return False
            if stream is None or stream.closed.is_set() or not stream.greeted.is_set():
                return False  # waiting: the Hello sends it (or the next send_waiting)
            if tasks.start_task(session, task_id, now) is None:
                return False  # cancelled (or ended) since it was read
        return stream.send(agent_pb2.ConnectResponse(command=command))

    def abort_import(self, agent_id: str, import_id: str) -> bool:
        """Tells an importer to drop an import's grant now (it would expire anyway)."""
        with self._lock:
            stream = self._streams.get(agent_id)
        if stream is None:
            return False
        return stream.send(agent_pb2.ConnectResponse(
            abort_import=agent_pb2.AbortImport(import_id=import_id)))

    # -- background ------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.wait(self.flush_interval):
            try:
                self._close_silent_streams()
                self.flush()
                self.send_waiting()
                self.end_overdue_cancels()
                self.send_cancels()
            except Exception:
                log.exception("agent hub: flushing agent state failed; retrying")

    def send_waiting(self) -> int:
        """Sends the waiting tasks of agents whose stream this controller holds.

        Another controller sharing the database (the one leading the policy
        loop) makes tasks for agents connected here; its own dispatch cannot
        reach them, so they go out from here within a flush interval. Returns
        how many were sent.
        """
        with self._lock:
            local = set(self._streams)
        if not local:
            return 0
        with self._app.db.read() as conn:
            rows = conn.execute(select(Task.id, Task.agent_id).where(
                Task.status == TaskStatus.WAITING, Task.agent_id.in_(local))).all()
        return sum(1 for task_id, agent_id in rows if self.dispatch(agent_id, task_id))

    def _close_silent_streams(self) -> None:
        now = self._clock.time()
        with self._lock:
            silent = [s for s in self._streams.values() if now - s.last_seen > self._stale_after]
        for stream in silent:
            log.warning("agent %s sent nothing for %.0f s; closing its stream", stream.agent_id,
                        now - stream.last_seen)
            stream.close()

    def flush(self) -> None:
        """Writes last-seen times and stream openings/closings in one transaction."""
        with self._lock:
            changes, self._connection_changes = self._connection_changes, {}
            # While this process runs, online status comes from memory; the
            # database copy of last_seen only needs to be fresh to a fraction of
            # the offline timeout, so each agent's row is written that often.
            seen = [(s, s.last_seen) for s in self._streams.values()
                    if s.last_seen - s.flushed_last_seen >= self._seen_write_every]
            closed_seen = {a: self._live[a].last_seen_at for a, c in changes.items()
                           if c is None and a in self._live}
        if not changes and not seen:
            return
        table = cast(Table, Agent.__table__)
        by_id = table.c.id == bindparam("b_id")
        try:
            with self._app.db.begin() as session:
                if seen:
                    session.execute(
                        update(table).where(by_id).values(last_seen_at=bindparam("b_seen")),
                        [{"b_id": s.agent_id, "b_seen": _utc(ts)} for s, ts in seen],
                    )
                opened = [{"b_id": a, "b_at": c} for a, c in changes.items() if c is not None]
                if opened:
                    session.execute(
                        update(table).where(by_id).values(connected=True,
                                                          connected_at=bindparam("b_at")),
                        opened,
                    )
                closed = [{"b_id": a, "b_seen": closed_seen.get(a)}
                          for a, c in changes.items() if c is None]
                if closed:
                    session.execute(
                        update(table).where(by_id).values(
                            connected=False,
                            last_seen_at=func.coalesce(bindparam("b_seen", type_=UtcDateTime()),
                                                       table.c.last_seen_at)),
                        closed,
                    )
        except Exception:
            with self._lock:
                for agent_id, change in changes.items():
                    self._connection_changes.setdefault(agent_id, change)
            raise
        for stream, ts in seen:
            stream.flushed_last_seen = ts
