"""Verify and prune policies run by the policy loop, on SQLite and
PostgreSQL: each run is a maintenance task linked to its run, a verify with
read_data_subset n/t reads the next part each run (t runs read every pack
once), its results are kept on the task, and problems raise one event."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from cbr.repo import Repository, layout
from cbr.repo.maintenance.subset import part_of
from controller.app import App
from controller.persistence.models import Event, PolicyRun, Task, Vault
from controller.persistence.vocabulary import EventType
from controller.services import policies, tasks, vaults
from tests.state.conftest import NOW
from tests.state.test_vaults import make_vault
from tests.unit.test_repo_prune import BLOCK, _blocks, _disk

DAILY = "FREQ=DAILY;INTERVAL=1;BYHOUR=6;BYMINUTE=00"
AT = dt.datetime(2026, 11, 26, 6, tzinfo=dt.UTC)


@pytest.fixture
def loop_app(app: App) -> Iterator[App]:
    yield app
    if app.maintenance is not None:
        app.maintenance.stop()


def _vault_with_data(app: App, project: str) -> tuple[str, list[bytes], Repository]:
    vid = make_vault(app, project, object_type="disk")
    with app.db.begin() as s:
        vault = s.get(Vault, vid)
        assert vault is not None
        vault.storage_url = url = f"file://{app.config.data_dir / 'storage' / vid}"
    repo = Repository.init(app.storage.backend(url), vault_id=vid, encrypted=False,
                           pack_size=2 * BLOCK)
    blocks = _blocks(16)
    _disk(repo, "b1", blocks)
    return vid, blocks, repo


def _policy(app: App, project: str, vault_id: str, kind: str, **od: object) -> str:
    with app.db.begin() as s:
        pid = policies.create_policy(s, project, kind, kind, True, dict(od), [DAILY], NOW).id
        vaults.associate_policy(s, project, vault_id, pid, "", NOW)
        return pid


def _finished(app: App, task_id: str) -> Task:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with app.db.begin() as s:
            task = s.get(Task, task_id)
            assert task is not None
            if task.status in tasks.FINAL_STATUSES:
                s.expunge(task)
                return task
        time.sleep(0.05)
    raise AssertionError(f"task {task_id} did not finish")


def _scheduled_run(app: App, policy_id: str, day: int) -> str:
    assert app.scheduler is not None
    [task_id] = app.scheduler.run(policy_id, AT + dt.timedelta(days=day), manual=False)
    return task_id


def test_a_verify_policy_reads_the_next_part_each_run_and_all_of_it_over_t_runs(
        loop_app: App, project: str) -> None:
    vid, _blocks_written, repo = _vault_with_data(loop_app, project)
    packs = sorted(repo.index.pack_ids())
    pid = _policy(loop_app, project, vid, "verify", read_data_subset="1/3")
    done = [_finished(loop_app, _scheduled_run(loop_app, pid, day)) for day in range(4)]
    assert [t.extra_info["read_data_subset"] for t in done] == ["1/3", "2/3", "3/3", "1/3"]
    assert all(t.status == "success" and t.policy_id == pid for t in done)
    assert sum(int(t.extra_info["packs_read"]) for t in done[:3]) == len(packs)
    assert done[3].extra_info["packs_read"] == done[0].extra_info["packs_read"]
    with loop_app.db.begin() as s:
        rows = list(s.scalars(select(PolicyRun).order_by(PolicyRun.scheduled_at)))
        assert [r.task_id for r in rows] == [t.id for t in done]
        assert all(r.status == "dispatched" and r.settled for r in rows)
        assert "reads part 1/3" in rows[0].detail


def test_a_verify_policy_finding_damage_keeps_the_results_and_raises_one_event(
        loop_app: App, project: str) -> None:
    vid, blocks, repo = _vault_with_data(loop_app, project)
    cid = repo.hasher().chunk_id(blocks[3])
    loc = repo.index.lookup(repo.config.chunk_key_id, cid)
    assert loc is not None
    name = layout.pack_name(loc.pack_id)
    raw = bytearray(repo.backend.get(name))
    raw[loc.offset + 3] ^= 0x01
    repo.backend.put(name, bytes(raw))
    pid = _policy(loop_app, project, vid, "verify", read_data_subset="1/2")
    done = [_finished(loop_app, _scheduled_run(loop_app, pid, day)) for day in range(2)]
    damaged_part = part_of(loc.pack_id, 2)
    failed = done[damaged_part - 1]
    clean = done[2 - damaged_part]
    assert failed.status == "failed" and clean.status == "success"
    assert int(failed.extra_info["problems"]) >= 1 and failed.extra_info["damaged_backups"] == "b1"
    assert int(failed.extra_info["packs_read"]) >= 1
    with loop_app.db.begin() as s:
        [event] = s.scalars(select(Event).where(
            Event.event_type == EventType.VERIFY_PROBLEMS_FOUND)).all()
        assert event.task_id == failed.id and event.resource_id == vid
        assert event.details["policy_id"] == pid and "b1" in event.summary


def test_a_prune_policy_prunes_the_vault_storage(loop_app: App, project: str) -> None:
    vid, _blocks_written, _repo = _vault_with_data(loop_app, project)
    pid = _policy(loop_app, project, vid, "prune")
    task = _finished(loop_app, _scheduled_run(loop_app, pid, 0))
    assert task.operation_type == "prune" and task.status == "success"
    assert task.policy_id == pid and "vault_used_bytes" in task.extra_info
    with loop_app.db.begin() as s:
        run = s.scalars(select(PolicyRun)).one()
        assert run.task_id == task.id
        vault = s.get(Vault, vid)
        assert vault is not None and vault.used_bytes == int(task.extra_info["vault_used_bytes"])


def test_a_maintenance_run_while_one_is_running_is_skipped_with_the_reason(
        loop_app: App, project: str) -> None:
    vid, _blocks_written, _repo = _vault_with_data(loop_app, project)
    pid = _policy(loop_app, project, vid, "prune")
    with loop_app.db.begin() as s:  # made, not yet run
        busy = vaults.start_maintenance(s, project, vid, tasks.OperationType.PRUNE, NOW)
    assert loop_app.scheduler is not None
    assert loop_app.scheduler.run(pid, AT, manual=False) == []
    with loop_app.db.begin() as s:
        run = s.scalars(select(PolicyRun)).one()
        assert run.status == "skipped" and busy in run.detail
