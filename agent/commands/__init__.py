"""The commands an agent runs, one module per command, registered by action name.

A command is a function ``run(context, command) -> Outcome``; the action name
is the field of the ``Command.action`` oneof (``sync``, ...), and a successful
command's result is the message of the same name in ``CommandResult.result``
(``SyncResult``, ...). Running each task id once is not the command's concern:
``agent.executor`` does that.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import Message

from agent.config import AgentConfig
from cbr import errors


@dataclass
class Outcome:
    """How a command ended: its typed result (``BackupResult``, ...), or the
    CBR error a person is told (code and message are read off the error,
    never written separately)."""

    success: bool
    error: errors.CbrError | None = None
    result: Message | None = None

    @classmethod
    def done(cls, result: Message) -> Outcome:
        return cls(True, result=result)

    @classmethod
    def failed(cls, error: errors.CbrError) -> Outcome:
        return cls(False, error)

    @property
    def error_code(self) -> str:
        return self.error.code if self.error is not None else ""

    @property
    def error_message(self) -> str:
        if self.error is None:
            return ""
        return self.error.detail or self.error.message


@dataclass
class CommandContext:
    """What a command may use of the running agent."""

    config: AgentConfig
    # Rescans the host and sends the Inventory now; returns how many protectables.
    report_inventory: Callable[[], int]
    # Sends CommandProgress(progress 0..100, message, counters) for the running task.
    progress: Callable[..., None]
    task_id: str = ""
    # Importers: the grants their ImporterService honours (agent.importer.ImportGrants).
    grants: Any = None
    # Set when the controller cancels the task (agent.executor): a command
    # checks it as it goes and stops with agent.dataplane.Cancelled.
    cancelled: threading.Event = field(default_factory=threading.Event)


CommandFunction = Callable[[CommandContext, Any], Outcome]


def _lazy(module: str) -> CommandFunction:
    """A command whose module (and the native data-path libraries it pulls
    in) is imported when first run, not at agent start."""

    def run(context: CommandContext, command: Any) -> Outcome:
        function: CommandFunction = importlib.import_module(f"agent.commands.{module}").run
        return function(context, command)

    return run


def registry() -> dict[str, CommandFunction]:
    from agent.commands import sync

    return {"sync": sync.run, "backup": _lazy("backup"), "restore": _lazy("restore"),
            "import": _lazy("imports"), "replicate": _lazy("replicate")}
