"""Issue 23's flows in headless Chromium, against two real clouds.

On the source cloud's console: sign in, create a vault, add a resource,
back up now and watch the progress to the end, restore one file (whose name
holds markup, quotes and non-ASCII) to a new place, replicate the backup
with the "Create Replica" dialog, cancel a running task, sign out. On the
target cloud's console: the replica is there. A user without
cbr:backups:restore finds Restore disabled. Screenshots for the README are
taken on the way when $CBR_SCREENSHOTS is set.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from selenium.common.exceptions import (
    NoAlertPresentException,
    StaleElementReferenceException,
)
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select, WebDriverWait

from cbr.v1 import backup_pb2, replication_pb2, task_pb2, vault_pb2
from tests.browser.conftest import BrowserFactory
from tests.browser.test_console_browser import make_user, sign_in, unlabelled_controls
from tests.integration.test_data_path import _wait_task
from tests.support.browser import screenshot
from tests.support.clouds import Clouds, _clouds
from tests.support.processes import AgentFactory, ControllerFactory, wait_until

pytestmark = pytest.mark.integration

WAIT = 120
ODD_NAME = "<script>alert('x')<\\script> \"q\" ünï.txt"
ODD_BYTES = b"the one file restored\n" * 100
BIG_MIB = 1536


@pytest.fixture
def clouds(tmp_path: Path, controller_factory: ControllerFactory,
           agent_factory: AgentFactory) -> Clouds:
    made = _clouds(tmp_path, controller_factory, agent_factory, big_mib=BIG_MIB)
    (made.source.files["share"] / ODD_NAME).write_bytes(ODD_BYTES)
    # The tree leaves its vault, so the console can make a new one for it.
    client = made.source.client
    share = made.source.protectables["share"]
    client.vaults.RemoveVaultResources(vault_pb2.RemoveVaultResourcesRequest(
        vault_id=made.source.vaults["turbo"], resource_ids=[share.id]))
    wait_until(lambda: not client.vaults.GetVault(vault_pb2.GetVaultRequest(
        vault_id=made.source.vaults["turbo"])).vault.resources, timeout=60,
        message="the tree left its vault")
    return made


def _wait_text(browser: Any, css: str, pattern: str, timeout: float = WAIT) -> str:
    """The element's text once it matches; htmx may swap it while it is read."""
    def matched(b: Any) -> str | None:
        text = str(b.find_element(By.CSS_SELECTOR, css).text)
        return text if re.search(pattern, text) else None

    found: str = WebDriverWait(browser, timeout, ignored_exceptions=(
        StaleElementReferenceException,)).until(matched)
    return found


def _click(browser: Any, text: str) -> None:
    browser.find_element(By.XPATH, f"//button[normalize-space()='{text}']").click()


def _no_alert(browser: Any) -> None:
    try:
        _ = browser.switch_to.alert
    except NoAlertPresentException:
        return
    raise AssertionError("a script from a file name ran")


def test_the_console_flows_on_both_clouds(clouds: Clouds, tmp_path: Path,
                                          open_browser: BrowserFactory) -> None:
    src, target = clouds.source, clouds.target
    make_user(src.controller, "ops", "CBRFullAccess")
    make_user(target.controller, "ops", "CBRFullAccess")
    browser: Any = open_browser(src.controller, target.controller)
    url = src.controller.console_url
    sign_in(browser, src.controller, "ops")

    # Create a vault for file systems and add the tree to it.
    browser.get(url + "/vaults")
    browser.find_element(By.ID, "v-name").send_keys("files")
    Select(browser.find_element(By.ID, "v-type")).select_by_value("turbo")
    _click(browser, "Create vault")
    WebDriverWait(browser, WAIT).until(ec.presence_of_element_located((By.LINK_TEXT, "files")))
    browser.find_element(By.LINK_TEXT, "files").click()
    WebDriverWait(browser, WAIT).until(ec.presence_of_element_located((By.ID, "add-h")))
    browser.find_element(By.XPATH, "//label[normalize-space()='share']").click()
    _click(browser, "Add selected")
    WebDriverWait(browser, WAIT).until(
        lambda b: b.find_elements(By.XPATH, "//button[normalize-space()='Remove share']"))
    [vault] = [v for v in src.client.vaults.ListVaults(vault_pb2.ListVaultsRequest()).vaults
               if v.name == "files"]
    assert [r.name for r in vault.resources] == ["share"]

    # Back up now, and watch the task's progress to its end.
    _click(browser, "Back up now")
    WebDriverWait(browser, WAIT).until(ec.url_matches(r"/tasks/[0-9a-f-]{36}$"))
    status = _wait_text(browser, "#task-progress", r"Status: (success|failed)")
    assert "Status: success" in status and "100%" in status
    backup = wait_until(lambda: list(src.client.backups.ListBackups(
        backup_pb2.ListBackupsRequest(vault_id=vault.id)).backups), timeout=30)[0]

    # Its files, a name with markup shown as text; restore only that file.
    browser.get(f"{url}/backups/{backup.id}")
    cell = browser.find_element(By.XPATH, "//td[starts-with(normalize-space(), '<script>')]")
    assert cell.text.startswith(ODD_NAME[:20])
    _no_alert(browser)
    screenshot(browser, "backup")
    row = cell.find_element(By.XPATH, "./..")
    row.find_element(By.LINK_TEXT, "Restore only this…").click()
    assert browser.find_element(By.ID, "r-source-path").get_attribute("value") == ODD_NAME
    restored = src.files["share"].parent.parent / "restored-one"
    browser.find_element(By.ID, "r-new").click()
    browser.find_element(By.ID, "r-target-path").send_keys(str(restored))
    screenshot(browser, "restore")
    _click(browser, "Restore")
    WebDriverWait(browser, WAIT).until(ec.url_matches(r"/tasks/[0-9a-f-]{36}$"))
    assert "Status: success" in _wait_text(browser, "#task-progress",
                                           r"Status: (success|failed)")
    files = [p for p in restored.rglob("*") if p.is_file()]
    assert [p.name for p in files] == [ODD_NAME]
    assert files[0].read_bytes() == ODD_BYTES

    # Replicate it with the Create Replica dialog's four choices.
    browser.get(f"{url}/backups/{backup.id}")
    _click(browser, "Create Replica")
    dialog = browser.find_element(By.ID, "replica-dialog")
    assert dialog.is_displayed()
    Select(browser.find_element(By.ID, "c-cloud")).select_by_value("cloud-b")
    Select(browser.find_element(By.ID, "c-credential")).select_by_value(clouds.credential_id)
    WebDriverWait(browser, WAIT).until(lambda b: b.find_elements(By.CSS_SELECTOR,
                                                                 "select#c-vault"))
    Select(browser.find_element(By.ID, "c-region")).select_by_value("region-b")
    Select(browser.find_element(By.ID, "c-vault")).select_by_value(target.vaults["turbo"])
    screenshot(browser, "replica-dialog")
    _click(browser, "Create replica")
    WebDriverWait(browser, WAIT).until(ec.url_contains("/replication/"))
    record_id = browser.current_url.rsplit("/replication/", 1)[1].split("?")[0]
    record = wait_until(lambda: (r := src.client.replication.GetReplicationRecord(
        replication_pb2.GetReplicationRecordRequest(replication_record_id=record_id))
        .replication_record).status == replication_pb2.REPLICATION_STATUS_SUCCESS and r,
        timeout=WAIT, message="the replication succeeds")

    browser.get(url + "/")
    screenshot(browser, "overview")

    # The replica in the target cloud's console.
    sign_in(browser, target.controller, "ops")
    browser.get(target.controller.console_url + "/backups?image_type=replication")
    WebDriverWait(browser, WAIT).until(ec.presence_of_element_located(
        (By.XPATH, f"//a[contains(@href, '/backups/{record.destination_backup_id}')]")))
    screenshot(browser, "target-replicas")

    # Cancel a running backup of the big disk from its task page.
    started = src.client.backups.CreateCheckpoint(backup_pb2.CreateCheckpointRequest(
        vault_id=src.vaults["disk"], resource_ids=[src.protectables["big"].id])).checkpoint
    [task_id] = started.task_ids
    browser.get(f"{url}/tasks/{task_id}")
    _wait_text(browser, "#task-progress", r"[1-9][0-9.]* (KiB|MiB|GiB) of ")
    screenshot(browser, "task-progress")
    _click(browser, "Cancel task")
    assert "Status: cancelled" in _wait_text(browser, "#task-progress",
                                             r"Status: (cancelled|success|failed)")
    assert src.client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=task_id)).task.status \
        == task_pb2.TASK_STATUS_CANCELLED

    # Every page's controls are labelled, the dialog's and forms' included.
    for page in ("/", "/vaults", f"/vaults/{vault.id}", "/backups", f"/backups/{backup.id}",
                 "/policies", "/policies/new", "/replication", "/tasks", f"/tasks/{task_id}",
                 "/agents", "/keys", "/iam", "/audit"):
        browser.get(url + page)
        assert unlabelled_controls(browser) == [], page

    # Sign out of both.
    for console in (url, target.controller.console_url):
        browser.get(console + "/")
        browser.find_element(By.CSS_SELECTOR, "form.signout button").click()
        WebDriverWait(browser, WAIT).until(ec.url_contains("/sign-in"))
    browser.get(url + "/backups")
    assert "/sign-in" in browser.current_url


def test_a_user_without_restore_cannot_restore_from_the_console(
        clouds: Clouds, open_browser: BrowserFactory) -> None:
    src = clouds.source
    make_user(src.controller, "viewer", "CBRReadOnlyAccess")
    cp = src.client.backups.CreateCheckpoint(backup_pb2.CreateCheckpointRequest(
        vault_id=src.vaults["disk"], resource_ids=[src.protectables["vol-1"].id])).checkpoint
    for task_id in cp.task_ids:
        assert _wait_task(src.client, task_id).status == task_pb2.TASK_STATUS_SUCCESS
    [backup_id] = cp.backup_ids
    browser: Any = open_browser(src.controller)
    sign_in(browser, src.controller, "viewer")
    browser.get(f"{src.controller.console_url}/backups/{backup_id}")
    button = browser.find_element(By.XPATH, "//form[contains(@action, '/restore')]//button")
    assert not button.is_enabled()
    assert "needs cbr:backups:restore" in browser.page_source
    # Forced past the disabled button (as a crafted post would be): refused.
    browser.execute_script("arguments[0].disabled = false", button)
    button.click()
    WebDriverWait(browser, WAIT).until(lambda b: "cbr:backups:restore" in b.page_source
                                       and "/tasks/" not in b.current_url)
    assert "PERMISSION_DENIED" in browser.page_source
    tasks = src.client.tasks.ListTasks(task_pb2.ListTasksRequest(
        operation_type=task_pb2.OPERATION_TYPE_RESTORE)).tasks
    assert list(tasks) == []
