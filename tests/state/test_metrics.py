"""The controller's scrape-time series, read from a known state on SQLite and
PostgreSQL: last backups per resource, tasks, replication lag, vaults,
agents online and missed runs; a family the database cannot answer is
skipped and the others are still served."""

from __future__ import annotations

import datetime as dt

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from cbr.clock import FakeClock
from controller.app import App
from controller.metrics.collector import StateCollector
from controller.persistence.models import (
    Agent,
    Backup,
    Policy,
    PolicyRun,
    ReplicationRecord,
    Task,
    Vault,
    VaultPolicy,
)
from controller.services import monitoring
from tests.state.conftest import NOW, Inventory
from tests.state.test_vaults import add, make_vault

HOUR = dt.timedelta(hours=1)


def _registry(app: App) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StateCollector(app))
    return registry


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def _task(app: App, project: str, *, resource: str, vault: str, status: str,
          ended: dt.datetime | None, op: str = "backup") -> None:
    with app.db.begin() as s:
        s.add(Task(project_id=project, operation_type=op, status=status, vault_id=vault,
                   resource_id=resource, created_at=NOW - 2 * HOUR, started_at=NOW - 2 * HOUR,
                   ended_at=ended, updated_at=NOW))


def _backup(app: App, project: str, vault: str, created: dt.datetime, status: str = "available",
            **kw: object) -> str:
    with app.db.begin() as s:
        b = Backup(project_id=project, vault_id=vault, name="b", resource_id="r",
                   resource_type="server", status=status, created_at=created, updated_at=created,
                   **kw)
        s.add(b)
        s.flush()
        return b.id


def _replicated(app: App, project: str, backup_id: str, vault: str, region: str,
                status: str = "success") -> None:
    with app.db.begin() as s:
        s.add(ReplicationRecord(project_id=project, status=status, vault_id=vault,
                                source_backup_id=backup_id, destination_region=region,
                                extra_info={"side": "source"}, created_at=NOW, updated_at=NOW))


def _replication_policy(app: App, project: str, vault: str, region: str,
                        enabled: bool = True) -> None:
    with app.db.begin() as s:
        p = Policy(project_id=project, name=f"to-{region}-{vault[:4]}",
                   operation_type="replication", enabled=enabled,
                   operation_definition={"destination_region": region, "credential_id": "c"},
                   trigger_patterns=[], created_at=NOW, updated_at=NOW)
        s.add(p)
        s.flush()
        s.add(VaultPolicy(vault_id=vault, policy_id=p.id, operation_type="replication",
                          created_at=NOW))


def test_each_resource_shows_its_last_success_and_how_its_last_backup_went(
        app: App, project: str, inventory: Inventory) -> None:
    vid = make_vault(app, project, object_type="disk")
    ok, broken, never = (inventory.add(n, "disk") for n in ("ok", "broken", "never"))
    add(app, project, vid, ok, broken, never)
    _task(app, project, resource=ok, vault=vid, status="success", ended=NOW - 3 * HOUR)
    _task(app, project, resource=ok, vault=vid, status="failed", ended=NOW - 2 * HOUR)
    _task(app, project, resource=ok, vault=vid, status="success", ended=NOW - HOUR)
    _task(app, project, resource=ok, vault=vid, status="running", ended=None)
    _task(app, project, resource=broken, vault=vid, status="success", ended=NOW - 5 * HOUR)
    _task(app, project, resource=broken, vault=vid, status="timeout", ended=NOW - HOUR)
    _task(app, project, resource=broken, vault=vid, status="skipped", ended=NOW)
    registry = _registry(app)
    labels = {"vault_id": vid}
    last = "cbr_resource_last_backup_success_timestamp_seconds"
    assert _value(registry, last, resource_id=ok, resource_name="ok", **labels) == \
        (NOW - HOUR).timestamp()
    assert _value(registry, "cbr_resource_last_backup_success", resource_id=ok,
                  resource_name="ok", **labels) == 1.0
    assert _value(registry, last, resource_id=broken, resource_name="broken", **labels) == \
        (NOW - 5 * HOUR).timestamp()
    assert _value(registry, "cbr_resource_last_backup_success", resource_id=broken,
                  resource_name="broken", **labels) == 0.0
    text = generate_latest(registry).decode()
    assert f'resource_id="{never}"' not in text


def test_tasks_are_counted_by_operation_and_status(
        app: App, project: str, inventory: Inventory) -> None:
    for status in ("success", "success", "failed", "running"):
        _task(app, project, resource="r", vault="v", status=status, ended=NOW)
    _task(app, project, resource="r", vault="v", status="waiting", ended=None, op="restore")
    registry = _registry(app)
    assert _value(registry, "cbr_tasks", operation="backup", status="success") == 2
    assert _value(registry, "cbr_tasks", operation="backup", status="failed") == 1
    assert _value(registry, "cbr_tasks", operation="backup", status="running") == 1
    assert _value(registry, "cbr_tasks", operation="restore", status="waiting") == 1
    assert _value(registry, "cbr_tasks", operation="restore", status="success") is None


def test_replication_lag_is_how_long_the_destination_has_missed_a_backup(
        app: App, project: str) -> None:
    app.clock = FakeClock(NOW.timestamp())
    behind, current, idle, off = (make_vault(app, project, name=n)
                                  for n in ("behind", "current", "idle", "off"))
    for vid in (behind, current, idle):
        _replication_policy(app, project, vid, "region-2")
    _replication_policy(app, project, off, "region-2", enabled=False)
    # behind: the 10-hour-old backup went; the two after it did not (the
    # newer of them is being replicated); a failed one does not count.
    went = _backup(app, project, behind, NOW - 10 * HOUR)
    _replicated(app, project, went, behind, "region-2")
    _backup(app, project, behind, NOW - 6 * HOUR)
    pending = _backup(app, project, behind, NOW - 2 * HOUR)
    _replicated(app, project, pending, behind, "region-2", status="replicating")
    _backup(app, project, behind, NOW - 20 * HOUR, status="error")
    # current: everything went, or a rule skipped it.
    for age, status in ((5, "success"), (3, "skip")):
        _replicated(app, project, _backup(app, project, current, NOW - age * HOUR), current,
                    "region-2", status)
    _backup(app, project, off, NOW - 30 * HOUR)
    registry = _registry(app)
    lag = "cbr_replication_lag_seconds"
    assert _value(registry, lag, vault_id=behind, destination_region="region-2") == 6 * 3600
    assert _value(registry, lag, vault_id=current, destination_region="region-2") == 0
    assert _value(registry, lag, vault_id=idle, destination_region="region-2") == 0
    assert _value(registry, lag, vault_id=off, destination_region="region-2") is None


def test_a_vault_replicated_by_hand_has_a_lag_and_a_replication_vault_has_none(
        app: App, project: str) -> None:
    app.clock = FakeClock(NOW.timestamp())
    by_hand, replicas = make_vault(app, project, name="by-hand"), make_vault(
        app, project, name="replicas")
    _replicated(app, project, _backup(app, project, by_hand, NOW - 8 * HOUR), by_hand,
                "region-2")
    _backup(app, project, by_hand, NOW - 3 * HOUR)  # not replicated (yet)
    # This cloud as a target: an import's record names its vault on both sides.
    with app.db.begin() as s:
        s.add(ReplicationRecord(project_id=project, status="success", vault_id=replicas,
                                destination_vault_id=replicas, destination_region="region-1",
                                source_backup_id="elsewhere", created_at=NOW, updated_at=NOW))
    registry = _registry(app)
    lag = "cbr_replication_lag_seconds"
    assert _value(registry, lag, vault_id=by_hand, destination_region="region-2") == 3 * 3600
    assert _value(registry, lag, vault_id=replicas, destination_region="region-1") is None


def test_vaults_show_used_and_capacity_bytes(app: App, project: str) -> None:
    vid = make_vault(app, project, name="full")
    with app.db.begin() as s:
        vault = s.get(Vault, vid)
        assert vault is not None
        vault.used_bytes = 12345
    registry = _registry(app)
    assert _value(registry, "cbr_vault_used_bytes", vault_id=vid, vault_name="full") == 12345
    assert _value(registry, "cbr_vault_capacity_bytes", vault_id=vid, vault_name="full") == \
        100 * 1024**3
    assert _value(registry, "cbr_vault_threshold_ratio", vault_id=vid, vault_name="full") == 0.8
    assert _value(registry, "cbr_vault_threshold_exceeded", vault_id=vid,
                  vault_name="full") == 0
    with app.db.begin() as s:
        vault = s.get(Vault, vid)
        assert vault is not None
        vault.threshold_exceeded = True
    assert _value(_registry(app), "cbr_vault_threshold_exceeded", vault_id=vid,
                  vault_name="full") == 1


def test_agents_online_are_counted_by_role_from_any_controller(app: App, project: str) -> None:
    app.clock = FakeClock(NOW.timestamp())
    seen = {"recent": NOW - dt.timedelta(seconds=5), "stale": NOW - HOUR}
    with app.db.begin() as s:
        for n, (role, connected, last, revoked) in enumerate([
                ("host", True, "recent", False), ("host", True, "recent", False),
                ("host", True, "stale", False), ("host", False, "recent", False),
                ("host", True, "recent", True), ("importer", True, "recent", False)]):
            s.add(Agent(project_id=project, name=f"a{n}", role=role,
                        certificate_fingerprint=f"{n:064d}", enrolled_at=NOW,
                        connected=connected, last_seen_at=seen[last], revoked=revoked))
    registry = _registry(app)
    assert _value(registry, "cbr_agents_online", role="host") == 2
    assert _value(registry, "cbr_agents_online", role="importer") == 1


def test_missed_runs_and_leadership(app: App, project: str) -> None:
    vid = make_vault(app, project)
    with app.db.begin() as s:
        p = Policy(project_id=project, name="nightly", operation_type="backup",
                   operation_definition={}, trigger_patterns=[], created_at=NOW,
                   updated_at=NOW)
        s.add(p)
        s.flush()
        for n, status in enumerate(("missed", "missed", "dispatched", "skipped")):
            s.add(PolicyRun(policy_id=p.id, vault_id=vid, scheduled_at=NOW + n * HOUR,
                            status=status, created_at=NOW))
    registry = _registry(app)
    assert _value(registry, "cbr_policy_runs_missed_total") == 2
    assert _value(registry, "cbr_policy_loop_leader") == 0  # this App's loop never led


def test_a_family_the_database_fails_is_skipped_and_the_others_are_served(
        app: App, project: str, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    make_vault(app, project, name="still-there")

    def broken(*_args: object) -> object:
        raise RuntimeError("relation \"tasks\" does not exist")

    working = monitoring.tasks_by_status
    monkeypatch.setattr(monitoring, "tasks_by_status", broken)
    registry = _registry(app)
    for _ in range(3):
        text = generate_latest(registry).decode()
        assert "cbr_tasks" not in text
        assert 'vault_name="still-there"' in text
        assert "cbr_agents_online" in text
    assert caplog.text.count("cannot read the tasks from the state database") == 1
    monkeypatch.setattr(monitoring, "tasks_by_status", working)
    with caplog.at_level("INFO", "cbr.controller.metrics"):
        generate_latest(registry)
    assert "the tasks read again from the state database" in caplog.text
