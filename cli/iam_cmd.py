"""`cbr iam`: accounts, users, access keys and grants."""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

from cbr.v1 import iam_pb2
from cli import configure_cmd
from cli._common import (
    Column,
    Context,
    UsageError,
    add_command,
    add_group,
    add_paging,
    list_pages,
    read_secret_line,
)

ACCOUNT_COLUMNS: list[Column] = [
    ("ID", "id"),
    ("NAME", "name"),
    ("ADMIN", "administrator"),
    ("CREATED", "created_at"),
]
USER_COLUMNS: list[Column] = [
    ("ID", "id"),
    ("NAME", "name"),
    ("ACCOUNT", "account_id"),
    ("CREATED", "created_at"),
]
KEY_COLUMNS: list[Column] = [
    ("ACCESS KEY", "access_key_id"),
    ("USER", "user_id"),
    ("ACTIVE", "active"),
    ("CREATED", "created_at"),
    ("LAST USED", "last_used_at"),
]
GRANT_COLUMNS: list[Column] = [
    ("ID", "id"),
    ("USER", "user_id"),
    ("ACTION", "action"),
    ("CREATED", "created_at"),
]

SAVE_HELP = "also save the new key as this profile (with the current endpoint)"


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    iam = add_group(sub, "iam", "accounts, users, access keys and grants")

    add_command(
        iam,
        "whoami",
        cmd_whoami,
        "who the signing key belongs to",
        rpc="IamService.GetCallerIdentity",
    )

    group = add_group(iam, "account", "accounts (projects); created by the administrator")
    p = add_command(
        group, "create", cmd_account_create, "create an account", rpc="IamService.CreateAccount"
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument(
        "--admin-user", help="also create this user with full access, and an access key for it"
    )
    p.add_argument("--save-profile", metavar="PROFILE", help=SAVE_HELP)
    p.add_argument("--vault-quota-gb", type=int, default=0, metavar="GB",
                   help="total vault size auto_expand may grow the account's vaults to "
                        "(default 10240)")
    p = add_command(group, "update", cmd_account_update, "change an account's vault quota",
                    rpc="IamService.UpdateAccount")
    p.add_argument("account_id", metavar="ACCOUNT_ID")
    p.add_argument("--vault-quota-gb", type=int, required=True, metavar="GB",
                   help="total vault size auto_expand may grow the account's vaults to")
    p = add_command(group, "list", cmd_account_list, "list accounts", rpc="IamService.ListAccounts")
    add_paging(p)
    p = add_command(group, "show", cmd_account_show, "show an account", rpc="IamService.GetAccount")
    p.add_argument("account_id", metavar="ACCOUNT_ID")

    group = add_group(iam, "user", "users of the caller's account")
    p = add_command(group, "create", cmd_user_create, "create a user", rpc="IamService.CreateUser")
    p.add_argument("name", metavar="NAME")
    p = add_command(group, "list", cmd_user_list, "list users", rpc="IamService.ListUsers")
    add_paging(p)
    p = add_command(group, "show", cmd_user_show, "show a user", rpc="IamService.GetUser")
    p.add_argument("user_id", metavar="USER_ID")
    p = add_command(group, "delete", cmd_user_delete, "delete a user", rpc="IamService.DeleteUser")
    p.add_argument("user_id", metavar="USER_ID")
    p = add_command(group, "set-password", cmd_user_set_password,
                    "set the password a user signs in to the web console with",
                    rpc="IamService.SetUserPassword")
    p.add_argument("user_id", metavar="USER_ID")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--password-file", type=Path, metavar="PATH",
                     help="read it from this file's first line ('-': stdin); default: ask")
    how.add_argument("--remove", action="store_true",
                     help="remove the password (no console sign-in by name and password)")

    group = add_group(iam, "key", "access keys (AK/SK) of users")
    p = add_command(
        group,
        "create",
        cmd_key_create,
        "create an access key (its secret is shown once)",
        rpc="IamService.CreateAccessKey",
    )
    p.add_argument("user_id", metavar="USER_ID")
    p.add_argument("--save-profile", metavar="PROFILE", help=SAVE_HELP)
    p = add_command(
        group, "list", cmd_key_list, "list a user's access keys", rpc="IamService.ListAccessKeys"
    )
    p.add_argument("user_id", metavar="USER_ID")
    p = add_command(
        group, "delete", cmd_key_delete, "delete an access key", rpc="IamService.DeleteAccessKey"
    )
    p.add_argument("access_key_id", metavar="ACCESS_KEY_ID")

    group = add_group(iam, "grant", "actions and managed policies granted to users")
    p = add_command(
        group,
        "create",
        cmd_grant_create,
        "grant an action (cbr:vaults:create) or managed policy (CBRFullAccess)",
        rpc="IamService.CreateGrant",
    )
    p.add_argument("user_id", metavar="USER_ID")
    p.add_argument("action", metavar="ACTION")
    p = add_command(
        group, "list", cmd_grant_list, "list a user's grants", rpc="IamService.ListGrants"
    )
    p.add_argument("user_id", metavar="USER_ID")
    p = add_command(
        group, "delete", cmd_grant_delete, "revoke a grant", rpc="IamService.DeleteGrant"
    )
    p.add_argument("grant_id", metavar="GRANT_ID")


def cmd_whoami(ctx: Context, args: argparse.Namespace) -> int:
    resp = ctx.client.iam.GetCallerIdentity(iam_pb2.GetCallerIdentityRequest(), timeout=ctx.timeout)
    ctx.out.show(resp)
    return 0


def _save_key(ctx: Context, args: argparse.Namespace, key: iam_pb2.AccessKey, account: str) -> None:
    if not getattr(args, "save_profile", None) or not key.secret_access_key:
        return
    path = configure_cmd.store_profile(
        ctx.env,
        args.save_profile,
        {
            "endpoint": ctx.endpoint,
            "access_key": key.access_key_id,
            "secret_key": key.secret_access_key,
            "account_id": account,
        },
    )
    ctx.out.note(f"saved profile '{args.save_profile}' to {path}")


def cmd_account_create(ctx: Context, args: argparse.Namespace) -> int:
    resp = ctx.client.iam.CreateAccount(
        iam_pb2.CreateAccountRequest(name=args.name, admin_user_name=args.admin_user or "",
                                     vault_quota_gb=args.vault_quota_gb),
        timeout=ctx.timeout,
    )
    ctx.out.show(resp)
    if resp.HasField("access_key"):
        if not ctx.out.json:
            ctx.out.note("the secret key is shown only now; keep it safe")
        _save_key(ctx, args, resp.access_key, resp.account.id)
    return 0


def cmd_account_update(ctx: Context, args: argparse.Namespace) -> int:
    resp = ctx.client.iam.UpdateAccount(
        iam_pb2.UpdateAccountRequest(account_id=args.account_id,
                                     vault_quota_gb=args.vault_quota_gb),
        timeout=ctx.timeout,
    )
    ctx.out.show(resp.account)
    return 0


def cmd_account_list(ctx: Context, args: argparse.Namespace) -> int:
    items = list_pages(ctx, ctx.client.iam.ListAccounts, iam_pb2.ListAccountsRequest(), "accounts")
    ctx.out.items(items, ACCOUNT_COLUMNS)
    return 0


def cmd_account_show(ctx: Context, args: argparse.Namespace) -> int:
    resp = ctx.client.iam.GetAccount(
        iam_pb2.GetAccountRequest(account_id=args.account_id), timeout=ctx.timeout
    )
    ctx.out.show(resp.account)
    return 0


def cmd_user_create(ctx: Context, args: argparse.Namespace) -> int:
    resp = ctx.client.iam.CreateUser(iam_pb2.CreateUserRequest(name=args.name), timeout=ctx.timeout)
    ctx.out.show(resp.user)
    return 0


def cmd_user_list(ctx: Context, args: argparse.Namespace) -> int:
    items = list_pages(ctx, ctx.client.iam.ListUsers, iam_pb2.ListUsersRequest(), "users")
    ctx.out.items(items, USER_COLUMNS)
    return 0


def cmd_user_show(ctx: Context, args: argparse.Namespace) -> int:
    resp = ctx.client.iam.GetUser(iam_pb2.GetUserRequest(user_id=args.user_id), timeout=ctx.timeout)
    ctx.out.show(resp.user)
    return 0


def cmd_user_delete(ctx: Context, args: argparse.Namespace) -> int:
    ctx.client.iam.DeleteUser(iam_pb2.DeleteUserRequest(user_id=args.user_id), timeout=ctx.timeout)
    ctx.out.deleted("user", args.user_id)
    return 0


def cmd_user_set_password(ctx: Context, args: argparse.Namespace) -> int:
    if args.remove:
        password = ""
    elif args.password_file is not None:
        password = read_secret_line(args.password_file, "--password-file")
    elif sys.stdin.isatty():
        password = getpass.getpass("New console password: ")
        if getpass.getpass("Again: ") != password:
            raise UsageError("the two passwords differ; nothing was changed")
    else:
        raise UsageError("give --password-file (or run on a terminal to be asked)")
    resp = ctx.client.iam.SetUserPassword(
        iam_pb2.SetUserPasswordRequest(user_id=args.user_id, password=password),
        timeout=ctx.timeout)
    ctx.out.show(resp.user)
    return 0


def cmd_key_create(ctx: Context, args: argparse.Namespace) -> int:
    resp = ctx.client.iam.CreateAccessKey(
        iam_pb2.CreateAccessKeyRequest(user_id=args.user_id), timeout=ctx.timeout
    )
    ctx.out.show(resp.access_key)
    if not ctx.out.json:
        ctx.out.note("the secret key is shown only now; keep it safe")
    _save_key(ctx, args, resp.access_key, "")
    return 0


def cmd_key_list(ctx: Context, args: argparse.Namespace) -> int:
    resp = ctx.client.iam.ListAccessKeys(
        iam_pb2.ListAccessKeysRequest(user_id=args.user_id), timeout=ctx.timeout
    )
    ctx.out.items(list(resp.access_keys), KEY_COLUMNS)
    return 0


def cmd_key_delete(ctx: Context, args: argparse.Namespace) -> int:
    ctx.client.iam.DeleteAccessKey(
        iam_pb2.DeleteAccessKeyRequest(access_key_id=args.access_key_id), timeout=ctx.timeout
    )
    ctx.out.deleted("access key", args.access_key_id)
    return 0


def cmd_grant_create(ctx: Context, args: argparse.Namespace) -> int:
    resp = ctx.client.iam.CreateGrant(
        iam_pb2.CreateGrantRequest(user_id=args.user_id, action=args.action), timeout=ctx.timeout
    )
    ctx.out.show(resp.grant)
    return 0


def cmd_grant_list(ctx: Context, args: argparse.Namespace) -> int:
    resp = ctx.client.iam.ListGrants(
        iam_pb2.ListGrantsRequest(user_id=args.user_id), timeout=ctx.timeout
    )
    ctx.out.items(list(resp.grants), GRANT_COLUMNS)
    return 0


def cmd_grant_delete(ctx: Context, args: argparse.Namespace) -> int:
    ctx.client.iam.DeleteGrant(
        iam_pb2.DeleteGrantRequest(grant_id=args.grant_id), timeout=ctx.timeout
    )
    ctx.out.deleted("grant", args.grant_id)
    return 0
