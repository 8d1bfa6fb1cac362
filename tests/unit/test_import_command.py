"""The importer's ``import`` command: it tells the target what has arrived
while it waits for the commit, and reports the commit's figures."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path
from typing import Any, cast

import pytest

from agent.commands import CommandContext, imports
from agent.importer import ImportGrants, token_digest
from cbr.repo import Repository
from cbr.storage.local import LocalBackend
from cbr.v1 import agent_pb2
from tests.support.processes import wait_until


def test_an_import_reports_what_has_arrived_until_it_is_committed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(imports, "WAIT_SLICE_S", 0.02)
    Repository.init(LocalBackend(tmp_path / "vault"), vault_id="vault-b",
                    encrypted=False).close()
    command = agent_pb2.ImportCommand(
        storage=agent_pb2.StorageAccess(url=str(tmp_path / "vault")), import_id="imp-1",
        vault_id="vault-b", token_sha256=token_digest("t"), replica_ids=["r1"])
    command.expires_at.FromDatetime(dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
    grants = ImportGrants()
    said: list[tuple[int, str, dict[str, int]]] = []
    context = CommandContext(config=cast(Any, None), report_inventory=lambda: 0,
                             progress=lambda p, m, c=None: said.append((p, m, dict(c or {}))),
                             task_id="task-1", grants=grants)
    outcome: list[Any] = []
    runner = threading.Thread(target=lambda: outcome.append(imports.run(context, command)))
    runner.start()
    grant = wait_until(lambda: grants.get("imp-1"), message="the grant is registered")
    grant.stats.update(bytes_stored=4096, chunks_received=3)
    wait_until(lambda: said and said[-1][2]["bytes_stored"] == 4096,
               message="the arrival is reported")
    grant.stats.update(bytes_stored=8192, chunks_received=5)
    wait_until(lambda: said[-1][2] == {"bytes_stored": 8192, "chunks_received": 5},
               message="the next arrival is reported")
    assert all(p == 0 and m == "receiving chunks" for p, m, _c in said)
    assert len(said) == 2  # nothing new, nothing said
    grant.committed = True
    grant.manifest_sha256 = {"r1": "ab" * 32}
    grant.ended.set()
    runner.join(10)
    [done] = outcome
    assert done.success and done.result is not None
    assert done.result.bytes_stored == 8192  # type: ignore[attr-defined]
