"""Policy runs in the catalog, on SQLite and PostgreSQL: each scheduled run at
most once per vault, full backups every N runs, skipped vaults recorded with
their reason, and retention deleting through the safe delete path."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select

from controller.app import App
from controller.persistence.models import Backup, Checkpoint, Policy, PolicyRun, Task
from controller.services import policies, policy_runs, runs, vaults
from tests.state.conftest import NOW, Inventory
from tests.state.test_runs import _succeed
from tests.state.test_vaults import add, make_vault

DAILY = "FREQ=DAILY;INTERVAL=1;BYHOUR=6;BYMINUTE=00"


def _policy(app: App, project: str, vault_id: str, **od: object) -> str:
    with app.db.begin() as s:
        pid = policies.create_policy(s, project, "nightly", "backup", True, dict(od), [DAILY],
                                     NOW).id
        vaults.associate_policy(s, project, vault_id, pid, "", NOW)
        return pid


def _run(app: App, policy_id: str, vault_id: str, at: dt.datetime,
         online: set[str]) -> policy_runs.RunOutcome | None:
    with app.db.begin() as s:
        policy = s.get(Policy, policy_id)
        assert policy is not None
        return policy_runs.run_on_vault(s, policy, vault_id, at, now=at, online=online)


def test_a_scheduled_run_happens_once_however_often_it_fires(
        app: App, project: str, inventory: Inventory) -> None:
    vid = make_vault(app, project, object_type="disk")
    add(app, project, vid, inventory.add("vol", "disk"))
    pid = _policy(app, project, vid)
    at = dt.datetime(2026, 11, 26, 6, tzinfo=dt.UTC)
    first = _run(app, pid, vid, at, {inventory.agent_id})
    assert first is not None and first.checkpoint_id and len(first.dispatches) == 1
    assert _run(app, pid, vid, at, {inventory.agent_id}) is None
    with app.db.begin() as s:
        cp = s.get(Checkpoint, first.checkpoint_id)
        assert cp is not None and cp.auto_trigger and cp.policy_id == pid
        assert cp.name.startswith("autobk_")
        [run] = s.scalars(select(PolicyRun)).all()
        assert (run.status, run.checkpoint_id) == ("dispatched", first.checkpoint_id)


def test_an_offline_agent_is_listed_as_skipped_on_the_run(
        app: App, project: str, inventory: Inventory) -> None:
    vid = make_vault(app, project, object_type="disk")
    add(app, project, vid, inventory.add("vol", "disk"))
    pid = _policy(app, project, vid)
    outcome = _run(app, pid, vid, NOW, set())
    assert outcome is not None and outcome.dispatches == []
    with app.db.begin() as s:
        run = s.scalars(select(PolicyRun)).one()
        assert "BackupService.0503" in run.detail and "offline" in run.detail


def test_full_backup_interval_forces_every_nth_run_full(
        app: App, project: str, inventory: Inventory) -> None:
    vid = make_vault(app, project, object_type="disk")
    add(app, project, vid, inventory.add("vol", "disk"))
    pid = _policy(app, project, vid, full_backup_interval=3)
    fulls = []
    for i in range(7):
        outcome = _run(app, pid, vid, NOW + dt.timedelta(days=i), {inventory.agent_id})
        assert outcome is not None
        fulls.append(outcome.full)
        for d in outcome.dispatches:
            _succeed(app, d.task_id)
    assert fulls == [True, False, False, True, False, False, True]


def test_missed_runs_are_recorded_once_per_vault(
        app: App, project: str, inventory: Inventory) -> None:
    vid = make_vault(app, project, object_type="disk")
    pid = _policy(app, project, vid)
    with app.db.begin() as s:
        assert policy_runs.record_missed(s, pid, NOW, NOW) == 1
    with app.db.begin() as s:
        assert policy_runs.record_missed(s, pid, NOW, NOW) == 0
        assert s.scalars(select(PolicyRun.status)).all() == ["missed"]


def test_retention_after_a_successful_run_deletes_the_oldest_automatic_backups(
        app: App, project: str, inventory: Inventory) -> None:
    vid = make_vault(app, project, object_type="disk")
    add(app, project, vid, inventory.add("vol", "disk"))
    pid = _policy(app, project, vid, max_backups=2)
    deleted: list[list[str]] = []
    for i in range(4):
        outcome = _run(app, pid, vid, NOW + dt.timedelta(days=i), {inventory.agent_id})
        assert outcome is not None
        [d] = outcome.dispatches
        _succeed(app, d.task_id, protected_at=NOW + dt.timedelta(days=i))
        with app.db.begin() as s:
            task = s.get(Task, d.task_id)
            assert task is not None
            task_ids = policy_runs.apply_retention(s, task, NOW + dt.timedelta(days=i))
            deleted.append([str(s.get(Task, t).extra_info["backup_id"])  # type: ignore[union-attr]
                            for t in task_ids])
    assert [len(d) for d in deleted] == [0, 0, 1, 1]
    with app.db.begin() as s:
        statuses = {b.id: b.status for b in s.scalars(select(Backup))}
        for task_id in (t for batch in deleted for t in batch):
            assert statuses[task_id] == "deleting"
        delete_tasks = s.scalars(select(Task).where(Task.operation_type == "delete")).all()
        assert {t.extra_info["retention_rule"] for t in delete_tasks} == {"max_backups"}
        assert sum(1 for st in statuses.values() if st == "available") == 2


def test_manual_backups_are_kept_unless_the_policy_includes_them(
        app: App, project: str, inventory: Inventory) -> None:
    for include in (False, True):
        vid = make_vault(app, project, name=f"v-{include}", object_type="disk")
        add(app, project, vid, inventory.add(f"vol-{include}", "disk"))
        with app.db.begin() as s:
            pid = policies.create_policy(s, project, f"p-{include}", "backup", True,
                                         {"max_backups": 1, "include_manual_backups": include},
                                         [DAILY], NOW).id
            vaults.associate_policy(s, project, vid, pid, "", NOW)
        with app.db.begin() as s:
            _cp, [manual] = runs.create_checkpoint(
                s, project, vid, [], name="", description="", full=False, now=NOW,
                online={inventory.agent_id})
        _succeed(app, manual.task_id, protected_at=NOW)
        outcome = _run(app, pid, vid, NOW + dt.timedelta(days=1), {inventory.agent_id})
        assert outcome is not None
        [auto] = outcome.dispatches
        _succeed(app, auto.task_id, protected_at=NOW + dt.timedelta(days=1))
        with app.db.begin() as s:
            task = s.get(Task, auto.task_id)
            assert task is not None
            deleted = policy_runs.apply_retention(s, task, NOW + dt.timedelta(days=1))
        assert len(deleted) == (1 if include else 0)
