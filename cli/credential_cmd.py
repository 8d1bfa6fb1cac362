"""`cbr credential`: keys of a target cloud account for cross-cloud replication.

The options say `--target-access-key`/`--target-secret-key` rather than
`--access-key`/`--secret-key`: those are the global options that sign the
call, and mixing the two up would silently send the wrong key.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable
from pathlib import Path

from cbr.v1 import credential_pb2
from cli._common import (
    Column,
    Context,
    UsageError,
    add_command,
    add_group,
    add_paging,
    list_pages,
)

Prompt = Callable[[str], str]

COLUMNS: list[Column] = [
    ("ID", "id"),
    ("NAME", "name"),
    ("TARGET CLOUD", "target_cloud"),
    ("ENDPOINT", "target_endpoint"),
    ("ACCOUNT", "target_account_id"),
    ("ACCESS KEY", "access_key_id"),
    ("CREATED", "created_at"),
]

SECRET_HELP = ("secret key of the target user; '-' reads it from stdin; omitted: prompt "
               "(a secret beginning with '-' must be written --target-secret-key=SK)")
SECRET_FILE_HELP = "read the target user's secret key from this file (its first line)"


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    group = add_group(sub, "credential", "cross-cloud replication credentials")

    p = add_command(
        group, "create", cmd_create, "store a credential", rpc="CredentialService.CreateCredential"
    )
    p.add_argument("--name", required=True)
    p.add_argument("--description")
    p.add_argument("--target-cloud", required=True, help="the target cloud's name")
    p.add_argument("--target-endpoint", required=True, help="target controller host:port")
    p.add_argument("--target-account-id", required=True)
    p.add_argument("--target-access-key", required=True, help="access key id of the target user")
    secret = p.add_mutually_exclusive_group()
    secret.add_argument("--target-secret-key", help=SECRET_HELP)
    secret.add_argument("--target-secret-key-file", type=Path, metavar="PATH",
                        help=SECRET_FILE_HELP)
    _ca_options(p, "the target controller's CA, which every call to it verifies: ")

    p = add_command(
        group, "list", cmd_list, "list credentials", rpc="CredentialService.ListCredentials"
    )
    p.add_argument("--target-cloud", help="only those for this cloud")
    add_paging(p)

    p = add_command(
        group, "show", cmd_show, "show a credential", rpc="CredentialService.GetCredential"
    )
    p.add_argument("credential_id", metavar="CREDENTIAL_ID")

    p = add_command(
        group,
        "update",
        cmd_update,
        "rename, re-point or rotate keys (the cloud and account cannot change)",
        rpc="CredentialService.UpdateCredential",
    )
    p.add_argument("credential_id", metavar="CREDENTIAL_ID")
    p.add_argument("--name")
    p.add_argument("--description")
    p.add_argument("--target-endpoint")
    p.add_argument("--target-access-key", help="new access key id (asks for its secret key)")
    secret = p.add_mutually_exclusive_group()
    secret.add_argument("--target-secret-key",
                        help=SECRET_HELP.replace("omitted: prompt", "new one"))
    secret.add_argument("--target-secret-key-file", type=Path, metavar="PATH",
                        help=SECRET_FILE_HELP)
    _ca_options(p, "a new CA of the target (it was re-keyed): ")

    p = add_command(
        group, "delete", cmd_delete, "delete a credential", rpc="CredentialService.DeleteCredential"
    )
    p.add_argument("credential_id", metavar="CREDENTIAL_ID")

    p = add_command(
        group, "destinations", cmd_destinations,
        "ask the target cloud where replicas may go: its regions and the account's "
        "replication vaults", rpc="CredentialService.ListReplicationDestinations")
    p.add_argument("credential_id", metavar="CREDENTIAL_ID")


def _ca_options(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--target-ca-sha256", metavar="HEX",
                   help=what + "its SHA-256, as `cbr cloud show` prints it on the target")
    p.add_argument("--target-ca-file", type=Path, metavar="PEM",
                   help=what + "its certificate (ca/ca.crt in the target's data dir)")


def _ca_fields(args: argparse.Namespace) -> dict[str, str]:
    pem = ""
    if args.target_ca_file:
        try:
            pem = args.target_ca_file.read_text()
        except OSError as exc:
            raise UsageError(f"cannot read --target-ca-file: {exc}") from None
    return {"target_ca_certificate": pem, "target_ca_sha256": args.target_ca_sha256 or ""}


def _prompt_secret(prompt: str) -> str:
    if not sys.stdin.isatty():
        raise UsageError("no --target-secret-key given and stdin is not a terminal to ask")
    return getpass.getpass(prompt)


def _secret(args: argparse.Namespace, prompt: Prompt) -> str:
    value: str | None = args.target_secret_key
    path: Path | None = getattr(args, "target_secret_key_file", None)
    if path is not None:
        try:
            lines = path.read_text().splitlines()
            value = lines[0].strip() if lines else ""
        except OSError as exc:
            raise UsageError(f"cannot read --target-secret-key-file: {exc}") from None
        if not value:
            raise UsageError(f"--target-secret-key-file {path} is empty")
        return value
    if value == "-":
        return sys.stdin.readline().rstrip("\n")
    if value:
        return value
    secret = prompt("Secret key of the target user: ")
    if not secret:
        raise UsageError("the secret key may not be empty")
    return secret


def build_create_request(
    args: argparse.Namespace, prompt: Prompt = _prompt_secret
) -> credential_pb2.CreateCredentialRequest:
    return credential_pb2.CreateCredentialRequest(
        name=args.name,
        description=args.description or "",
        target_cloud=args.target_cloud,
        target_endpoint=args.target_endpoint,
        target_account_id=args.target_account_id,
        access_key_id=args.target_access_key,
        secret_access_key=_secret(args, prompt),
        **_ca_fields(args),
    )


def build_update_request(
    args: argparse.Namespace, prompt: Prompt = _prompt_secret
) -> credential_pb2.UpdateCredentialRequest:
    """Empty fields mean unchanged; a new access key always comes with its secret."""
    req = credential_pb2.UpdateCredentialRequest(
        credential_id=args.credential_id,
        name=args.name or "",
        description=args.description or "",
        target_endpoint=args.target_endpoint or "",
        access_key_id=args.target_access_key or "",
        **_ca_fields(args),
    )
    if args.target_access_key or args.target_secret_key or \
            getattr(args, "target_secret_key_file", None):
        req.secret_access_key = _secret(args, prompt)
    if not any(
        (req.name, req.description, req.target_endpoint, req.access_key_id, req.secret_access_key,
         req.target_ca_certificate, req.target_ca_sha256)
    ):
        raise UsageError("nothing to update: give at least one option (see --help)")
    return req


def cmd_create(ctx: Context, args: argparse.Namespace) -> int:
    resp = ctx.client.credentials.CreateCredential(build_create_request(args), timeout=ctx.timeout)
    ctx.out.show(resp.credential)
    return 0


def cmd_list(ctx: Context, args: argparse.Namespace) -> int:
    req = credential_pb2.ListCredentialsRequest(target_cloud=args.target_cloud or "")
    items = list_pages(ctx, ctx.client.credentials.ListCredentials, req, "credentials")
    ctx.out.items(items, COLUMNS)
    return 0


def cmd_show(ctx: Context, args: argparse.Namespace) -> int:
    resp = ctx.client.credentials.GetCredential(
        credential_pb2.GetCredentialRequest(credential_id=args.credential_id), timeout=ctx.timeout
    )
    ctx.out.show(resp.credential)
    return 0


def cmd_update(ctx: Context, args: argparse.Namespace) -> int:
    resp = ctx.client.credentials.UpdateCredential(build_update_request(args), timeout=ctx.timeout)
    ctx.out.show(resp.credential)
    return 0


def cmd_destinations(ctx: Context, args: argparse.Namespace) -> int:
    resp = ctx.client.credentials.ListReplicationDestinations(
        credential_pb2.ListReplicationDestinationsRequest(credential_id=args.credential_id),
        timeout=ctx.timeout)
    ctx.out.show(resp)
    return 0


def cmd_delete(ctx: Context, args: argparse.Namespace) -> int:
    ctx.client.credentials.DeleteCredential(
        credential_pb2.DeleteCredentialRequest(credential_id=args.credential_id),
        timeout=ctx.timeout,
    )
    ctx.out.deleted("credential", args.credential_id)
    return 0
