"""IAM: the account's users, each user's grants, access keys and console
password, and (for the administrator account) the accounts.

A secret key exists in clear only in the API's response that made it, so the
page answering that POST is the one place it is shown: never in a URL (no
redirect carries it), never in a log line, and the page is ``no-store`` like
every console page. A password goes only into SetUserPassword and is never
rendered back.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from cbr import limits
from cbr.v1 import iam_pb2
from console import web as cw
from console.api import ApiError
from controller.services import actions, passwords
from controller.services.iam import MANAGED_POLICIES


def add_routes(app: web.Application) -> None:
    app.router.add_get("/iam", users_page)
    app.router.add_post("/iam/users", create_user)
    app.router.add_post("/iam/accounts", create_account)
    app.router.add_get("/iam/users/{user_id}", user_page)
    app.router.add_post("/iam/users/{user_id}/delete", delete_user)
    app.router.add_post("/iam/users/{user_id}/grants", create_grant)
    app.router.add_post("/iam/users/{user_id}/grants/{grant_id}/delete", delete_grant)
    app.router.add_post("/iam/users/{user_id}/access-keys", create_access_key)
    app.router.add_post("/iam/users/{user_id}/access-keys/{access_key_id}/delete",
                        delete_access_key)
    app.router.add_post("/iam/users/{user_id}/password", set_password)
    app.router.add_post("/iam/users/{user_id}/password/remove", remove_password)


def _may(request: web.Request, method: str) -> bool:
    """Whether to make a read at all: a section the user may not read says
    which action it needs instead of failing the whole page."""
    return not cw.missing(request, method)


async def users_page(request: web.Request) -> web.Response:
    api = cw.api(request)
    users: Any = None
    total = 0
    next_page_token = ""
    if _may(request, "IamService/ListUsers"):
        listed = await api(api.stubs.iam.ListUsers, iam_pb2.ListUsersRequest(
            page_size=limits.PAGE_SIZE_MAX, page_token=request.query.get("page_token", "")))
        users, total, next_page_token = (listed.users, listed.total_count,
                                         listed.next_page_token)
    accounts: Any = None
    who = cw.current(request)
    if who is not None and who.caller.administrator and _may(request,
                                                              "IamService/ListAccounts"):
        accounts = (await api(api.stubs.iam.ListAccounts, iam_pb2.ListAccountsRequest(
            page_size=limits.PAGE_SIZE_MAX))).accounts
    return cw.render(request, "iam.html", users=users, total=total,
                     next_page_token=next_page_token, accounts=accounts,
                     administrator=bool(who and who.caller.administrator))


async def create_user(request: web.Request) -> web.Response:
    api = cw.api(request)
    form = await request.post()
    made = await api(api.stubs.iam.CreateUser,
                     iam_pb2.CreateUserRequest(name=str(form.get("name", "")).strip()))
    return cw.redirect(request, f"/iam/users/{made.user.id}")


async def create_account(request: web.Request) -> web.Response:
    """The administrator's CreateAccount; when it also makes a first user,
    that user's new secret key is shown in this response only."""
    api = cw.api(request)
    form = await request.post()
    quota = cw.form_number(form, "vault_quota_gb")
    made = await api(api.stubs.iam.CreateAccount, iam_pb2.CreateAccountRequest(
        name=str(form.get("name", "")).strip(),
        admin_user_name=str(form.get("admin_user_name", "")).strip(), vault_quota_gb=quota))
    if not made.access_key.secret_access_key:
        return cw.redirect(request, "/iam")
    return cw.render(request, "iam_secret.html", status=201, access_key=made.access_key,
                     user=made.user, account=made.account, back="/iam")


async def user_page(request: web.Request) -> web.Response:
    api = cw.api(request)
    user_id = request.match_info["user_id"]
    user = (await api(api.stubs.iam.GetUser, iam_pb2.GetUserRequest(user_id=user_id))).user
    grants: Any = None
    if _may(request, "IamService/ListGrants"):
        grants = (await api(api.stubs.iam.ListGrants,
                            iam_pb2.ListGrantsRequest(user_id=user_id))).grants
    access_keys: Any = None
    if _may(request, "IamService/ListAccessKeys"):
        access_keys = (await api(api.stubs.iam.ListAccessKeys,
                                 iam_pb2.ListAccessKeysRequest(user_id=user_id))).access_keys
    return cw.render(request, "iam_user.html", user=user, grants=grants,
                     access_keys=access_keys, policies=MANAGED_POLICIES,
                     actions=sorted(actions.known_actions()),
                     password_min=passwords.MIN_LENGTH, password_max=passwords.MAX_LENGTH)


async def delete_user(request: web.Request) -> web.Response:
    api = cw.api(request)
    await api(api.stubs.iam.DeleteUser,
              iam_pb2.DeleteUserRequest(user_id=request.match_info["user_id"]))
    return cw.redirect(request, "/iam")


async def create_grant(request: web.Request) -> web.Response:
    api = cw.api(request)
    user_id = request.match_info["user_id"]
    form = await request.post()
    await api(api.stubs.iam.CreateGrant, iam_pb2.CreateGrantRequest(
        user_id=user_id, action=str(form.get("action", ""))))
    return cw.redirect(request, f"/iam/users/{user_id}")


async def delete_grant(request: web.Request) -> web.Response:
    api = cw.api(request)
    await api(api.stubs.iam.DeleteGrant,
              iam_pb2.DeleteGrantRequest(grant_id=request.match_info["grant_id"]))
    return cw.redirect(request, f"/iam/users/{request.match_info['user_id']}")


async def create_access_key(request: web.Request) -> web.Response:
    """Shows the new secret key in this response, the only time it exists in
    clear outside the caller's hands: no redirect, nothing logged."""
    api = cw.api(request)
    user_id = request.match_info["user_id"]
    made = await api(api.stubs.iam.CreateAccessKey,
                     iam_pb2.CreateAccessKeyRequest(user_id=user_id))
    return cw.render(request, "iam_secret.html", status=201, access_key=made.access_key,
                     user=None, account=None, back=f"/iam/users/{user_id}")


async def delete_access_key(request: web.Request) -> web.Response:
    api = cw.api(request)
    await api(api.stubs.iam.DeleteAccessKey, iam_pb2.DeleteAccessKeyRequest(
        access_key_id=request.match_info["access_key_id"]))
    return cw.redirect(request, f"/iam/users/{request.match_info['user_id']}")


async def set_password(request: web.Request) -> web.Response:
    api = cw.api(request)
    user_id = request.match_info["user_id"]
    form = await request.post()
    password = str(form.get("password", ""))
    if password != str(form.get("confirm", "")):
        raise ApiError("INVALID_ARGUMENT", "", "The two passwords differ; type the same "
                                               "password in both fields.")
    if not password:
        raise ApiError("INVALID_ARGUMENT", "", "Type a password, or use Remove password to "
                                               "turn off sign-in by password.")
    await api(api.stubs.iam.SetUserPassword,
              iam_pb2.SetUserPasswordRequest(user_id=user_id, password=password))
    return cw.redirect(request, f"/iam/users/{user_id}")


async def remove_password(request: web.Request) -> web.Response:
    api = cw.api(request)
    user_id = request.match_info["user_id"]
    await api(api.stubs.iam.SetUserPassword, iam_pb2.SetUserPasswordRequest(user_id=user_id))
    return cw.redirect(request, f"/iam/users/{user_id}")
