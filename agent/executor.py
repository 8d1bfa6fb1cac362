"""Runs commands from the controller, each task id at most once.

A command whose task id is in the journal is not run: its stored result is
sent again (the controller may have missed it). A command that is running
now is not started twice. Otherwise the agent logs exactly one line
``running task <task_id> (<action>)``, runs it on its own thread, journals
the result durably, and then sends it.

A running command may be cancelled: its context's ``cancelled`` event is set,
and the command stops at its next check with the error of a cancelled task
(``BackupService.4003``), journaled and sent like any result. A command that
ends otherwise (it finished first, or failed on its own) reports that.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from google.protobuf import json_format

from agent import metrics
from agent.commands import CommandContext, CommandFunction, Outcome, registry
from agent.journal import Entry, Journal
from agent.memory import release_free_memory
from cbr import errors
from cbr.v1 import agent_pb2

log = logging.getLogger("cbr.agent")


# Actions whose result has a field of the same name in CommandResult.result.
RESULT_FIELDS = frozenset(f.name for f in agent_pb2.CommandResult.DESCRIPTOR
                          .oneofs_by_name["result"].fields)


def result_message(entry: Entry) -> Any:
    """The CommandResult of a journal entry, with its typed result when it has one."""
    result = agent_pb2.CommandResult(
        task_id=entry.task_id, success=entry.success, error_code=entry.error_code,
        error_message=entry.error_message)
    if entry.result and entry.action in RESULT_FIELDS:
        typed = getattr(result, entry.action)
        typed.SetInParent()  # present even when every figure is zero
        try:
            json_format.ParseDict(entry.result, typed)
        except json_format.ParseError:
            log.warning("task %s: its journaled result does not parse; sent without it",
                        entry.task_id)
            result.ClearField(entry.action)  # type: ignore[arg-type]
    return agent_pb2.ConnectRequest(result=result)


class Executor:
    def __init__(
        self,
        journal: Journal,
        make_context: Callable[[str], CommandContext],
        send: Callable[[Any], None],
        commands: dict[str, CommandFunction] | None = None,
    ) -> None:
        self._journal = journal
        self._make_context = make_context
        self._send = send
        self._commands = commands if commands is not None else registry()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._cancel_events: dict[str, threading.Event] = {}

    def handle(self, command: Any) -> threading.Thread | None:
        """Takes one delivered command; returns the thread running it, if it runs."""
        task_id = command.task_id
        action = command.WhichOneof("action") or "unknown"
        if not self._journal.valid_id(task_id):
            log.warning("ignoring a command with an invalid task id %r", task_id)
            return None
        done = self._journal.get(task_id)
        if done is not None:
            log.info("task %s (%s) already ran; sending its result again", task_id, action)
            self._send(result_message(done))
            return None
        if not self._journal.begin(task_id):
            log.info("task %s (%s) is running; ignoring the repeated command", task_id, action)
            return None
        cancelled = threading.Event()
        with self._lock:
            self._cancel_events[task_id] = cancelled
        thread = threading.Thread(target=self._run, args=(command, action, cancelled),
                                  name=f"task-{task_id[:8]}", daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()]
        self._threads.append(thread)
        thread.start()
        return thread

    def cancel(self, task_id: str) -> bool:
        """Asks a running command to stop; False when it is not running here
        (a finished one has its result sent again, which says how it ended)."""
        with self._lock:
            event = self._cancel_events.get(task_id)
        if event is not None:
            log.info("task %s: cancelled by the controller; stopping", task_id)
            event.set()
            return True
        done = self._journal.get(task_id) if self._journal.valid_id(task_id) else None
        if done is not None:
            self._send(result_message(done))
        else:
            log.info("task %s: asked to cancel it, but it is not running here", task_id)
        return False

    def _run(self, command: Any, action: str, cancelled: threading.Event) -> None:
        task_id = command.task_id
        log.info("running task %s (%s)", task_id, action)
        function = self._commands.get(action)
        try:
            if function is None:
                outcome = Outcome.failed(errors.NotImplementedYet(
                    f"This agent does not know the command {action!r}; upgrade it."))
            else:
                context = self._make_context(task_id)
                context.cancelled = cancelled
                outcome = function(context, getattr(command, action))
        except Exception as exc:
            log.exception("task %s (%s) failed", task_id, action)
            outcome = Outcome.failed(errors.InternalError(f"{type(exc).__name__}: {exc}"))
        finally:
            release_free_memory()  # an idle agent does not keep a task's peak
            with self._lock:
                self._cancel_events.pop(task_id, None)
        try:
            entry = self._journal.finish(Entry(
                task_id=task_id, action=action, success=outcome.success,
                error_code=outcome.error_code, error_message=outcome.error_message,
                result=_result_json(outcome),
            ))
        except OSError:
            log.exception("task %s: cannot write the journal; the result is not sent", task_id)
            self._journal.abandon(task_id)
            return
        log.info("task %s (%s) %s", task_id, action,
                 "succeeded" if entry.success else f"failed: {entry.error_message}")
        metrics.command_ended(action, entry.success, getattr(command, action, None),
                              outcome.result)
        self._send(result_message(entry))

    def wait(self, timeout: float | None = None) -> None:
        for thread in list(self._threads):
            thread.join(timeout)


def _result_json(outcome: Outcome) -> dict[str, Any]:
    if not outcome.success or outcome.result is None:
        return {}
    # Every field written, zeros too: an entry with a typed result is never
    # empty, so it reads back as having one.
    return json_format.MessageToDict(outcome.result, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)
