"""Prometheus metrics of real processes: after a backup and a replication
across two clouds, every series the Grafana dashboard (docs/grafana) queries
is in the exposition of a real controller or a real agent, with figures
that say what happened; a controller whose metrics port is taken does not
start, and says which setting to change."""

from __future__ import annotations

import json
import re
import socket
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cbr.v1 import policy_pb2, task_pb2, vault_pb2
from tests.integration.test_data_path import _backup, _restore
from tests.support.clouds import Clouds, _replicate
from tests.support.processes import ControllerFactory, wait_until

pytestmark = pytest.mark.integration

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana" / "cbr-dashboard.json"
# Series names in PromQL: ours, and the process collector's.
SERIES = re.compile(r"\b((?:cbr|process)_[a-z0-9_]+)\b")

Samples = dict[str, list[tuple[dict[str, str], float]]]


def _scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=10) as answer:
        assert answer.status == 200
        text = answer.read().decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return out


def _value(samples: Samples, name: str, **labels: str) -> float:
    return sum(v for have, v in samples.get(name, [])
               if all(have.get(k) == want for k, want in labels.items()))


def dashboard_series() -> set[str]:
    """Every series name the dashboard's queries use."""
    doc = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]
    assert exprs, "the dashboard has no queries"
    return {name for expr in exprs for name in SERIES.findall(expr)}


def test_the_dashboard_queries_series_that_exist_after_a_backup_and_a_replication(
        clouds: Clouds, tmp_path: Path) -> None:
    src, target = clouds.source, clouds.target
    policy = src.client.policies.CreatePolicy(policy_pb2.CreatePolicyRequest(
        name="to-b", operation_type=policy_pb2.POLICY_OPERATION_TYPE_REPLICATION, enabled=True,
        trigger=policy_pb2.Trigger(pattern=["FREQ=DAILY;INTERVAL=1;BYHOUR=3;BYMINUTE=0"]),
        operation_definition=policy_pb2.OperationDefinition(
            max_backups=5, destination_region="region-b",
            destination_project_id=target.account_id,
            credential_id=clouds.credential_id))).policy
    src.client.vaults.AssociateVaultPolicy(vault_pb2.AssociateVaultPolicyRequest(
        vault_id=src.vaults["server"], policy_id=policy.id,
        destination_vault_id=target.vaults["server"]))
    backup = _backup(src, "server", "web-1")
    tree = _backup(src, "turbo", "share")
    # Restores go under the source host's restore root, its config's directory.
    restored = _restore(src, tree.id, target_path=str(tmp_path / "a" / "restored"))
    assert restored.status == task_pb2.TASK_STATUS_SUCCESS, restored.error_info
    controller_url = src.controller.metrics_url
    lag = wait_until(lambda: _value(_scrape(controller_url), "cbr_replication_lag_seconds",
                                    vault_id=src.vaults["server"],
                                    destination_region="region-b") > 0,
                     message="a backup waits for replication")
    assert lag
    _replicate(clouds, backup.id, "server")

    controller = _scrape(controller_url)
    agent = _scrape(src.agent.metrics_url())
    importer = _scrape(target.importer.metrics_url())
    target_controller = _scrape(target.controller.metrics_url)

    missing = sorted(
        name for name in dashboard_series()
        if name not in (agent if name.startswith(("cbr_agent_", "process_")) else controller))
    assert missing == [], f"the dashboard queries series no process exposes: {missing}"

    # What they say: the source's backups and replication, the target's import.
    web = src.protectables["web-1"].id
    labels = {"resource_id": web, "resource_name": "web-1", "vault_id": src.vaults["server"]}
    assert _value(controller, "cbr_resource_last_backup_success", **labels) == 1
    assert _value(controller, "cbr_resource_last_backup_success_timestamp_seconds",
                  **labels) > 0
    assert _value(controller, "cbr_operation_duration_seconds_count", operation="backup",
                  outcome="success") == 2
    assert _value(controller, "cbr_operation_duration_seconds_count", operation="replication",
                  outcome="success") == 1
    assert _value(controller, "cbr_operation_duration_seconds_count", operation="restore",
                  outcome="success") == 1
    assert _value(controller, "cbr_operation_stored_bytes_total", operation="restore") > 0
    assert _value(controller, "cbr_operation_read_bytes_total", operation="backup") > 0
    assert _value(controller, "cbr_operation_wire_bytes_total", operation="replication") > 0
    assert _value(controller, "cbr_tasks", operation="backup", status="success") == 2
    assert _value(controller, "cbr_tasks", operation="restore", status="success") == 1
    assert _value(controller, "cbr_replication_lag_seconds", vault_id=src.vaults["server"],
                  destination_region="region-b") == 0
    assert _value(controller, "cbr_vault_capacity_bytes", vault_id=src.vaults["server"]) == \
        100 * 1024**3
    assert _value(controller, "cbr_agents_online", role="host") == 1
    assert _value(controller, "cbr_policy_loop_leader") == 1
    assert _value(controller, "cbr_api_calls_total",
                  method="/cbr.v1.BackupService/CreateCheckpoint", code="OK") == 2
    assert _value(controller, "cbr_api_call_duration_seconds_count",
                  method="/cbr.v1.BackupService/CreateCheckpoint") == 2
    assert _value(agent, "cbr_agent_commands_total", action="backup", outcome="success") == 2
    assert _value(agent, "cbr_agent_commands_total", action="replicate", outcome="success") == 1
    assert _value(agent, "cbr_agent_commands_total", action="restore", outcome="success") == 1
    assert _value(agent, "cbr_agent_backup_change_detection_total") >= 3  # two disks, a tree
    assert _value(agent, "cbr_agent_last_backup_dedup_ratio", resource="web-1") >= 0
    assert _value(agent, "process_resident_memory_bytes") > 10 << 20
    assert _value(agent, "cbr_agent_info", role="host") == 1
    assert _value(importer, "cbr_agent_commands_total", action="import", outcome="success") == 1
    assert _value(importer, "cbr_agent_info", role="importer") == 1
    assert _value(target_controller, "cbr_operation_duration_seconds_count",
                  operation="import", outcome="success") == 1
    assert _value(target_controller, "cbr_agents_online", role="importer") == 1


def test_a_controller_whose_metrics_port_is_taken_does_not_start(
        controller_factory: ControllerFactory) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        blocked = controller_factory("blocked", start=False,
                                     extra_args=["--metrics-listen", f"127.0.0.1:{port}"])
        with pytest.raises(RuntimeError, match="exited with code 2"):
            blocked.start()
    assert f"cannot listen on 127.0.0.1:{port} for metrics (metrics_listen): the port is in " \
        "use" in blocked.log_text()
    assert not (blocked.data_dir / "endpoints.json").exists()
