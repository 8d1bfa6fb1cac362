"""Cancelling agent tasks: the hub's side of ``TaskService.CancelTask``.

A running task's agent is sent a ``CancelCommand`` and has
``CANCEL_GRACE_S`` to answer with a cancelled result; an agent that is not
connected, or does not answer in time, does not keep the task open: the hub
ends it cancelled itself (``by_controller``), and the agent's later result
finds the task final and changes nothing. Part of :class:`AgentHub`, kept
apart so the hub's module stays about streams and delivery.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from cbr.clock import Clock
from cbr.v1 import agent_pb2
from controller.app import App
from controller.persistence.models import Task
from controller.persistence.vocabulary import TaskStatus
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
        log.info("task %s: agent %s is not connected; cancelled without it", task_id, agent_id)
        with self._app.db.begin() as session:
            self.end_cancelled(session, task_id, tasks.CANCELLED_BY_CONTROLLER)
        return False

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

