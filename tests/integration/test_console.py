"""The web console below the browser: sign-in, its cookie, CSRF and Origin,
escaping, and the API's IAM checks, against a real controller process."""

from __future__ import annotations

import grpc
import pytest

from cbr.client import Client
from cbr.v1 import audit_pb2, iam_pb2, vault_pb2
from controller.services.console_sessions import API_SESSION_HEADER
from tests.support.console import ConsoleClient
from tests.support.processes import ControllerProcess

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery staple"
COOKIE = "__Host-cbr_session-cbr-cloud"  # the default cloud name's


def _user(admin: Client, name: str, *grants: str) -> str:
    user = admin.iam.CreateUser(iam_pb2.CreateUserRequest(name=name)).user
    for grant in grants:
        admin.iam.CreateGrant(iam_pb2.CreateGrantRequest(user_id=user.id, action=grant))
    admin.iam.SetUserPassword(iam_pb2.SetUserPasswordRequest(user_id=user.id,
                                                             password=PASSWORD))
    return str(user.id)


def _browser(controller: ControllerProcess) -> ConsoleClient:
    return ConsoleClient(controller.console_url, controller.ca_pem)


def test_sign_in_sets_a_secure_host_only_cookie_and_every_page_needs_it(
        controller: ControllerProcess) -> None:
    _user(controller.client(), "ops", "CBRFullAccess")
    browser = _browser(controller)
    assert controller.console_url.startswith("https://127.0.0.1:")
    first = browser.get("/vaults")
    assert first.status == 303 and first.location == "/sign-in?next=%2Fvaults"
    for method in ("password", "key"):
        form = browser.get(f"/sign-in?method={method}")
        assert form.status == 200 and "<h1>Sign in to cbr-cloud</h1>" in form.text
    signed = browser.sign_in("admin", "ops", PASSWORD)
    assert signed.status == 303 and signed.location == "/"
    (cookie,) = signed.set_cookies
    flags = [part.strip().lower() for part in cookie.split(";")]
    assert cookie.startswith("__Host-cbr_session-cbr-cloud=")
    assert {"httponly", "secure", "samesite=strict", "path=/"} <= set(flags)
    assert not any(flag.startswith("domain") for flag in flags)
    page = browser.get("/vaults")
    assert page.status == 200 and "<h1>Vaults</h1>" in page.text
    assert page.headers["Content-Security-Policy"].startswith("default-src 'self'")
    assert page.headers["X-Frame-Options"] == "DENY"
    assert PASSWORD not in page.text


def test_a_wrong_password_says_only_that_and_five_failures_slow_the_next(
        controller: ControllerProcess) -> None:
    _user(controller.client(), "ops", "CBRFullAccess")
    browser = _browser(controller)
    wrong_user = browser.sign_in("admin", "nobody", PASSWORD)
    wrong_password = browser.sign_in("admin", "ops", "not it")
    assert wrong_user.status == wrong_password.status == 401
    assert "Wrong account, user name or password." in wrong_user.text
    assert "Wrong account, user name or password." in wrong_password.text
    assert not browser.cookies
    for _ in range(4):
        browser.sign_in("admin", "ops", "not it")
    throttled = browser.sign_in("admin", "ops", PASSWORD)
    assert throttled.status == 429 and "Too many failed sign-ins" in throttled.text
    admin = controller.client()
    records = admin.audit.ListAuditRecords(audit_pb2.ListAuditRecordsRequest()).records
    refused = [r for r in records if r.method == "/cbr.v1.Console/SignIn"]
    assert refused and all(r.status_code == "UNAUTHENTICATED" for r in refused)


def test_a_change_without_the_csrf_token_or_from_another_origin_is_refused(
        controller: ControllerProcess) -> None:
    _user(controller.client(), "ops", "CBRFullAccess")
    browser = _browser(controller)
    browser.sign_in("admin", "ops", PASSWORD)
    browser.get("/vaults")
    fields = {"name": "v1", "object_type": "disk", "protect_type": "backup", "size_gb": "10"}
    assert browser.post("/vaults", fields, csrf=False).status == 403
    assert browser.post("/vaults", {**fields, "csrf_token": "x" * 43}).status == 403
    assert browser.post("/vaults", fields, origin="https://evil.example").status == 403
    assert browser.post("/vaults", fields, origin="").status == 403
    admin = controller.client()
    assert not admin.vaults.ListVaults(vault_pb2.ListVaultsRequest()).vaults
    made = browser.post("/vaults", fields)
    assert made.status == 303
    assert [v.name for v in admin.vaults.ListVaults(vault_pb2.ListVaultsRequest()).vaults] == [
        "v1"]


def test_names_holding_markup_quotes_and_non_ascii_show_as_text(
        controller: ControllerProcess) -> None:
    admin = controller.client()
    _user(admin, "ops", "CBRFullAccess")
    # The API refuses '<' and '>' in names and descriptions; file names in a
    # backup hold them (the browser tests show those).
    text = "\"quoted\" & 'single' ünïcødé"
    admin.vaults.CreateVault(vault_pb2.CreateVaultRequest(
        name="v1", description=text, object_type=1, protect_type=1, size_gb=10))
    browser = _browser(controller)
    browser.sign_in("admin", "ops", PASSWORD)
    page = browser.get("/vaults")
    assert "&#34;quoted&#34; &amp; &#39;single&#39; ünïcødé" in page.text


def test_a_user_without_an_action_sees_the_control_disabled_and_cannot_use_it(
        controller: ControllerProcess) -> None:
    admin = controller.client()
    _user(admin, "reader", "CBRReadOnlyAccess")
    browser = _browser(controller)
    browser.sign_in("admin", "reader", PASSWORD)
    page = browser.get("/vaults")
    assert "needs cbr:vaults:create" in page.text and "disabled" in page.text
    refused = browser.post("/vaults", {"name": "v1", "object_type": "disk",
                                       "protect_type": "backup", "size_gb": "10"})
    assert refused.status == 403 and "cbr:vaults:create" in refused.text
    assert not admin.vaults.ListVaults(vault_pb2.ListVaultsRequest()).vaults


def test_sign_out_ends_the_session_and_a_key_sign_in_works_alike(
        controller: ControllerProcess) -> None:
    admin = controller.client()
    user_id = _user(admin, "ops", "CBRFullAccess")
    key = admin.iam.CreateAccessKey(iam_pb2.CreateAccessKeyRequest(user_id=user_id)).access_key
    browser = _browser(controller)
    assert browser.sign_in_with_key(key.access_key_id, "wrong").status == 401
    assert browser.sign_in_with_key(key.access_key_id, key.secret_access_key).status == 303
    token = browser.cookies[COOKIE]
    assert browser.get("/vaults").status == 200
    out = browser.post("/sign-out", {})
    assert out.status == 303 and out.location == "/sign-in"
    assert not browser.cookies
    browser.cookies[COOKIE] = token  # a copy kept from before
    assert browser.get("/vaults").status == 303


def test_a_console_session_is_refused_on_the_network_api(
        controller: ControllerProcess) -> None:
    _user(controller.client(), "ops", "CBRFullAccess")
    browser = _browser(controller)
    browser.sign_in("admin", "ops", PASSWORD)
    token = browser.cookies[COOKIE]
    stub = controller.channel().unary_unary(
        "/cbr.v1.VaultService/ListVaults",
        request_serializer=vault_pb2.ListVaultsRequest.SerializeToString,
        response_deserializer=vault_pb2.ListVaultsResponse.FromString)
    with pytest.raises(grpc.RpcError) as err:
        stub(vault_pb2.ListVaultsRequest(), metadata=((API_SESSION_HEADER, token),),
             timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "only from the controller's own console" in (err.value.details() or "")


def test_console_changes_are_audited_with_the_browser_as_source(
        controller: ControllerProcess) -> None:
    admin = controller.client()
    user_id = _user(admin, "ops", "CBRFullAccess")
    browser = _browser(controller)
    browser.sign_in("admin", "ops", PASSWORD)
    browser.get("/vaults")
    browser.post("/vaults", {"name": "audited", "object_type": "disk",
                             "protect_type": "backup", "size_gb": "10"})
    records = admin.audit.ListAuditRecords(audit_pb2.ListAuditRecordsRequest(
        action="cbr:vaults:create")).records
    assert [(r.user_id, r.source, r.result) for r in records] == [
        (user_id, "console 127.0.0.1", audit_pb2.AUDIT_RESULT_SUCCESS)]


def test_numbers_out_of_every_range_get_the_apis_refusal_not_a_server_error(
        controller: ControllerProcess) -> None:
    _user(controller.client(), "ops", "CBRFullAccess", "IAMFullAccess")
    browser = _browser(controller)
    browser.sign_in("admin", "ops", PASSWORD)
    browser.get("/vaults")
    for size in ("99999999999999999999999", "-5", "ten"):
        page = browser.post("/vaults", {"name": "v1", "object_type": "disk",
                                        "protect_type": "backup", "size_gb": size})
        assert page.status == 400 and "size_gb" in page.text, (size, page.status)
    browser.get("/agents")
    for hours in ("1e400", "nan", "-1", "99999999999"):
        page = browser.post("/agents/tokens", {"ttl_hours": hours, "role": "host"})
        assert page.status == 400, (hours, page.status)


def test_another_accounts_console_user_sees_and_reaches_nothing_of_the_first(
        controller: ControllerProcess) -> None:
    admin = controller.client()
    mine = admin.vaults.CreateVault(vault_pb2.CreateVaultRequest(
        name="mine", object_type=1, protect_type=1, size_gb=10)).vault
    made = admin.iam.CreateAccount(iam_pb2.CreateAccountRequest(
        name="other", admin_user_name="other-admin"))
    other = Client(controller.api_endpoint, made.access_key.access_key_id,
                   made.access_key.secret_access_key, root_certificates=controller.ca_pem)
    try:
        other.iam.SetUserPassword(iam_pb2.SetUserPasswordRequest(
            user_id=made.user.id, password=PASSWORD))
    finally:
        other.close()
    browser = _browser(controller)
    assert browser.sign_in("other", "other-admin", PASSWORD).status == 303
    assert mine.id not in browser.get("/vaults").text
    assert browser.get(f"/vaults/{mine.id}").status == 404
    assert browser.get(f"/backups?vault_id={mine.id}").status == 404
    refused = browser.post(f"/vaults/{mine.id}/settings", {"size_gb": "20", "threshold": "80"})
    assert refused.status == 404
    assert admin.vaults.GetVault(vault_pb2.GetVaultRequest(vault_id=mine.id)).vault.size_gb == 10
