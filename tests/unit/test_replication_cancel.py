"""Cancelling a replication, on both agents, over a real ImporterService
stream on loopback: the source stops between batches and never commits, and
the importer's waiting command ends cancelled at once, its grant aborted."""

from __future__ import annotations

import datetime as dt
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from agent.commands import CommandContext
from agent.commands import imports as import_command
from agent.commands import replicate as replicate_command
from agent.config import AgentConfig
from agent.dataplane import Cancelled
from cbr import errors
from cbr.repo.replicate import backup_manifests, replica_manifests
from cbr.storage.local import LocalBackend
from cbr.v1 import agent_pb2
from tests.unit.test_importer_stream import (  # noqa: F401  (clouds is a fixture)
    SOURCE,
    Clouds,
    MiB,
    _disk_backup,
    _grant,
    clouds,
)


def _context(tmp_path: Path, cancelled: threading.Event, **kw: Any) -> CommandContext:
    config = AgentConfig(name="h", controller="-", state_dir=tmp_path / "state")
    return CommandContext(config, lambda: 0, kw.pop("progress", lambda *a, **k: None), "t1",
                          cancelled=cancelled, **kw)


def test_a_cancelled_transfer_stops_between_batches_and_commits_no_replica(
        clouds: Clouds, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    img = tmp_path / "d.img"
    img.write_bytes(os.urandom(24 * MiB))
    _disk_backup(clouds, img, "b1")
    _grant(clouds, "tok", ["r1"])
    monkeypatch.setattr(replicate_command, "_channel", lambda _command: clouds.channel)
    cancelled = threading.Event()
    reports: list[dict[str, int]] = []

    def progress(percent: int, message: str, counters: dict[str, int]) -> None:
        reports.append(counters)
        cancelled.set()  # the controller's cancel arrives after the first batch

    command = agent_pb2.ReplicateCommand(backup_id="b1", import_token="tok",
                                         replica_ids={"b1": "r1"},
                                         destination_vault_id="vault-b",
                                         destination_checkpoint_id="target-cp")
    manifests = backup_manifests(clouds.source, "b1")
    replicas = replica_manifests(manifests, {"b1": "r1"}, vault_id="vault-b",
                                 checkpoint_id="target-cp", source=SOURCE)
    totals = replicate_command._Totals(24 * MiB)
    with pytest.raises(Cancelled):
        replicate_command._transfer(clouds.source, command, _context(
            tmp_path, cancelled, progress=progress), manifests, replicas, totals)
    assert len(reports) == 1
    assert totals.attempts == 1  # a cancel is not a broken stream to resume
    target = LocalBackend(clouds.target_dir)
    assert [o.name for o in target.list("manifests/")] == []


def test_a_cancelled_import_ends_at_once_with_its_grant_aborted(
        clouds: Clouds, tmp_path: Path) -> None:  # noqa: F811
    expires = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    command = agent_pb2.ImportCommand(
        storage=agent_pb2.StorageAccess(url=str(clouds.target_dir)), import_id="imp-1",
        vault_id="vault-b", token_sha256=b"\0" * 32, replica_ids=["r1"])
    command.expires_at.FromDatetime(expires)
    cancelled = threading.Event()
    context = _context(tmp_path, cancelled, grants=clouds.grants)
    outcome: list[Any] = []
    runner = threading.Thread(target=lambda: outcome.append(import_command.run(context,
                                                                               command)))
    runner.start()
    while (grant := clouds.grants.get("imp-1")) is None:
        time.sleep(0.01)
    began = time.monotonic()
    cancelled.set()
    runner.join(10)
    assert time.monotonic() - began < 3
    [done] = outcome
    assert not done.success and done.error_code == errors.TaskCancelled.code
    assert grant.aborted  # no new stream opens with it
