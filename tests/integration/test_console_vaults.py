"""The console's vault and policy pages below the browser, against a real
controller and a real agent: a vault made, a resource added, a policy bound
and a backup started from the pages, the schedule builder's preview, and a
read-only user's disabled controls."""

from __future__ import annotations

import datetime as dt
import itertools
import re
from pathlib import Path

import grpc
import pytest

from cbr.client import Client
from cbr.v1 import (
    agent_pb2,
    backup_pb2,
    common_pb2,
    policy_pb2,
    protectable_pb2,
    task_pb2,
    vault_pb2,
)
from console import formats
from tests.integration.test_console import PASSWORD, _browser, _user
from tests.support.console import ConsoleClient
from tests.support.processes import (
    AgentFactory,
    ControllerFactory,
    ControllerProcess,
    enroll,
    wait_until,
)

pytestmark = pytest.mark.integration

FAST = ["--heartbeat-interval", "0.5", "--agent-offline-after", "3"]
RUN_TIME = re.compile(r'<li><time datetime="([^"]+)">')
DAILY = {"name": "nightly", "operation_type": "backup", "enabled": "on", "freq": "DAILY",
         "interval": "1", "hours": "2", "minutes": "30", "max_backups": "7"}


def _agent_with_a_tree(tmp_path: Path, controller: ControllerProcess,
                       agent_factory: AgentFactory) -> protectable_pb2.Protectable:
    """An agent reporting one small file system, ``share``."""
    share = tmp_path / "share"
    (share / "docs").mkdir(parents=True)
    (share / "readme.txt").write_text("hello\n")
    (share / "docs" / "a.bin").write_bytes(bytes(range(256)) * 4096)
    config = tmp_path / "agent.toml"
    config.write_text(f"""
[agent]
name = "host-1"
controller = "{controller.api_endpoint}"
state_dir = "{tmp_path / 'agent-state'}"
restore_roots = ["{tmp_path}"]

[[file_systems]]
name = "share"
path = "{share}"
""")
    client = controller.client()
    token = client.agents.CreateEnrollmentToken(agent_pb2.CreateEnrollmentTokenRequest()).token
    done = enroll(config, token)
    assert done.returncode == 0, done.stderr
    agent_factory(config, "agent").wait_for_log("connected to")
    listed: list[protectable_pb2.Protectable] = wait_until(
        lambda: list(client.protectables.ListProtectables(
            protectable_pb2.ListProtectablesRequest()).protectables),
        message="the agent reports its file system")
    return listed[0]


def _signed_in(controller: ControllerProcess, grant: str) -> ConsoleClient:
    _user(controller.client(), "ops", grant)
    browser = _browser(controller)
    assert browser.sign_in("admin", "ops", PASSWORD).status == 303
    return browser


def _wait_succeeded(admin: Client, location: str) -> None:
    """The task a page redirected to (``/tasks/ID``) ends in success."""
    match = re.fullmatch(r"/tasks/([\w-]+)", location)
    assert match is not None, location
    final = (task_pb2.TASK_STATUS_SUCCESS, task_pb2.TASK_STATUS_FAILED,
             task_pb2.TASK_STATUS_TIMEOUT, task_pb2.TASK_STATUS_SKIPPED)

    def ended() -> task_pb2.Task | None:
        task = admin.tasks.GetTask(task_pb2.GetTaskRequest(task_id=match.group(1))).task
        return task if task.status in final else None

    task = wait_until(ended, timeout=60, message=f"the task of {location} ends")
    assert task is not None
    assert task.status == task_pb2.TASK_STATUS_SUCCESS, task.error_info


def _only_vault(admin: Client) -> vault_pb2.Vault:
    [vault] = admin.vaults.ListVaults(vault_pb2.ListVaultsRequest()).vaults
    return vault


def test_a_vault_page_adds_a_resource_binds_a_policy_and_backs_up_now(
        tmp_path: Path, controller_factory: ControllerFactory,
        agent_factory: AgentFactory) -> None:
    controller = controller_factory("controller", extra_args=FAST)
    admin = controller.client()
    share = _agent_with_a_tree(tmp_path, controller, agent_factory)
    browser = _signed_in(controller, "CBRFullAccess")

    browser.get("/vaults")
    made = browser.post("/vaults", {"name": "files", "object_type": "turbo",
                                    "protect_type": "backup", "size_gb": "10"})
    assert made.status == 303
    vault_id = _only_vault(admin).id
    page = browser.get(f"/vaults/{vault_id}")
    assert page.status == 200 and "<h1>Vault files</h1>" in page.text
    assert f'name="resource_id" value="{share.id}"' in page.text  # offered to add

    added = browser.post(f"/vaults/{vault_id}/resources", {"resource_id": share.id})
    assert added.status == 303 and added.location == f"/vaults/{vault_id}"
    assert [r.id for r in _only_vault(admin).resources] == [share.id]

    created = browser.post("/policies", DAILY)
    assert created.status == 303
    [policy] = admin.policies.ListPolicies(policy_pb2.ListPoliciesRequest()).policies
    assert created.location == f"/policies/{policy.id}"
    assert list(policy.trigger.pattern) == ["FREQ=DAILY;INTERVAL=1;BYHOUR=2;BYMINUTE=30"]
    assert policy.operation_definition.max_backups == 7
    bound = browser.post(f"/vaults/{vault_id}/policies", {"policy_id": policy.id})
    assert bound.status == 303
    assert _only_vault(admin).backup_policy_id == policy.id
    page = browser.get(f"/vaults/{vault_id}")
    assert f'<a href="/policies/{policy.id}">nightly</a>' in page.text

    started = browser.post(f"/vaults/{vault_id}/backup", {"resource_id": ""})
    assert started.status == 303
    _wait_succeeded(admin, started.location)
    [backup] = admin.backups.ListBackups(backup_pb2.ListBackupsRequest(
        vault_id=vault_id)).backups
    assert backup.resource_id == share.id

    browser.get(f"/policies/{policy.id}")
    ran = browser.post(f"/policies/{policy.id}/run", {})
    assert ran.status == 303
    _wait_succeeded(admin, ran.location)
    runs = browser.get(f"/policies/{policy.id}")
    assert "dispatched" in runs.text and "run now" in runs.text

    def counted() -> vault_pb2.Vault | None:
        vault = _only_vault(admin)
        return vault if vault.used_bytes > 0 else None

    vault = wait_until(counted, message="the vault counts its backup's bytes")
    assert vault is not None
    page = browser.get(f"/vaults/{vault_id}")
    assert f"{formats.size(vault.used_bytes)} of 10 GB" in page.text
    assert "<td>2</td>" in page.text  # the resource's backup count


def test_the_policy_preview_shows_the_next_five_runs_and_names_the_rule_that_refuses(
        controller: ControllerProcess) -> None:
    browser = _signed_in(controller, "CBRFullAccess")
    admin = controller.client()
    query = "&".join(f"{k}={v}" for k, v in DAILY.items())

    shown = browser.get(f"/policies/preview?{query}")
    assert shown.status == 200
    runs = [dt.datetime.fromisoformat(t) for t in RUN_TIME.findall(shown.text)]
    assert len(runs) == 5
    assert all((r.hour, r.minute) == (2, 30) for r in runs)
    assert [b - a for a, b in itertools.pairwise(runs)] == [dt.timedelta(days=1)] * 4
    assert dt.datetime.now(dt.UTC) < runs[0] <= dt.datetime.now(dt.UTC) + dt.timedelta(days=1)

    too_often = browser.get(f"/policies/preview?{query}".replace("minutes=30", "minutes=0,30"))
    with pytest.raises(grpc.RpcError) as refused:
        admin.policies.CreatePolicy(policy_pb2.CreatePolicyRequest(
            name="nightly", operation_type=policy_pb2.POLICY_OPERATION_TYPE_BACKUP,
            trigger=policy_pb2.Trigger(pattern=["FREQ=DAILY;INTERVAL=1;BYHOUR=2;BYMINUTE=0,30"])))
    message = str(refused.value.details())
    assert "at least one hour must be between runs" in message
    assert message.replace("'", "&#39;") in too_often.text
    assert not RUN_TIME.search(too_often.text)

    kept_too_long = browser.get(f"/policies/preview?{query}".replace(
        "max_backups=7", "max_backups=100000"))
    assert "max_backups" in kept_too_long.text and "99999" in kept_too_long.text
    bad_hour = browser.get(f"/policies/preview?{query}".replace("hours=2", "hours=25"))
    assert "BYHOUR 25" in bad_hour.text and "must be 0 to 23" in bad_hour.text

    browser.get("/policies/new")
    fields = {**DAILY, "minutes": "0,30"}
    posted = browser.post("/policies", fields, htmx=True)
    assert posted.status == 200 and 'role="alert"' in posted.text
    assert message.replace("'", "&#39;") in posted.text
    assert not admin.policies.ListPolicies(policy_pb2.ListPoliciesRequest()).policies


def test_a_read_only_user_sees_what_each_control_needs_and_cannot_back_up(
        controller: ControllerProcess) -> None:
    admin = controller.client()
    vault = admin.vaults.CreateVault(vault_pb2.CreateVaultRequest(
        name="v1", object_type=common_pb2.OBJECT_TYPE_DISK,
        protect_type=vault_pb2.PROTECT_TYPE_BACKUP, size_gb=10)).vault
    policy = admin.policies.CreatePolicy(policy_pb2.CreatePolicyRequest(
        name="nightly", operation_type=policy_pb2.POLICY_OPERATION_TYPE_BACKUP, enabled=True,
        trigger=policy_pb2.Trigger(pattern=["FREQ=DAILY;BYHOUR=2;BYMINUTE=0"]))).policy
    browser = _signed_in(controller, "CBRReadOnlyAccess")

    page = browser.get(f"/vaults/{vault.id}")
    assert page.status == 200
    for action in ("cbr:checkpoints:create", "cbr:vaults:associatePolicy",
                   "cbr:vaults:update"):
        assert f"needs {action}" in page.text
    policy_page = browser.get(f"/policies/{policy.id}")
    assert "needs cbr:policies:run" in policy_page.text
    assert "needs cbr:policies:update" in browser.get(f"/policies/{policy.id}/edit").text
    assert "needs cbr:policies:create" in browser.get("/policies").text

    refused = browser.post(f"/vaults/{vault.id}/backup", {"resource_id": ""})
    assert refused.status == 403 and "cbr:checkpoints:create" in refused.text


def test_a_policy_is_edited_and_a_vault_reconfigured_unbound_and_deleted_from_the_pages(
        controller: ControllerProcess) -> None:
    browser = _signed_in(controller, "CBRFullAccess")
    admin = controller.client()
    browser.get("/policies/new")
    assert browser.post("/policies", DAILY).status == 303
    [policy] = admin.policies.ListPolicies(policy_pb2.ListPoliciesRequest()).policies
    form = browser.get(f"/policies/{policy.id}/edit")
    assert 'name="hours" value="2"' in form.text and 'name="minutes" value="30"' in form.text
    edited = browser.post(f"/policies/{policy.id}", {
        **DAILY, "operation_type": "backup", "freq": "WEEKLY", "hours": "4", "minutes": "0",
        "more_rules": "FREQ=DAILY;BYHOUR=22;BYMINUTE=15"} | {"byday": "SA"})
    assert edited.status == 303 and edited.location == f"/policies/{policy.id}"
    policy = admin.policies.GetPolicy(policy_pb2.GetPolicyRequest(policy_id=policy.id)).policy
    assert list(policy.trigger.pattern) == ["FREQ=WEEKLY;BYDAY=SA;BYHOUR=4;BYMINUTE=0",
                                            "FREQ=DAILY;BYHOUR=22;BYMINUTE=15"]
    no_vaults = browser.post(f"/policies/{policy.id}/run", {}, htmx=True)
    assert no_vaults.status == 200 and "has no vaults" in no_vaults.text

    browser.get("/vaults")
    browser.post("/vaults", {"name": "v1", "object_type": "disk", "protect_type": "backup",
                             "size_gb": "10"})
    vault_id = _only_vault(admin).id
    browser.get(f"/vaults/{vault_id}")
    assert browser.post(f"/vaults/{vault_id}/policies", {"policy_id": policy.id}).status == 303
    changed = browser.post(f"/vaults/{vault_id}/settings",
                           {"size_gb": "20", "threshold": "90", "auto_expand": "on"})
    assert changed.status == 303
    vault = _only_vault(admin)
    assert (vault.size_gb, vault.threshold, vault.auto_expand) == (20, 90, True)
    refused = browser.post(f"/vaults/{vault_id}/settings", {"size_gb": "20", "threshold": "0x"},
                           htmx=True)
    assert refused.status == 200 and "threshold" in refused.text and 'role="alert"' in refused.text

    unbound = browser.post(f"/vaults/{vault_id}/policies/remove", {"policy_id": policy.id})
    assert unbound.status == 303 and not _only_vault(admin).backup_policy_id

    confirm = browser.get(f"/vaults/{vault_id}/delete")
    assert "Type <strong>v1</strong> to confirm" in confirm.text
    wrong = browser.post(f"/vaults/{vault_id}/delete", {"name": "v1", "confirm_name": "v2"})
    assert wrong.status == 400 and _only_vault(admin).id == vault_id
    deleted = browser.post(f"/vaults/{vault_id}/delete", {"name": "v1", "confirm_name": "v1"})
    assert deleted.status == 303 and deleted.location.startswith("/tasks/")
