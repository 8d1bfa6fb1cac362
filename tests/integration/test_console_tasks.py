"""The console's tasks, overview and agents pages against real controller and
agent processes: a large backup's live progress and its cancel through the
console, the overview of what is protected and what failed, and enrollment
tokens shown once."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cbr.v1 import agent_pb2, backup_pb2, task_pb2, vault_pb2
from tests.integration.test_console import PASSWORD, _browser, _user
from tests.integration.test_data_path import (
    AVAILABLE,
    _backup,
    _restore,
    _start,
    _task,
    _wait_task,
)
from tests.support.console import ConsoleClient
from tests.support.processes import (
    AgentFactory,
    ControllerFactory,
    ControllerProcess,
    enroll,
    wait_until,
)

pytestmark = pytest.mark.integration

BIG_MIB = 1536
HTMX = {"HX-Request": "true"}


def _scanned(task: task_pb2.Task) -> int:
    return int(task.extra_info.get("bytes_scanned", "0") or 0)


def test_a_running_backup_shows_live_progress_and_is_cancelled_through_the_console(
        tmp_path: Path, controller_factory: ControllerFactory,
        agent_factory: AgentFactory) -> None:
    host = _start(tmp_path, controller_factory, agent_factory, big_mib=BIG_MIB)
    _user(host.client, "ops", "CBRFullAccess")
    _user(host.client, "reader", "CBRReadOnlyAccess")
    browser = _browser(host.controller)
    assert browser.sign_in("admin", "ops", PASSWORD).status == 303
    reader = _browser(host.controller)
    assert reader.sign_in("admin", "reader", PASSWORD).status == 303

    cp = host.client.backups.CreateCheckpoint(backup_pb2.CreateCheckpointRequest(
        vault_id=host.vaults["disk"], resource_ids=[host.protectables["big"].id])).checkpoint
    [task_id] = cp.task_ids
    wait_until(lambda: _scanned(_task(host.client, task_id)) > 0, timeout=120, interval=0.02,
               message="the backup has reported bytes scanned")

    page = browser.get(f"/tasks/{task_id}")
    assert page.status == 200
    assert f'hx-get="/tasks/{task_id}/progress" hx-trigger="every 1s"' in page.text
    assert 'aria-live="polite"' in page.text
    assert f'action="/tasks/{task_id}/cancel"' in page.text and "needs cbr:" not in page.text

    live = browser.request("GET", f"/tasks/{task_id}/progress", headers=HTMX)
    assert live.status == 200, live.text  # 286 would stop the polling
    assert "<progress max=\"100\" value=" in live.text
    assert re.search(r"\d+%", live.text)
    assert re.search(r"[\d.]+ (MiB|GiB) of 1\.5 GiB", live.text), live.text
    assert "Time left" in live.text and "running" in live.text

    # A read-only user sees the control disabled, naming the action, and is refused.
    shown = reader.get(f"/tasks/{task_id}")
    assert "needs cbr:tasks:cancel" in shown.text and "disabled" in shown.text
    refused = reader.post(f"/tasks/{task_id}/cancel", {})
    assert refused.status == 403 and "cbr:tasks:cancel" in refused.text
    assert _task(host.client, task_id).status == task_pb2.TASK_STATUS_RUNNING

    done = browser.post(f"/tasks/{task_id}/cancel", {})
    assert done.status == 303 and done.location == f"/tasks/{task_id}"
    final = wait_until(lambda: (t := _task(host.client, task_id)).status
                       == task_pb2.TASK_STATUS_CANCELLED and t, timeout=60,
                       message="the task ends cancelled")
    assert final.extra_info["cancelled"] == "by_agent"

    last = browser.request("GET", f"/tasks/{task_id}/progress", headers=HTMX)
    assert last.status == 286  # htmx stops polling a final task
    assert "cancelled" in last.text and "hx-trigger" not in last.text
    assert 'id="task-cancel" hx-swap-oob="true"' in last.text
    assert "100%" not in last.text  # how far it got, not the API's final 100
    after = browser.get(f"/tasks/{task_id}")
    assert "hx-trigger" not in after.text and f"/tasks/{task_id}/cancel" not in after.text

    listed = browser.get("/tasks?operation_type=backup&status=cancelled")
    assert listed.status == 200 and task_id in listed.text


def test_the_overview_shows_last_backups_unprotected_resources_and_failures(
        tmp_path: Path, controller_factory: ControllerFactory,
        agent_factory: AgentFactory) -> None:
    host = _start(tmp_path, controller_factory, agent_factory)
    share = host.protectables["share"]
    backup = _backup(host, "turbo", "share")
    assert backup.status == AVAILABLE
    failed = _restore(host, backup.id, target_path=str(tmp_path / "none"),
                      source_path="no/such")
    assert failed.status == task_pb2.TASK_STATUS_FAILED
    # One resource left out of its vault: unprotected.
    vol = host.protectables["vol-1"]
    removed = host.client.vaults.RemoveVaultResources(vault_pb2.RemoveVaultResourcesRequest(
        vault_id=host.vaults["disk"], resource_ids=[vol.id]))
    for task_id in removed.task_ids:
        assert _wait_task(host.client, task_id).status == task_pb2.TASK_STATUS_SUCCESS
    _user(host.client, "ops", "CBRReadOnlyAccess")
    browser = _browser(host.controller)
    browser.sign_in("admin", "ops", PASSWORD)

    page = browser.get("/")
    assert page.status == 200
    protected = _section(page.text, "protected-h")
    row = _row(protected, share.id)
    assert f'href="/backups/{backup.id}"' in row and f">{backup.name}</a>" in row
    assert row.count(">available<") == 2  # the resource's protection, and its last backup
    assert vol.id not in protected
    assert vol.id in _section(page.text, "unprotected-h")
    failures = _section(page.text, "failures-h")
    assert "Failures of the last 24 hours (1)" in failures
    assert "restore.failed" in failures and f'href="/tasks/{failed.id}"' in failures
    assert "No replication is pending." in _section(page.text, "lag-h")


def _section(text: str, heading_id: str) -> str:
    start = text.index(f'aria-labelledby="{heading_id}"')
    end = text.find("</section>", start)
    return text[start:end]


def _row(text: str, needle: str) -> str:
    at = text.index(needle)
    return text[text.rindex("<tr>", 0, at):text.index("</tr>", at)]


def test_an_enrollment_token_is_shown_once_and_enrolls_an_agent(
        tmp_path: Path, controller: ControllerProcess) -> None:
    admin = controller.client()
    _user(admin, "ops", "CBRFullAccess")
    _user(admin, "reader", "CBRReadOnlyAccess")
    browser = _browser(controller)
    browser.sign_in("admin", "ops", PASSWORD)
    assert "No agents enrolled yet" in browser.get("/agents").text

    made = browser.post("/agents/tokens", {"ttl_hours": "2", "description": "rack 4",
                                           "role": "host"})
    assert made.status == 200
    [token] = set(re.findall(r"cbr1\.[A-Za-z0-9_.-]+", made.text))
    assert f"cbr-agent --config /etc/cbr/agent.toml enroll --token {token}" in made.text
    assert token not in (made.headers.get("Location") or "")
    for path in ("/agents", "/", "/tasks"):
        assert token not in browser.get(path).text

    config = tmp_path / "agent.toml"
    config.write_text(f'[agent]\nname = "host-9"\ncontroller = "{controller.api_endpoint}"\n'
                      f'state_dir = "{tmp_path / "state"}"\n')
    done = enroll(config, token)
    assert done.returncode == 0, done.stderr
    [agent] = admin.agents.ListAgents(agent_pb2.ListAgentsRequest()).agents
    listed = browser.get("/agents")
    row = _row(listed.text, agent.id)
    assert "host-9" in row and "host" in row and "offline" in row

    reader = _browser(controller)
    reader.sign_in("admin", "reader", PASSWORD)
    seen = reader.get("/agents").text
    assert "needs cbr:agents:enroll" in seen and "needs cbr:agents:delete" in seen
    assert reader.post(f"/agents/{agent.id}/delete", {}).status == 403

    gone = browser.post(f"/agents/{agent.id}/delete", {})
    assert gone.status == 303 and gone.location.startswith("/agents")
    assert not admin.agents.ListAgents(agent_pb2.ListAgentsRequest()).agents
    assert agent.id not in _section_or_all(browser.get("/agents").text)
    again = enroll(config, token)
    assert again.returncode != 0  # one enrollment per token


def _section_or_all(text: str) -> str:
    return text.split("<tbody>", 1)[-1].split("</tbody>", 1)[0]


def test_the_tasks_and_agents_pages_need_a_session(controller: ControllerProcess) -> None:
    browser: ConsoleClient = _browser(controller)
    for path in ("/tasks", "/agents", "/tasks/x/progress"):
        assert browser.get(path).status == 303


def test_polling_an_unknown_task_stops_with_the_apis_refusal(
        controller: ControllerProcess) -> None:
    _user(controller.client(), "ops", "CBRFullAccess")
    browser = _browser(controller)
    browser.sign_in("admin", "ops", PASSWORD)
    page = browser.request("GET", "/tasks/no-such-task/progress", headers=HTMX)
    assert page.status == 286 and "NOT_FOUND" in page.text
    assert browser.get("/tasks/no-such-task").status == 404
