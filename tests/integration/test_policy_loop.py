"""The policy loop in real controller processes: runs on schedule, run-now,
a restart across due times, and two controllers on one PostgreSQL database
where the leader is killed and the other takes over. Every scheduled time
ends with exactly one run record per vault (run, or recorded as missed).

Schedules here use the test-only ``--scheduler-tick`` (a run every few
seconds) so minutes of schedule pass in seconds of test.
"""

from __future__ import annotations

import datetime as dt
import itertools
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from cbr.client import Client
from cbr.v1 import agent_pb2, backup_pb2, common_pb2, policy_pb2, protectable_pb2, vault_pb2
from tests.integration.test_data_path import _start
from tests.support.pg import fresh_database
from tests.support.processes import AgentFactory, ControllerFactory, enroll, wait_until

pytestmark = pytest.mark.integration

DAILY = "FREQ=DAILY;INTERVAL=1;BYHOUR=6;BYMINUTE=00"
TICK = 2.0


def _loop(tick: float = TICK, lease: float = 2.0) -> list[str]:
    return ["--scheduler-tick", str(tick), "--scheduler-lease", str(lease)]


def _policy(client: Client, vault_id: str, **od: Any) -> str:
    policy = client.policies.CreatePolicy(policy_pb2.CreatePolicyRequest(
        name="every-tick", operation_type=policy_pb2.POLICY_OPERATION_TYPE_BACKUP,
        enabled=True, trigger=policy_pb2.Trigger(pattern=[DAILY]),
        operation_definition=policy_pb2.OperationDefinition(**od))).policy
    client.vaults.AssociateVaultPolicy(vault_pb2.AssociateVaultPolicyRequest(
        vault_id=vault_id, policy_id=policy.id))
    return policy.id


def _runs(client: Client, policy_id: str) -> list[Any]:
    out: list[Any] = []
    token = ""
    while True:
        page = client.policies.ListPolicyRuns(policy_pb2.ListPolicyRunsRequest(
            policy_id=policy_id, page_size=500, page_token=token))
        out.extend(page.runs)
        token = page.next_page_token
        if not token:
            return out


def _times(runs: list[Any]) -> list[dt.datetime]:
    return [r.scheduled_at.ToDatetime(dt.UTC) for r in runs if not r.manual]


def _assert_each_tick_once(runs: list[Any]) -> None:
    counts = Counter(_times(runs))
    assert counts and max(counts.values()) == 1, counts
    ordered = sorted(counts)
    gaps = {(b - a).total_seconds() for a, b in itertools.pairwise(ordered)}
    assert gaps <= {TICK}, f"a scheduled time has no record: gaps {sorted(gaps)}"


def test_a_policy_runs_on_schedule_once_per_time_and_run_now_adds_a_run(
        tmp_path: Any, controller_factory: ControllerFactory,
        agent_factory: AgentFactory) -> None:
    host = _start(tmp_path, controller_factory, agent_factory, extra_args=_loop())
    policy_id = _policy(host.client, host.vaults["disk"], max_backups=2)
    shown = host.client.policies.GetPolicy(policy_pb2.GetPolicyRequest(
        policy_id=policy_id)).policy
    assert len(shown.next_run_times) == 5  # from its trigger rules, for people to read
    dispatched = wait_until(
        lambda: (r := [x for x in _runs(host.client, policy_id)
                       if x.status == "dispatched"]) and len(r) >= 3 and r,
        timeout=60, message="three scheduled runs")
    _assert_each_tick_once(_runs(host.client, policy_id))
    checkpoint = host.client.backups.GetCheckpoint(backup_pb2.GetCheckpointRequest(
        checkpoint_id=dispatched[0].checkpoint_id)).checkpoint
    assert checkpoint.auto_trigger and checkpoint.name.startswith("autobk_")
    now = host.client.policies.RunPolicyNow(policy_pb2.RunPolicyNowRequest(
        policy_id=policy_id))
    assert len(now.checkpoint_ids) == 1
    assert any(r.manual for r in _runs(host.client, policy_id))
    # Retention (max_backups=2) keeps the vault's automatic backups at two.
    def settled() -> bool:
        backups = host.client.backups.ListBackups(backup_pb2.ListBackupsRequest(
            vault_id=host.vaults["disk"], page_size=100)).backups
        available = [b for b in backups if b.status == backup_pb2.BACKUP_STATUS_AVAILABLE]
        return 1 <= len(available) <= 3
    wait_until(settled, timeout=60, message="retention keeps about max_backups")
    # Disabling stops the runs at once.
    host.client.policies.UpdatePolicy(policy_pb2.UpdatePolicyRequest(
        policy_id=policy_id, policy=policy_pb2.Policy(enabled=False),
        update_mask={"paths": ["enabled"]}))
    before = len(_runs(host.client, policy_id))
    time.sleep(3 * TICK)
    assert len(_runs(host.client, policy_id)) == before


def test_a_controller_down_across_due_times_runs_the_latest_once_and_records_the_rest(
        tmp_path: Any, controller_factory: ControllerFactory) -> None:
    ctl = controller_factory("controller", extra_args=_loop())
    client = ctl.client()
    vault = client.vaults.CreateVault(vault_pb2.CreateVaultRequest(
        name="v", object_type=common_pb2.OBJECT_TYPE_DISK, size_gb=10)).vault
    policy_id = _policy(client, vault.id)
    wait_until(lambda: len(_runs(client, policy_id)) >= 2, timeout=30,
               message="the first runs")
    ctl.kill()
    time.sleep(4 * TICK)
    ctl.start()
    client = ctl.client()
    wait_until(lambda: any(r.status == "missed" for r in _runs(client, policy_id)),
               timeout=30, message="the runs due while down are recorded as missed")
    runs = wait_until(lambda: (r := _runs(client, policy_id)) and len(r) >= 8 and r,
                      timeout=40, message="runs go on after the restart")
    _assert_each_tick_once(runs)


@pytest.mark.postgres
def test_two_controllers_share_the_loop_and_the_survivor_takes_over(
        tmp_path: Any, controller_factory: ControllerFactory) -> None:
    with fresh_database() as url:
        first = controller_factory("first", database_url=url, extra_args=_loop())
        second = controller_factory("second", database_url=url, extra_args=_loop(),
                                    start=False)
        # Controllers sharing a database share its sealing keys (README).
        second.data_dir.mkdir(parents=True, exist_ok=True)
        for name in ("master.key", "root.key"):
            if (first.data_dir / name).exists():
                shutil.copy2(first.data_dir / name, second.data_dir / name)
        second.start()
        client = first.client()
        vault = client.vaults.CreateVault(vault_pb2.CreateVaultRequest(
            name="v", object_type=common_pb2.OBJECT_TYPE_DISK, size_gb=10)).vault
        policy_id = _policy(client, vault.id)
        wait_until(lambda: len(_runs(client, policy_id)) >= 3, timeout=40,
                   message="runs under the first leader")
        leader = first if "leads the policy loop" in first.log_text() else second
        survivor = second if leader is first else first
        assert "leads the policy loop" not in survivor.log_text()
        leader.kill()
        # The admin account was made by the first start on this database.
        creds = first.admin_credentials
        client = Client(survivor.api_endpoint, creds["access_key"], creds["secret_key"],
                        root_certificates=survivor.ca_pem)
        survivor.wait_for_log("leads the policy loop", timeout=20)
        count = len(_runs(client, policy_id))
        runs = wait_until(lambda: (r := _runs(client, policy_id)) and len(r) >= count + 3 and r,
                          timeout=40, message="runs under the new leader")
        _assert_each_tick_once(runs)
        client.close()
        survivor.stop()


@pytest.mark.postgres
def test_runs_of_the_leader_reach_an_agent_connected_to_the_other_controller(
        tmp_path: Path, controller_factory: ControllerFactory,
        agent_factory: AgentFactory) -> None:
    with fresh_database() as url:
        leader = controller_factory("leader", database_url=url, extra_args=_loop())
        leader.wait_for_log("leads the policy loop", timeout=20)
        other = controller_factory("other", database_url=url, extra_args=_loop(), start=False)
        other.data_dir.mkdir(parents=True, exist_ok=True)
        for name in ("master.key", "root.key"):
            if (leader.data_dir / name).exists():
                shutil.copy2(leader.data_dir / name, other.data_dir / name)
        shutil.copytree(leader.data_dir / "ca", other.data_dir / "ca")
        other.start()
        creds = leader.admin_credentials
        client = Client(other.api_endpoint, creds["access_key"], creds["secret_key"],
                        root_certificates=other.ca_pem)
        share = tmp_path / "share"
        share.mkdir()
        (share / "file.txt").write_text("policy data\n")
        config = tmp_path / "agent.toml"
        config.write_text(f"""
[agent]
name = "host-b"
controller = "{other.api_endpoint}"
state_dir = "{tmp_path / 'agent-state'}"

[[file_systems]]
name = "share"
path = "{share}"
""")
        token = client.agents.CreateEnrollmentToken(
            agent_pb2.CreateEnrollmentTokenRequest()).token
        assert enroll(config, token).returncode == 0
        agent_factory(config, "agent").wait_for_log("connected to")
        [resource] = wait_until(lambda: list(client.protectables.ListProtectables(
            protectable_pb2.ListProtectablesRequest()).protectables), timeout=30)
        vault = client.vaults.CreateVault(vault_pb2.CreateVaultRequest(
            name="files", object_type=common_pb2.OBJECT_TYPE_TURBO, size_gb=10,
            resources=[vault_pb2.ResourceSpec(id=resource.id)])).vault
        _policy(client, vault.id)

        def available() -> int:
            return sum(1 for b in client.backups.ListBackups(backup_pb2.ListBackupsRequest(
                vault_id=vault.id, page_size=500)).backups
                if b.status == backup_pb2.BACKUP_STATUS_AVAILABLE)

        # The leader makes the runs; the other controller holds the agent's
        # stream and sends them.
        wait_until(lambda: available() >= 2, timeout=60, interval=0.5,
                   message="backups from the leader's runs, sent by the other controller")
        assert "leads the policy loop" not in other.log_text()
        client.close()
