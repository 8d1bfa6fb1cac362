"""The agent runs each task id once: the journal and the executor."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import pytest

from agent.commands import CommandContext, Outcome
from agent.config import AgentConfig
from agent.executor import Executor, result_message
from agent.journal import Entry, Journal
from cbr.v1 import agent_pb2


def _executor(tmp_path: Path, journal: Journal, runs: list[str], sent: list[Any],
              gate: threading.Event | None = None) -> Executor:
    def sync(context: CommandContext, command: Any) -> Outcome:
        if gate is not None:
            gate.wait(5)
        runs.append("sync")
        return Outcome.done(agent_pb2.SyncResult(protectable_count=3))

    def context(task_id: str) -> CommandContext:
        cfg = AgentConfig(name="a", controller="", state_dir=tmp_path)
        return CommandContext(cfg, lambda: 3, lambda p, m: None)

    return Executor(journal, context, sent.append, {"sync": sync})


def _sync(task_id: str) -> Any:
    return agent_pb2.Command(task_id=task_id, sync=agent_pb2.SyncCommand())


def test_journal_entry_survives_a_new_journal_on_the_same_directory(tmp_path: Path) -> None:
    Journal(tmp_path).finish(Entry("t-1", "sync", True, result={"protectable_count": 1}))
    entry = Journal(tmp_path).get("t-1")
    assert entry is not None and entry.success and entry.result == {"protectable_count": 1}
    assert entry.finished_at > 0
    assert not list(tmp_path.glob("*.tmp"))


def test_a_task_id_is_claimed_once(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    assert journal.begin("t-1")
    assert not journal.begin("t-1")
    journal.finish(Entry("t-1", "sync", True))
    assert not journal.begin("t-1")


def test_unsafe_task_ids_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Journal(tmp_path).get("../../etc/passwd")


def test_command_delivered_twice_runs_once_and_the_result_is_sent_again(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    runs: list[str] = []
    sent: list[Any] = []
    executor = _executor(tmp_path, Journal(tmp_path), runs, sent)
    caplog.set_level(logging.INFO, logger="cbr.agent")
    thread = executor.handle(_sync("t-1"))
    assert thread is not None
    thread.join(5)
    assert executor.handle(_sync("t-1")) is None
    # A restarted agent (a new journal over the same files) does not run it either.
    again = _executor(tmp_path, Journal(tmp_path), runs, sent)
    assert again.handle(_sync("t-1")) is None
    assert runs == ["sync"]
    assert [m.result.task_id for m in sent] == ["t-1"] * 3
    assert all(m.result.success and m.result.sync.protectable_count == 3 for m in sent)
    running = [r for r in caplog.records if r.getMessage().startswith("running task t-1")]
    assert [r.getMessage() for r in running] == ["running task t-1 (sync)"]


def test_a_repeat_while_the_command_runs_is_ignored(tmp_path: Path) -> None:
    runs: list[str] = []
    sent: list[Any] = []
    gate = threading.Event()
    executor = _executor(tmp_path, Journal(tmp_path), runs, sent, gate)
    thread = executor.handle(_sync("t-1"))
    assert executor.handle(_sync("t-1")) is None
    gate.set()
    assert thread is not None
    thread.join(5)
    assert runs == ["sync"] and len(sent) == 1


def test_unknown_command_fails_with_a_clear_result(tmp_path: Path) -> None:
    sent: list[Any] = []
    executor = Executor(Journal(tmp_path), lambda t: None, sent.append, {})  # type: ignore[arg-type,return-value]
    thread = executor.handle(_sync("t-2"))
    assert thread is not None
    thread.join(5)
    assert not sent[0].result.success
    assert "does not know the command 'sync'" in sent[0].result.error_message


def test_recent_lists_newest_first_within_the_window(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    for i, t in enumerate((100.0, 300.0, 200.0)):
        journal.finish(Entry(f"t-{i}", "sync", True, finished_at=t))
    assert [e.task_id for e in journal.recent(2, since=150.0)] == ["t-1", "t-2"]


def test_an_older_agents_entry_is_sent_again_without_a_typed_result(tmp_path: Path) -> None:
    """An entry journaled before results were typed (its figures in
    extra_info) still reads; the controller gets no result it could
    mistake for the figures of a finished backup."""
    (tmp_path / "t-old.json").write_text(
        '{"task_id": "t-old", "action": "backup", "success": true, "error_code": "", '
        '"error_message": "", "extra_info": {"backups": "[]"}, "finished_at": 1.0}')
    entry = Journal(tmp_path).get("t-old")
    assert entry is not None and entry.success and entry.result == {}
    sent = result_message(entry).result
    assert sent.success and sent.WhichOneof("result") is None


def test_a_typed_result_is_journaled_and_sent_again_unchanged(tmp_path: Path) -> None:
    result = agent_pb2.BackupResult(bytes_scanned=10, bytes_sent=7)
    item = result.backups.add(backup_id="b1", stored_bytes=5, warnings=["w"],
                              change_detection="journal")
    item.protected_at.FromSeconds(1_700_000_000)
    runs: list[str] = []
    sent: list[Any] = []
    journal = Journal(tmp_path)

    def backup(context: CommandContext, command: Any) -> Outcome:
        runs.append("backup")
        return Outcome.done(result)

    def context(task_id: str) -> CommandContext:
        cfg = AgentConfig(name="a", controller="", state_dir=tmp_path)
        return CommandContext(cfg, lambda: 0, lambda p, m: None)

    executor = Executor(journal, context, sent.append, {"backup": backup})
    command = agent_pb2.Command(task_id="t-b", backup=agent_pb2.BackupCommand())
    thread = executor.handle(command)
    assert thread is not None
    thread.join(5)
    assert Executor(Journal(tmp_path), context, sent.append, {}).handle(command) is None
    assert runs == ["backup"]
    assert [m.result.backup for m in sent] == [result, result]


def test_a_result_whose_figures_are_all_zero_is_still_sent_typed(tmp_path: Path) -> None:
    """A sync that found nothing, a restore of an empty directory: the
    result says so, it is not mistaken for an agent that sent none."""
    sent: list[Any] = []

    def sync(context: CommandContext, command: Any) -> Outcome:
        return Outcome.done(agent_pb2.SyncResult(protectable_count=0))

    def context(task_id: str) -> CommandContext:
        cfg = AgentConfig(name="a", controller="", state_dir=tmp_path)
        return CommandContext(cfg, lambda: 0, lambda p, m: None)

    executor = Executor(Journal(tmp_path), context, sent.append, {"sync": sync})
    thread = executor.handle(_sync("t-0"))
    assert thread is not None
    thread.join(5)
    assert Executor(Journal(tmp_path), context, sent.append, {}).handle(_sync("t-0")) is None
    assert [m.result.WhichOneof("result") for m in sent] == ["sync", "sync"]
    assert all(m.result.sync.protectable_count == 0 for m in sent)
