"""Cancelling agent tasks: the hub's side of ``TaskService.CancelTask``.

A running task's agent is sent a ``CancelCommand`` and has
``CANCEL_GRACE_S`` to answer with a cancelled result; an agent that is not
connected, or does not answer in time, does not keep the task open: the hub
ends it cancelled itself (``by_controller``), and the agent's later result
finds the task final and changes nothing.

Controllers sharing a database: a cancel asked on one whose agent's stream
another holds is left in the task (``cancel_requested_at``); the holder's
hub finds it within a flush interval (``send_cancels``) and asks the agent.
If no controller does in twice the grace period, any hub ends the task.
Part of :class:`AgentHub`, kept apart so the hub's module stays about
streams and delivery.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from cbr.clock import Clock
from cbr.v1 import agent_pb2
from controller.app import App
from controller.persistence.models import Agent, Task
from controller.persistence.vocabulary import TaskStatus
from controller.services import agents as agent_service
from controller.services import tasks

if TYPE_CHECKING:
    from controller.agents.hub import _Stream

log = logging.getLogger("cbr.controller.agents.hub")

# Seconds a connected agent has to confirm a cancel before the hub ends the
# task itself (a backup stops at its next chunk or file, well within this).
CANCEL_GRACE_S = 15.0


class CancelsMixin:
    _app: App
    _clock: Clock
    _lock: threading.Lock
    _streams: dict[str, _Stream]
    _live: dict[str, agent_service.LiveState]
    # Tasks whose agent was asked to cancel: id -> when the hub stops waiting.
    _cancels: dict[str, float]
    cancel_grace_s: float

    def _finish(self, session: Session, task_id: str, status: TaskStatus, now: dt.datetime,
                code: str, message: str, extra: dict[str, Any],
                result: agent_pb2.CommandResult | None = None) -> Task | None:
        raise NotImplementedError

    def _expect_cancel(self, task_id: str) -> None:
        with self._lock:
            self._cancels.setdefault(task_id, self._clock.time() + self.cancel_grace_s)

    def _cancel_confirmed(self, task_id: str) -> None:
        with self._lock:
            self._cancels.pop(task_id, None)

    def _finish_cancelled(self, session: Session, task_id: str, now: dt.datetime, how: str,
                          result: agent_pb2.CommandResult | None = None) -> Task | None:
        code, message = tasks.cancelled_error(how)
        return self._finish(session, task_id, TaskStatus.CANCELLED, now, code, message,
                            {"cancelled": how}, result)

    def end_cancelled(self, session: Session, task_id: str, how: str) -> Task | None:
        """Ends a task cancelled in the caller's transaction, running its
        command's result handlers (without a result) there too."""
        self._cancel_confirmed(task_id)
        return self._finish_cancelled(session, task_id, self._clock.now(), how)

    def cancel_running(self, agent_id: str, task_id: str) -> bool:
        """Asks the agent running a task to stop it; True when asked. An
        agent not connected here cannot be asked: the task ends cancelled now
        (its Hello, when it comes back, tells it to stop)."""
        with self._lock:
            stream = self._streams.get(agent_id)
        if stream is not None and stream.greeted.is_set() and stream.send(
                agent_pb2.ConnectResponse(cancel=agent_pb2.CancelCommand(task_id=task_id))):
            with self._lock:
                self._cancels[task_id] = self._clock.time() + self.cancel_grace_s
            log.info("task %s: asked agent %s to cancel it", task_id, agent_id)
            return True
        if self._connected_elsewhere(agent_id):
            log.info("task %s: agent %s is connected to another controller, which asks it",
                     task_id, agent_id)
            return False
        log.info("task %s: agent %s is not connected; cancelled without it", task_id, agent_id)
        with self._app.db.begin() as session:
            self.end_cancelled(session, task_id, tasks.CANCELLED_BY_CONTROLLER)
        return False

    def _connected_elsewhere(self, agent_id: str) -> bool:
        """Whether another controller holds the agent's stream, as the
        database says; a stream that closed here and is not flushed yet
        does not count (the row still says connected, with our last sight)."""
        with self._app.db.read() as conn:
            row = conn.execute(select(Agent.connected, Agent.last_seen_at)
                               .where(Agent.id == agent_id)).first()
        if row is None or not agent_service.is_online(
                row.connected, row.last_seen_at, self._clock.now(),
                self._app.config.agent_offline_after):
            return False
        with self._lock:
            here = self._live.get(agent_id)
        return here is None or here.connected or here.last_seen_at is None \
            or row.last_seen_at > here.last_seen_at

    def send_cancels(self) -> int:
        """Asks the agents whose stream this hub holds to stop the tasks a
        cancel was asked for elsewhere, and ends the cancels nobody carried
        out in twice the grace period. Returns how many it acted on."""
        with self._lock:
            local = set(self._streams)
            known = set(self._cancels)
        with self._app.db.read() as conn:
            rows = conn.execute(select(Task.id, Task.agent_id, Task.extra_info)
                                .where(Task.status == TaskStatus.RUNNING)).all()
        now = self._clock.now()
        acted = 0
        for task_id, agent_id, extra in rows:
            asked = (extra or {}).get("cancel_requested_at")
            if not asked or task_id in known:
                continue
            if agent_id in local:
                self.cancel_running(agent_id, task_id)
                acted += 1
            elif (now - dt.datetime.fromisoformat(asked)).total_seconds() \
                    > 2 * self.cancel_grace_s:
                with self._app.db.begin() as session:
                    self.end_cancelled(session, task_id, tasks.CANCELLED_BY_CONTROLLER)
                log.warning("task %s: no controller reached agent %s to cancel it; ended "
                            "cancelled", task_id, agent_id)
                acted += 1
        return acted

    def end_overdue_cancels(self) -> int:
        """Ends cancelled the tasks whose agent did not confirm in time."""
        now = self._clock.time()
        with self._lock:
            overdue = [t for t, deadline in self._cancels.items() if deadline <= now]
            for task_id in overdue:
                del self._cancels[task_id]
        for task_id in overdue:
            with self._app.db.begin() as session:
                done = self._finish_cancelled(session, task_id, self._clock.now(),
                                              tasks.CANCELLED_BY_CONTROLLER)
            if done is not None:
                log.warning("task %s: its agent did not confirm the cancel within %.0f s; "
                            "ended cancelled", task_id, self.cancel_grace_s)
        return len(overdue)

