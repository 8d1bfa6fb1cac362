"""The console's backups and replication pages below the browser, against
real controller and agent processes: a file-system backup's files shown as
text whatever their names hold, one file restored through the console byte
for byte, a user without ``cbr:backups:restore`` refused, the list's filters
and paging, and a replica made through the "Create Replica" dialog showing
on the target cloud's console."""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import quote

import grpc
import pytest

from cbr.client import Client
from cbr.v1 import backup_pb2, credential_pb2, iam_pb2, replication_pb2, task_pb2
from tests.integration.test_console import PASSWORD, _browser, _user
from tests.integration.test_data_path import Host, _backup, _start, _wait_task
from tests.support.clouds import SUCCESS, Clouds
from tests.support.console import ConsoleClient, Page
from tests.support.processes import AgentFactory, ControllerFactory, wait_until

pytestmark = pytest.mark.integration

# No file name holds "/", so the path of the brief's name is a directory
# holding the rest of it.
EVIL_DIR = "<script>alert(1)<"
EVIL_FILE = 'script>"ü.txt'
EVIL_PATH = f"{EVIL_DIR}/{EVIL_FILE}"
ROOT_NAME = "<img src=x onerror=alert(1)>'\"ünï.txt"
BACKUP_LINK = re.compile(r'<a href="/backups/([0-9a-f-]{36})">')


def _host_with_markup_names(tmp_path: Path, controller_factory: ControllerFactory,
                            agent_factory: AgentFactory) -> Host:
    host = _start(tmp_path, controller_factory, agent_factory)
    share = host.files["share"]
    (share / EVIL_DIR).mkdir()
    (share / EVIL_PATH).write_bytes(os.urandom(300_000))
    (share / ROOT_NAME).write_text("root\n")
    return host


def _signed_in(host: Host, user: str, *grants: str) -> ConsoleClient:
    _user(host.client, user, *grants)
    browser = _browser(host.controller)
    assert browser.sign_in("admin", user, PASSWORD).status == 303
    return browser


def _listed(page: Page) -> list[str]:
    """The backup ids a list page links, in order."""
    assert page.status == 200, page.text
    return BACKUP_LINK.findall(page.text)


def _next_link(page: Page) -> str:
    match = re.search(r'<a rel="next" href="([^"]+)"', page.text)
    return match.group(1).replace("&amp;", "&") if match else ""


def test_file_names_show_as_text_and_one_file_restores_identical(
        tmp_path: Path, controller_factory: ControllerFactory,
        agent_factory: AgentFactory) -> None:
    host = _host_with_markup_names(tmp_path, controller_factory, agent_factory)
    tree = _backup(host, "turbo")
    browser = _signed_in(host, "ops", "CBRFullAccess")

    root = browser.get(f"/backups/{tree.id}")
    assert root.status == 200, root.text
    assert "&lt;img src=x onerror=alert(1)&gt;&#39;&#34;ünï.txt" in root.text
    assert "&lt;script&gt;alert(1)&lt;/</a>" in root.text  # the directory, as a link
    assert "<img src=x" not in root.text and "<script>alert" not in root.text

    inside = browser.get(f"/backups/{tree.id}?path={quote(EVIL_DIR, safe='')}")
    assert inside.status == 200, inside.text
    assert "script&gt;&#34;ü.txt" in inside.text
    assert '<span aria-current="location">&lt;script&gt;alert(1)&lt;</span>' in inside.text
    assert "<script>alert" not in inside.text
    # Its "Restore only this" link fills the restore form with the whole path.
    restore_link = browser.get(f"/backups/{tree.id}?path={quote(EVIL_DIR, safe='')}"
                               f"&restore={quote(EVIL_PATH, safe='')}")
    assert 'value="&lt;script&gt;alert(1)&lt;/script&gt;&#34;ü.txt"' in restore_link.text

    out = tmp_path / "restored-one"
    started = browser.post(f"/backups/{tree.id}/restore", {
        "place": "new", "target_path": str(out), "source_path": EVIL_PATH})
    assert started.status == 303, started.text
    task_id = started.location.removeprefix("/tasks/")
    assert started.location == f"/tasks/{task_id}" and task_id
    task = _wait_task(host.client, task_id)
    assert task.status == task_pb2.TASK_STATUS_SUCCESS, task.error_info
    assert task.operation_type == task_pb2.OPERATION_TYPE_RESTORE
    assert os.listdir(out) == [EVIL_FILE]
    assert (out / EVIL_FILE).read_bytes() == (host.files["share"] / EVIL_PATH).read_bytes()


def test_a_new_place_without_a_path_is_refused_before_the_api(
        tmp_path: Path, controller_factory: ControllerFactory,
        agent_factory: AgentFactory) -> None:
    host = _start(tmp_path, controller_factory, agent_factory)
    tree = _backup(host, "turbo")
    browser = _signed_in(host, "ops", "CBRFullAccess")
    browser.get(f"/backups/{tree.id}")
    refused = browser.post(f"/backups/{tree.id}/restore", {"place": "new"})
    assert refused.status == 400 and "needs the target path" in refused.text
    assert not host.client.tasks.ListTasks(task_pb2.ListTasksRequest(
        operation_type=task_pb2.OPERATION_TYPE_RESTORE)).tasks


def test_a_user_without_restore_sees_it_disabled_and_is_refused(
        tmp_path: Path, controller_factory: ControllerFactory,
        agent_factory: AgentFactory) -> None:
    host = _start(tmp_path, controller_factory, agent_factory)
    tree = _backup(host, "turbo")
    browser = _signed_in(host, "reader", "CBRReadOnlyAccess")
    page = browser.get(f"/backups/{tree.id}")
    assert page.status == 200, page.text
    assert re.search(r'<button type="submit" class="" disabled aria-disabled="true" '
                     r'title="Needs cbr:backups:restore">Restore</button>', page.text)
    assert "needs cbr:backups:restore" in page.text
    assert "needs cbr:backups:replicate" in page.text
    assert "readme.txt" in page.text  # reading the files is allowed
    refused = browser.post(f"/backups/{tree.id}/restore", {
        "place": "new", "target_path": str(tmp_path / "nope")})
    assert refused.status == 403 and "cbr:backups:restore" in refused.text
    assert not host.client.tasks.ListTasks(task_pb2.ListTasksRequest(
        operation_type=task_pb2.OPERATION_TYPE_RESTORE)).tasks
    assert not (tmp_path / "nope").exists()


def test_the_list_filters_and_pages(
        tmp_path: Path, controller_factory: ControllerFactory,
        agent_factory: AgentFactory) -> None:
    host = _start(tmp_path, controller_factory, agent_factory)
    trees = [_backup(host, "turbo", name=f"tree-{i}").id for i in range(3)]
    disk = _backup(host, "disk", name="vol-backup").id
    browser = _signed_in(host, "reader", "CBRReadOnlyAccess")

    everything = browser.get("/backups")
    assert sorted(_listed(everything)) == sorted([*trees, disk])
    assert "4 backups." in everything.text

    first = browser.get("/backups?resource_type=turbo&page_size=2")
    assert len(_listed(first)) == 2 and set(_listed(first)) <= set(trees)
    assert "3 backups match." in first.text
    following = _next_link(first)
    assert "resource_type=turbo" in following and "page_token=" in following
    second = browser.get(following)
    assert len(_listed(second)) == 1
    assert sorted(_listed(first) + _listed(second)) == sorted(trees)
    assert not _next_link(second) and "First page" in second.text

    assert _listed(browser.get(f"/backups?vault_id={host.vaults['disk']}")) == [disk]
    assert _listed(browser.get("/backups?name=tree-1")) == [trees[1]]
    assert _listed(browser.get("/backups?status=error")) == []
    assert _listed(browser.get("/backups?status=available&resource_type=disk")) == [disk]
    assert _listed(browser.get("/backups?image_type=replication")) == []
    server = _backup(host, "server")
    with_disks = browser.get(f"/backups?vault_id={host.vaults['server']}&show_children=on")
    assert set(_listed(with_disks)) == {server.id, *(c.id for c in server.children)}
    detail = browser.get(f"/backups/{server.id}")
    assert "<h2 id=\"disks-h\">Disks</h2>" in detail.text
    assert all(c.id in detail.text for c in server.children)


def test_a_replica_made_in_the_dialog_shows_on_the_target_console(
        clouds: Clouds, tmp_path: Path) -> None:
    src, target = clouds.source, clouds.target
    tree = _backup(src, "turbo", "share")
    browser = _signed_in(src, "ops", "CBRFullAccess")
    page = browser.get(f"/backups/{tree.id}")
    assert 'data-opens="replica-dialog"' in page.text
    assert '<option value="cloud-b">cloud-b</option>' in page.text
    assert f'<option value="{clouds.credential_id}">to-b' in page.text
    fields = {"target_cloud": "cloud-b", "credential_id": clouds.credential_id,
              "destination_region": "region-b",
              "destination_vault_id": target.vaults["turbo"]}
    # The dialog asks the target, with the credential, for its regions and
    # the account's replication vaults of this backup's kind.
    choices = browser.get(f"/backups/{tree.id}/destinations?credential_id="
                          f"{clouds.credential_id}")
    assert choices.status == 200, choices.text
    assert '<option value="region-b">region-b</option>' in choices.text
    assert '<option value="region-c" disabled>region-c (does not accept replicas)' \
        in choices.text
    assert f'<option value="{target.vaults["turbo"]}">r-turbo' in choices.text
    assert target.vaults["server"] not in choices.text  # another kind's vault
    # The API call behind it: the credential's owner only.
    asked = src.client.credentials.ListReplicationDestinations(
        credential_pb2.ListReplicationDestinationsRequest(credential_id=clouds.credential_id))
    assert asked.target_cloud == "cloud-b" and asked.target_account_id == target.account_id
    assert {v.id for v in asked.vaults} == set(target.vaults.values())
    made = src.client.iam.CreateAccount(iam_pb2.CreateAccountRequest(
        name="other", admin_user_name="other-admin"))
    other = Client(src.controller.api_endpoint, made.access_key.access_key_id,
                   made.access_key.secret_access_key, root_certificates=src.controller.ca_pem)
    try:
        with pytest.raises(grpc.RpcError) as refused:
            other.credentials.ListReplicationDestinations(
                credential_pb2.ListReplicationDestinationsRequest(
                    credential_id=clouds.credential_id))
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        other.close()
    unknown = browser.get(f"/backups/{tree.id}/destinations?credential_id=nope")
    assert unknown.status == 200 and 'role="alert"' in unknown.text
    assert '<input id="c-vault" name="destination_vault_id"' in unknown.text

    wrong = browser.post(f"/backups/{tree.id}/replicate", {**fields, "target_cloud": "cloud-z"})
    assert wrong.status == 400 and "is for cloud cloud-b, not cloud-z" in wrong.text

    started = browser.post(f"/backups/{tree.id}/replicate", fields)
    assert started.status == 303, started.text
    match = re.fullmatch(r"/replication/([0-9a-f-]{36})\?task=([0-9a-f-]{36})", started.location)
    assert match, started.location
    record_id, task_id = match.groups()
    task = _wait_task(src.client, task_id, timeout=120)
    assert task.status == task_pb2.TASK_STATUS_SUCCESS, task.error_info
    record = wait_until(lambda: (r := src.client.replication.GetReplicationRecord(
        replication_pb2.GetReplicationRecordRequest(replication_record_id=record_id))
        .replication_record).status == SUCCESS and r, timeout=30, message="record succeeds")
    shown = browser.get(started.location)
    assert shown.status == 200 and "source: this cloud sent the backup" in shown.text
    assert f'href="/tasks/{task_id}"' in shown.text
    history = browser.get(f"/backups/{tree.id}")
    assert f'href="/replication/{record_id}"' in history.text

    on_target = _signed_in_target(clouds)
    replicas = on_target.get("/backups?image_type=replication")
    assert _listed(replicas) == [record.destination_backup_id]
    assert '<span class="badge">replica</span>' in replicas.text
    replica = on_target.get(f"/backups/{record.destination_backup_id}")
    assert "replica made by replication" in replica.text
    records = on_target.get("/replication")
    assert f'href="/backups/{record.destination_backup_id}"' in records.text
    assert "<td>target</td>" in records.text
    assert target.client.backups.GetBackup(backup_pb2.GetBackupRequest(
        backup_id=record.destination_backup_id)).backup.image_type == \
        backup_pb2.IMAGE_TYPE_REPLICATION


def _signed_in_target(clouds: Clouds) -> ConsoleClient:
    _user(clouds.target.client, "ops", "CBRFullAccess")
    browser = _browser(clouds.target.controller)
    assert browser.sign_in("admin", "ops", PASSWORD).status == 303
    return browser
