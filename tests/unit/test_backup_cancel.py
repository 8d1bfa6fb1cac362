"""A cancelled backup, on the agent: it stops, indexes what it uploaded,
writes no manifest, and the next backup reuses those chunks.

The ``backup`` command runs in this process against a local vault; the
cancel is the executor's flag, set from the command's own progress reports
once some packs have been stored.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from agent.commands import CommandContext, Outcome
from agent.commands import backup as backup_command
from agent.commands import restore as restore_command
from agent.commands import storage as storage_command
from agent.config import AgentConfig, FileSystemSpec
from agent.dataplane import Cancelled
from agent.executor import Executor
from agent.journal import Journal
from cbr import errors
from cbr.repo import Repository
from cbr.repo.maintenance.prune import prune
from cbr.storage.local import LocalBackend
from cbr.v1 import agent_pb2

MiB = 1 << 20
FILES = 24
FILE_SIZE = 4 * MiB  # random: incompressible, every byte stored once


def _tree(root: Path) -> Path:
    root.mkdir()
    for i in range(FILES):
        (root / f"f{i:02d}.bin").write_bytes(os.urandom(FILE_SIZE))
    return root


def _vault(path: Path) -> str:
    Repository.init(LocalBackend(path), vault_id="v1", encrypted=False,
                    pack_size=2 * MiB).close()
    return str(path)


def _config(tmp_path: Path, tree: Path) -> AgentConfig:
    return AgentConfig(name="h", controller="-", state_dir=tmp_path / "state",
                       file_systems=(FileSystemSpec("fs", str(tree), change_journal=False),))


def _command(vault: str, backup_id: str) -> agent_pb2.BackupCommand:
    return agent_pb2.BackupCommand(
        storage=agent_pb2.StorageAccess(url=vault), vault_id="v1", checkpoint_id="cp",
        backup_id=backup_id, name=backup_id, resource_id="r1", resource_local_id="turbo:fs",
        resource_name="fs", resource_type=3, resource_size_bytes=FILES * FILE_SIZE)


def _run(config: AgentConfig, command: agent_pb2.BackupCommand,
         cancel_after_sent: int | None = None) -> tuple[Outcome, threading.Event]:
    cancelled = threading.Event()

    def progress(percent: int, message: str, counters: dict[str, int] | None = None) -> None:
        if cancel_after_sent is not None and (counters or {}).get("bytes_sent", 0) \
                >= cancel_after_sent:
            cancelled.set()

    context = CommandContext(config, lambda: 0, progress, "t-" + command.backup_id,
                             cancelled=cancelled)
    return backup_command.run(context, command), cancelled


def _stored(result: Outcome) -> int:
    assert isinstance(result.result, agent_pb2.BackupResult)
    return result.result.bytes_sent


@pytest.fixture(autouse=True)
def _fast_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    # The progress reports are where this test sets the cancel flag.
    monkeypatch.setattr(storage_command, "PROGRESS_EVERY_S", 0.01)


def test_a_cancelled_backup_indexes_its_packs_writes_no_manifest_and_the_next_stores_less(
        tmp_path: Path) -> None:
    tree = _tree(tmp_path / "tree")
    config = _config(tmp_path, tree)
    vault = _vault(tmp_path / "vault")
    outcome, _ = _run(config, _command(vault, "b-cancelled"), cancel_after_sent=12 * MiB)
    assert not outcome.success
    assert outcome.error_code == errors.TaskCancelled.code
    assert "cancelled" in outcome.error_message

    backend = LocalBackend(Path(vault))
    assert [o.name for o in backend.list("manifests/")] == []
    with Repository.open(backend) as repo:
        assert repo.content.list_packs(), "the cancelled backup uploaded nothing"
        assert repo.content.list_unindexed_packs() == []  # every stored pack is findable

    done, _ = _run(config, _command(vault, "b-next"))
    assert done.success, done.error_message
    fresh, _ = _run(config, _command(_vault(tmp_path / "fresh"), "b-fresh"))
    assert fresh.success, fresh.error_message
    print(f"fresh full backup stored {_stored(fresh)} bytes; after the cancel the next "
          f"stored {_stored(done)}")
    assert _stored(done) < _stored(fresh) - 8 * MiB
    assert [o.name for o in backend.list("manifests/")] == ["manifests/b-next"]


def test_prune_takes_a_cancelled_backups_packs_for_garbage_without_failing(
        tmp_path: Path) -> None:
    tree = _tree(tmp_path / "tree")
    config = _config(tmp_path, tree)
    vault = _vault(tmp_path / "vault")
    outcome, _ = _run(config, _command(vault, "b-cancelled"), cancel_after_sent=8 * MiB)
    assert outcome.error_code == errors.TaskCancelled.code
    with Repository.open(LocalBackend(Path(vault))) as repo:
        report = prune(repo)
    assert report.backups == 0
    assert report.live_blobs == 0 and report.dead_blobs > 0
    assert report.packs_condemned > 0


def test_a_cancelled_restore_stops_and_says_so(tmp_path: Path) -> None:
    tree = _tree(tmp_path / "tree")
    config = _config(tmp_path, tree)
    vault = _vault(tmp_path / "vault")
    done, _ = _run(config, _command(vault, "b1"))
    assert done.success, done.error_message
    cancelled = threading.Event()
    cancelled.set()  # the cancel arrived as the restore started
    context = CommandContext(config, lambda: 0, lambda *a, **k: None, "t-restore",
                             cancelled=cancelled)
    target = Path(config.effective_restore_roots[0]) / "out"
    outcome = restore_command.run(context, agent_pb2.RestoreCommand(
        storage=agent_pb2.StorageAccess(url=vault), backup_id="b1", resource_type=3,
        target_path=str(target)))
    assert not outcome.success
    assert outcome.error_code == errors.TaskCancelled.code
    assert not any(p.is_file() for p in target.rglob("*"))


def test_the_executor_stops_a_running_command_and_reports_it_cancelled(
        tmp_path: Path) -> None:
    started = threading.Event()

    def slow(context: CommandContext, _command: Any) -> Outcome:
        started.set()
        if context.cancelled.wait(30):  # what the data path does at its next check
            return storage_command.failure(Cancelled("the backup was cancelled"), "backup")
        return Outcome.done(agent_pb2.SyncResult())

    sent: list[Any] = []
    journal = Journal(tmp_path / "journal")
    executor = Executor(journal, lambda task_id: CommandContext(
        _config(tmp_path, tmp_path), lambda: 0, lambda *a, **k: None, task_id),
        sent.append, commands={"sync": slow})
    task_id = "0f0e0d0c-0b0a-4908-8706-050403020100"
    thread = executor.handle(agent_pb2.Command(task_id=task_id, sync=agent_pb2.SyncCommand()))
    assert thread is not None and started.wait(10)
    began = time.monotonic()
    assert executor.cancel(task_id)
    thread.join(10)
    assert time.monotonic() - began < 5
    [message] = sent
    assert not message.result.success
    assert message.result.error_code == errors.TaskCancelled.code
    assert journal.get(task_id) is not None  # journaled: a resend says cancelled too
    assert not executor.cancel(task_id)  # no longer running: its result is sent again
    assert sent[-1].result.error_code == errors.TaskCancelled.code
