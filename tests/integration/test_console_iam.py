"""The console's Keys, IAM and Audit pages below the browser, against a real
controller: a secret key is shown once, in the response that made it, and
nowhere after (no page, no URL, no log line); a password set in the console
signs in; controls a user may not use say which action they need; the audit
page shows the console's own changes; keys go through their states."""

from __future__ import annotations

import re

import pytest

from cbr.client import Client
from cbr.v1 import iam_pb2, key_pb2
from tests.support.console import ConsoleClient, Page
from tests.support.processes import ControllerFactory, ControllerProcess

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery staple"
NEW_PASSWORD = "a different passphrase for alice"
SECRET = re.compile(r'<code class="secret">([^<]+)</code>')
ACCESS_KEY_ID = re.compile(r"<dt>Access key ID</dt><dd><code>([^<]+)</code>")


def _user(admin: Client, name: str, *grants: str) -> str:
    user = admin.iam.CreateUser(iam_pb2.CreateUserRequest(name=name)).user
    for grant in grants:
        admin.iam.CreateGrant(iam_pb2.CreateGrantRequest(user_id=user.id, action=grant))
    admin.iam.SetUserPassword(iam_pb2.SetUserPasswordRequest(user_id=user.id,
                                                             password=PASSWORD))
    return str(user.id)


def _signed_in(controller: ControllerProcess, user: str) -> ConsoleClient:
    browser = ConsoleClient(controller.console_url, controller.ca_pem)
    assert browser.sign_in("admin", user, PASSWORD).status == 303
    return browser


def _made_user(browser: ConsoleClient, name: str) -> str:
    browser.get("/iam")
    made = browser.post("/iam/users", {"name": name})
    assert made.status == 303, made.text
    assert made.location.startswith("/iam/users/")
    return made.location.removeprefix("/iam/users/")


def _rows_with(page: Page, action: str, source: str = "") -> int:
    """How many of the audit page's rows name this action (and source)."""
    rows = page.text.split("<tr>")[1:]
    return sum(1 for row in rows if f"<td><code>{action}</code></td>" in row
               and f"<td>{source}</td>" in (row if source else f"<td>{source}</td>"))


def test_a_new_secret_key_is_shown_once_in_its_response_and_nowhere_else(
        controller_factory: ControllerFactory) -> None:
    # DEBUG, so that a secret logged at any level would be found below.
    controller = controller_factory(extra_args=["--log-level", "DEBUG"])
    admin = controller.client()
    _user(admin, "ops", "CBRFullAccess", "IAMFullAccess")
    browser = _signed_in(controller, "ops")
    alice = _made_user(browser, "alice")
    browser.get(f"/iam/users/{alice}")
    granted = browser.post(f"/iam/users/{alice}/grants", {"action": "CBRReadOnlyAccess"})
    assert granted.status == 303 and granted.location == f"/iam/users/{alice}"
    assert [g.action for g in admin.iam.ListGrants(
        iam_pb2.ListGrantsRequest(user_id=alice)).grants] == ["CBRReadOnlyAccess"]

    made = browser.post(f"/iam/users/{alice}/access-keys", {})
    assert made.status == 201 and not made.location
    assert made.headers["Cache-Control"] == "no-store"
    assert "will not be shown again" in made.text
    (secret,) = SECRET.findall(made.text)
    (key_id,) = ACCESS_KEY_ID.findall(made.text)
    listed = admin.iam.ListAccessKeys(iam_pb2.ListAccessKeysRequest(user_id=alice)).access_keys
    assert [k.access_key_id for k in listed] == [key_id]
    assert len(secret) >= 20 and secret not in key_id

    later = [browser.get(path) for path in (f"/iam/users/{alice}", "/iam", "/audit",
                                            f"/audit?resource_id={key_id}")]
    assert all(page.status == 200 for page in later)
    assert key_id in later[0].text
    assert not [page for page in later if secret in page.text or secret in page.location]
    assert secret not in controller.log_text()
    assert " DEBUG " in controller.log_text()  # the check above saw every level
    # The secret shown is the real one: it signs alice in.
    assert ConsoleClient(controller.console_url, controller.ca_pem).sign_in_with_key(
        key_id, secret).status == 303


def test_a_password_set_in_the_console_signs_in_and_is_never_shown(
        controller: ControllerProcess) -> None:
    admin = controller.client()
    _user(admin, "ops", "CBRFullAccess", "IAMFullAccess")
    browser = _signed_in(controller, "ops")
    alice = _made_user(browser, "alice")
    page = browser.get(f"/iam/users/{alice}")
    assert 'type="password"' in page.text and 'minlength="12"' in page.text
    differ = browser.post(f"/iam/users/{alice}/password",
                          {"password": NEW_PASSWORD, "confirm": NEW_PASSWORD + "x"})
    short = browser.post(f"/iam/users/{alice}/password",
                         {"password": "too short", "confirm": "too short"})
    assert differ.status == 400 and "differ" in differ.text
    assert short.status == 400 and "12 to 256" in short.text
    assert NEW_PASSWORD not in differ.text and "too short" not in short.text
    assert not admin.iam.GetUser(iam_pb2.GetUserRequest(user_id=alice)).user.password_set

    set_ = browser.post(f"/iam/users/{alice}/password",
                        {"password": NEW_PASSWORD, "confirm": NEW_PASSWORD})
    assert set_.status == 303 and NEW_PASSWORD not in set_.location
    after = browser.get(f"/iam/users/{alice}")
    assert "Remove password" in after.text and NEW_PASSWORD not in after.text
    second = ConsoleClient(controller.console_url, controller.ca_pem)
    assert second.sign_in("admin", "alice", NEW_PASSWORD).status == 303
    assert second.get("/iam").status == 200  # signed in, though alice may list nothing

    assert browser.post(f"/iam/users/{alice}/password/remove", {}).status == 303
    third = ConsoleClient(controller.console_url, controller.ca_pem)
    assert third.sign_in("admin", "alice", NEW_PASSWORD).status == 401
    assert NEW_PASSWORD not in controller.log_text()


def test_a_user_without_iam_actions_sees_the_iam_controls_disabled(
        controller: ControllerProcess) -> None:
    admin = controller.client()
    _user(admin, "reader", "CBRReadOnlyAccess")
    viewer = _user(admin, "viewer", "iam:users:get", "iam:users:list", "iam:grants:list",
                   "iam:accessKeys:list")
    browser = _signed_in(controller, "reader")
    iam_page = browser.get("/iam")
    assert iam_page.status == 200
    assert "Listing users needs iam:users:list" in iam_page.text
    assert "needs iam:users:create" in iam_page.text and "disabled" in iam_page.text

    browser = _signed_in(controller, "viewer")
    page = browser.get(f"/iam/users/{viewer}")
    assert page.status == 200
    for action in ("iam:grants:create", "iam:grants:delete", "iam:accessKeys:create",
                   "iam:users:setPassword", "iam:users:delete"):
        assert f"needs {action}" in page.text
    refused = browser.post(f"/iam/users/{viewer}/access-keys", {})
    assert refused.status == 403 and "iam:accessKeys:create" in refused.text
    assert not admin.iam.ListAccessKeys(
        iam_pb2.ListAccessKeysRequest(user_id=viewer)).access_keys


def test_the_audit_page_shows_the_console_changes_and_filters_them(
        controller: ControllerProcess) -> None:
    admin = controller.client()
    ops = _user(admin, "ops", "CBRFullAccess", "IAMFullAccess")
    browser = _signed_in(controller, "ops")
    alice = _made_user(browser, "alice")
    browser.post(f"/iam/users/{alice}/grants", {"action": "cbr:vaults:list"})

    everything = browser.get("/audit")
    assert everything.status == 200
    # ops and its grants came through the API, alice and hers through the console.
    assert _rows_with(everything, "iam:users:create") == 2
    assert _rows_with(everything, "iam:users:create", "console 127.0.0.1") == 1
    assert _rows_with(everything, "iam:grants:create", "console 127.0.0.1") == 1
    assert "<td><code>/cbr.v1.IamService/CreateUser</code></td>" in everything.text

    only_users = browser.get(f"/audit?action=iam:users:create&result=success&user_id={ops}")
    assert _rows_with(only_users, "iam:users:create", "console 127.0.0.1") == 1
    assert _rows_with(only_users, "iam:users:create") == 1
    assert _rows_with(only_users, "iam:grants:create") == 0
    assert f"<code>{alice}</code>" in only_users.text and f"<code>{ops}</code>" in only_users.text
    assert 'value="iam:users:create"' in only_users.text  # the filter stays in its field

    by_resource = browser.get(f"/audit?resource_id={alice}&user_id={ops}")
    assert _rows_with(by_resource, "iam:users:create", "console 127.0.0.1") == 1
    assert _rows_with(by_resource, "iam:grants:create", "console 127.0.0.1") == 1  # names alice
    assert "<p>2 records.</p>" in by_resource.text
    future = browser.get("/audit?since=2999-01-01T00:00")
    assert "No records match these filters." in future.text
    past = browser.get("/audit?until=2000-01-01T00:00")
    assert _rows_with(past, "iam:users:create") == 0
    wrong = browser.get("/audit?since=yesterday")
    assert wrong.status == 400 and "since must be a date and time" in wrong.text


def test_keys_are_created_disabled_and_scheduled_for_deletion_from_the_page(
        controller: ControllerProcess) -> None:
    admin = controller.client()
    _user(admin, "ops", "CBRFullAccess")
    browser = _signed_in(controller, "ops")
    assert browser.get("/keys").status == 200
    assert browser.post("/keys", {"alias": "backups-2026", "description": "for \"db\" & co"}
                        ).status == 303
    (key,) = admin.keys.ListKeys(key_pb2.ListKeysRequest()).keys
    page = browser.get("/keys")
    assert "backups-2026" in page.text and "for &#34;db&#34; &amp; co" in page.text
    assert f'action="/keys/{key.id}/disable"' in page.text

    assert browser.post(f"/keys/{key.id}/disable", {}).status == 303
    page = browser.get("/keys")
    assert f'action="/keys/{key.id}/enable"' in page.text and ">disabled<" in page.text

    too_soon = browser.post(f"/keys/{key.id}/schedule-deletion", {"pending_days": "3"})
    assert too_soon.status == 400
    assert browser.post(f"/keys/{key.id}/schedule-deletion", {"pending_days": "7"}
                        ).status == 303
    page = browser.get("/keys")
    assert ">pending deletion<" in page.text and "destroyed at" in page.text
    assert f'action="/keys/{key.id}/cancel-deletion"' in page.text
    assert admin.keys.GetKey(key_pb2.GetKeyRequest(key_id=key.id)).key.state == \
        key_pb2.KEY_STATE_PENDING_DELETION
    pending = browser.get("/keys?state=pending_deletion")
    assert "backups-2026" in pending.text
    assert "backups-2026" not in browser.get("/keys?state=enabled").text

    assert browser.post(f"/keys/{key.id}/cancel-deletion", {}).status == 303
    assert admin.keys.GetKey(key_pb2.GetKeyRequest(key_id=key.id)).key.state == \
        key_pb2.KEY_STATE_DISABLED

    _user(admin, "reader", "CBRReadOnlyAccess")
    reader = _signed_in(controller, "reader")
    page = reader.get("/keys")
    assert "needs cbr:keys:create" in page.text and "needs cbr:keys:enable" in page.text


def test_the_administrator_creates_an_account_and_sees_its_first_secret_once(
        controller: ControllerProcess) -> None:
    admin = controller.client()
    creds = controller.admin_credentials
    browser = ConsoleClient(controller.console_url, controller.ca_pem)
    assert browser.sign_in_with_key(creds["access_key"], creds["secret_key"]).status == 303
    page = browser.get("/iam")
    assert "<h2 id=\"accounts-h\">Accounts</h2>" in page.text and "(administrator)" in page.text
    made = browser.post("/iam/accounts", {"name": "tenant-a", "admin_user_name": "boss",
                                          "vault_quota_gb": "0"})
    assert made.status == 201 and "tenant-a" in made.text and "boss" in made.text
    (secret,) = SECRET.findall(made.text)
    (key_id,) = ACCESS_KEY_ID.findall(made.text)
    assert "tenant-a" in [a.name for a in admin.iam.ListAccounts(
        iam_pb2.ListAccountsRequest()).accounts]
    again = browser.get("/iam")
    assert "tenant-a" in again.text and secret not in again.text
    assert secret not in controller.log_text()
    boss = ConsoleClient(controller.console_url, controller.ca_pem)
    assert boss.sign_in_with_key(key_id, secret).status == 303
    assert "Accounts</h2>" not in boss.get("/iam").text  # not the administrator account
