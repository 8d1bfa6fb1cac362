"""The typed commands a task stores, and what a task shows of a typed result."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from cbr.v1 import agent_pb2
from controller.services import commands


def _task(command: agent_pb2.Command) -> Any:
    return SimpleNamespace(id="t-1", command=commands.stored(command))


def test_a_stored_command_reads_back_the_same_with_its_task_id() -> None:
    sent = commands.sync()
    task = _task(sent)
    assert task.command == {"sync": {}}
    assert commands.kind(task) == "sync"
    back = commands.of(task)
    assert back.task_id == "t-1" and back.WhichOneof("action") == "sync"


def test_the_import_command_is_stored_under_its_action() -> None:
    import datetime as dt

    command = commands.import_("i-1", "v-1", b"\x01" * 32, ["r2", "r1"],
                               dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    task = _task(command)
    assert commands.kind(task) == "import"
    back = getattr(commands.of(task), "import")
    assert back.replica_ids == ["r1", "r2"] and back.token_sha256 == b"\x01" * 32


def test_a_task_shows_the_figures_of_its_result_flat() -> None:
    result = agent_pb2.CommandResult(task_id="t", success=True, replicate=agent_pb2.
                                     ReplicateResult(bytes_total=10, wire_bytes=4, attempts=2))
    info = commands.result_info(result)
    assert info["bytes_sent"] == info["wire_bytes"] == 4
    assert info["bytes_total"] == 10 and info["attempts"] == 2 and info["chunks_sent"] == 0


def test_warnings_are_joined_and_nested_records_left_to_the_catalog() -> None:
    restore = agent_pb2.CommandResult(restore=agent_pb2.RestoreResult(
        bytes_restored=3, warnings=["a", "b"]))
    assert commands.result_info(restore) == {"bytes_restored": 3, "bytes_read": 0,
                                             "warnings": "a; b"}
    backup = agent_pb2.CommandResult(backup=agent_pb2.BackupResult(bytes_new=1))
    backup.backup.backups.add(backup_id="b")
    assert commands.result_info(backup) == {"bytes_scanned": 0, "bytes_sent": 0,
                                            "bytes_new": 1}


def test_a_result_without_its_typed_part_shows_nothing_and_is_not_taken_for_one() -> None:
    bare = agent_pb2.CommandResult(task_id="t", success=True)
    assert commands.result_info(bare) == {}
    assert commands.typed_result(bare, "backup") is None
    assert commands.typed_result(None, "backup") is None
    other = agent_pb2.CommandResult(sync=agent_pb2.SyncResult(protectable_count=1))
    assert commands.typed_result(other, "backup") is None
