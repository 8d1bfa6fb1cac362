"""What every command shares: argument helpers, the call context, paging
and the one line a failed call prints. Settings are in ``cli.settings``,
output in ``cli.output``; their names are re-exported here for the commands."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from cbr import client as cbr_client
from cbr import tls
from cbr.clock import utc_now
from cli.output import (
    Column as Column,
)
from cli.output import (
    EnumNames as EnumNames,
)
from cli.output import (
    Output as Output,
)
from cli.output import (
    detail_rows as detail_rows,
)
from cli.output import (
    enum_names as enum_names,
)
from cli.output import (
    fmt_bytes as fmt_bytes,
)
from cli.output import (
    fmt_field as fmt_field,
)
from cli.output import (
    fmt_time as fmt_time,
)
from cli.output import (
    make_table as make_table,
)
from cli.output import (
    to_dict as to_dict,
)
from cli.settings import (
    DEFAULT_PROFILE as DEFAULT_PROFILE,
)
from cli.settings import (
    DEFAULT_TIMEOUT_S as DEFAULT_TIMEOUT_S,
)
from cli.settings import (
    ENV_ACCESS_KEY as ENV_ACCESS_KEY,
)
from cli.settings import (
    ENV_CA_FILE as ENV_CA_FILE,
)
from cli.settings import (
    ENV_CONFIG_DIR as ENV_CONFIG_DIR,
)
from cli.settings import (
    ENV_ENDPOINT as ENV_ENDPOINT,
)
from cli.settings import (
    ENV_INSECURE as ENV_INSECURE,
)
from cli.settings import (
    ENV_PROFILE as ENV_PROFILE,
)
from cli.settings import (
    ENV_SECRET_KEY as ENV_SECRET_KEY,
)
from cli.settings import (
    PROFILE_KEYS as PROFILE_KEYS,
)
from cli.settings import (
    CliError as CliError,
)
from cli.settings import (
    ConfigError as ConfigError,
)
from cli.settings import (
    Settings as Settings,
)
from cli.settings import (
    UsageError as UsageError,
)
from cli.settings import (
    config_path as config_path,
)
from cli.settings import (
    load_profiles as load_profiles,
)
from cli.settings import (
    render_profiles as render_profiles,
)
from cli.settings import (
    resolve_settings as resolve_settings,
)
from cli.settings import (
    save_profiles as save_profiles,
)

# -- argument helpers -------------------------------------------------------------


def key_value(text: str) -> tuple[str, str]:
    """argparse type of KEY=VALUE arguments (tags, bind rules, mappings)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


_AGE = re.compile(r"^(\d+)([smhd])$")
_AGE_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def point_in_time(text: str) -> dt.datetime:
    """argparse type of --since/--until: an ISO 8601 time (UTC unless it
    says) or an age before now such as 30m, 2h or 7d."""
    match = _AGE.match(text.strip())
    if match:
        return utc_now() - dt.timedelta(**{_AGE_UNITS[match.group(2)]: int(match.group(1))})
    try:
        value = dt.datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"not a time: {text!r} (use 2026-12-07T10:00:00Z or an age such as 30m, 2h, 7d)"
        ) from exc
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def timestamp(value: dt.datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def read_secret_line(path: Path, what: str) -> str:
    """The first line of a file holding a secret ('-' reads stdin): secrets
    come from files or prompts, never from arguments other users can see."""
    if str(path) == "-":
        return sys.stdin.readline().rstrip("\n")
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise UsageError(f"cannot read {what}: {exc}") from None
    if not lines or not lines[0].strip():
        raise UsageError(f"{what} {path} is empty")
    return lines[0].strip()


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from exc
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def add_paging(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--page-size", type=positive_int, help="items per page (server max 1000)")
    parser.add_argument("--page-token", help="continue from this page token")
    parser.add_argument("--all", action="store_true", help="follow page tokens and list every item")


def add_wait(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--wait", action="store_true", help="watch the started task(s) until they end"
    )


def enum_arg(
    parser: argparse.ArgumentParser,
    flag: str,
    names: EnumNames,
    help: str,
    *,
    required: bool = False,
    choices: Sequence[str] | None = None,
    default: str | None = None,
) -> None:
    """An option taking a short enum name; argparse lists the valid ones on a typo."""
    allowed = list(choices) if choices is not None else names.choices
    parser.add_argument(
        flag,
        choices=allowed,
        required=required,
        default=default,
        metavar="{" + ",".join(allowed) + "}",
        help=help,
    )


def global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """The options every command takes. Leaf commands repeat them with
    suppressed defaults, so `cbr vault list --output json` works as well as
    `cbr --output json vault list` without the leaf resetting the root's value."""

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    def text(help: str) -> str:
        # Listed once, in `cbr --help`; repeating them in every command's help hides its own.
        return argparse.SUPPRESS if suppress else help

    g = parser.add_argument_group("global options")
    g.add_argument(
        "--endpoint", default=default(None), help=text(f"controller host:port (env {ENV_ENDPOINT})")
    )
    g.add_argument(
        "--access-key", default=default(None), help=text(f"access key id (env {ENV_ACCESS_KEY})")
    )
    g.add_argument(
        "--secret-key", default=default(None), help=text(f"secret key (env {ENV_SECRET_KEY})")
    )
    g.add_argument(
        "--profile",
        default=default(None),
        help=text(f"profile of the config file (env {ENV_PROFILE}; default {DEFAULT_PROFILE})"),
    )
    g.add_argument(
        "--ca-file",
        default=default(None),
        help=text(f"PEM CA to verify a TLS endpoint (env {ENV_CA_FILE})"),
    )
    g.add_argument(
        "--insecure",
        action="store_true",
        default=default(False),
        help=text(f"plaintext, no TLS: only for a development controller started with "
                  f"--insecure-listen (env {ENV_INSECURE}=true)"),
    )
    g.add_argument(
        "--output",
        "-o",
        choices=["table", "json"],
        default=default("table"),
        help=text("output format"),
    )
    g.add_argument(
        "--timeout",
        type=float,
        default=default(None),
        metavar="SECONDS",
        help=text(f"deadline of each call (default {DEFAULT_TIMEOUT_S:g}; watching: none)"),
    )


def add_command(
    sub: Any,
    name: str,
    func: Callable[[Context, argparse.Namespace], int],
    help: str,
    *,
    rpc: str | Sequence[str] | None = None,
    aliases: Sequence[str] = (),
) -> argparse.ArgumentParser:
    """A leaf command; `rpc` names the API method(s) it calls, so a test can
    prove every method of the API is reachable."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help,
        description=help,
        aliases=list(aliases),
        epilog="Global options (--endpoint, --profile, --output, ...) may also follow the "
        "command; see `cbr --help`.",
    )
    global_options(parser, suppress=True)
    rpcs = (rpc,) if isinstance(rpc, str) else tuple(rpc or ())
    parser.set_defaults(func=func, rpcs=rpcs)
    return parser


def add_group(sub: Any, name: str, help: str, aliases: Sequence[str] = ()) -> Any:
    parser = sub.add_parser(name, help=help, description=help, aliases=list(aliases))
    return parser.add_subparsers(dest=f"{name}_command", metavar="COMMAND", required=True)


# -- calls -----------------------------------------------------------------------------


class Context:
    """What a command runs with: its arguments, output, and a client made on
    first use so that commands which need no controller need no keys."""

    def __init__(
        self, args: argparse.Namespace, out: Output, env: Mapping[str, str] | None = None
    ) -> None:
        self.args = args
        self.out = out
        self.env = os.environ if env is None else env
        self._client: cbr_client.Client | None = None
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = resolve_settings(self.args, self.env)
        return self._settings

    @property
    def endpoint(self) -> str:
        return self.settings.endpoint

    @property
    def timeout(self) -> float:
        value = getattr(self.args, "timeout", None)
        return DEFAULT_TIMEOUT_S if value is None else float(value)

    @property
    def stream_timeout(self) -> float | None:
        """Watching a task may take hours: only an explicit --timeout bounds it."""
        value = getattr(self.args, "timeout", None)
        return None if value is None else float(value)

    def root_certificates(self) -> bytes | None:
        """The pinned CA of the profile; None only for a plaintext profile."""
        path = self.settings.ca_file
        if not path:
            if self.settings.insecure == "true":
                return None
            raise ConfigError(
                f"no CA pinned for profile '{self.settings.profile}': run `cbr configure "
                "--import-admin-credentials PATH`, or `cbr configure --ca-file PEM` (ca/ca.crt "
                "in the controller's data dir) or `--ca-sha256 HEX` (the fingerprint the "
                "controller logs at start); --insecure only for a plaintext development "
                "controller")
        try:
            return Path(path).expanduser().read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read CA file {path}: {exc}") from exc

    def channel_settings(self) -> dict[str, Any]:
        """How to reach the API: the keyword arguments of cbr.client.channel."""
        ca = self.root_certificates()
        return {"root_certificates": ca, "insecure": ca is None,
                "server_name": self.settings.server_name or tls.SERVER_NAME}

    @property
    def client(self) -> cbr_client.Client:
        if self._client is None:
            settings = self.settings
            settings.require()
            self._client = cbr_client.Client(
                settings.endpoint,
                settings.access_key,
                settings.secret_key,
                **self.channel_settings(),
            )
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def list_pages(ctx: Context, call: Callable[..., Any], request: Any, field_name: str) -> list[Any]:
    """The first page, or every page with --all; says on stderr when more exist."""
    args = ctx.args
    if getattr(args, "page_size", None):
        request.page_size = args.page_size
    if getattr(args, "page_token", None):
        request.page_token = args.page_token
    if getattr(args, "all", False):

        def timed(req: Any) -> Any:
            return call(req, timeout=ctx.timeout)

        return list(cbr_client.iterate_pages(timed, request, field_name))
    response = call(request, timeout=ctx.timeout)
    items = list(getattr(response, field_name))
    if response.next_page_token:
        total = getattr(response, "total_count", 0)
        of = f" of {total}" if total else ""
        ctx.out.note(
            f"showing {len(items)}{of}; more with --all or --page-token {response.next_page_token}"
        )
    return items


def rpc_error_line(exc: grpc.RpcError, endpoint: str) -> str:
    """The one line printed for a failed call."""
    text = " ".join(cbr_client.describe(exc).split())
    code = exc.code() if isinstance(exc, grpc.Call) else None
    if code == grpc.StatusCode.UNAVAILABLE:
        where = f" at {endpoint}" if endpoint else ""
        return f"the controller{where} could not be reached ({text})"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"the controller did not answer in time; raise --timeout ({text})"
    return text
