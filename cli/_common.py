"""What every command shares: settings and profiles, enum names, output.

Commands stay small because the decisions that must be the same everywhere
live here once: where credentials come from and in which order, how an enum
is spelled on the command line and in a table, and how a message becomes a
table or JSON.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import sys
import tempfile
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import grpc
from google.protobuf import json_format
from google.protobuf.descriptor import EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Console
from rich.table import Table

from cbr import client as cbr_client
from cbr import tls

DEFAULT_PROFILE = "default"
# Unary calls get this deadline unless --timeout says otherwise, so that a
# wedged controller cannot hang a script forever.
DEFAULT_TIMEOUT_S = 60.0

ENV_ENDPOINT = "CBR_ENDPOINT"
ENV_ACCESS_KEY = "CBR_ACCESS_KEY"
ENV_SECRET_KEY = "CBR_SECRET_KEY"
ENV_PROFILE = "CBR_PROFILE"
ENV_CA_FILE = "CBR_CA_FILE"
ENV_INSECURE = "CBR_INSECURE"
ENV_CONFIG_DIR = "CBR_CONFIG_DIR"

PROFILE_KEYS = ("endpoint", "access_key", "secret_key", "ca_file", "server_name", "insecure",
                "account_id")


class CliError(Exception):
    """A failure of the command line itself (exit 2), not of the controller."""

    exit_code = 2


class ConfigError(CliError):
    """Settings are missing or unreadable; the message says how to fix them."""


class UsageError(CliError):
    """Arguments parse but do not make a request (for example nothing to update)."""


# -- settings and profiles ----------------------------------------------------


def config_path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    base = env.get(ENV_CONFIG_DIR)
    if base:
        return Path(base) / "config.toml"
    return Path.home() / ".config" / "cbr" / "config.toml"


def load_profiles(path: Path) -> dict[str, dict[str, str]]:
    """Every profile of the file; a missing file has none."""
    try:
        with path.open("rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    profiles = doc.get("profiles", {})
    if not isinstance(profiles, dict):
        raise ConfigError(f"cannot read {path}: 'profiles' is not a table")
    out: dict[str, dict[str, str]] = {}
    for name, values in profiles.items():
        if isinstance(values, dict):
            out[name] = {str(k): str(v) for k, v in values.items()}
    return out


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_string(value: str) -> str:
    """A TOML basic string: JSON's escaping is a valid subset of TOML's."""
    return json.dumps(value, ensure_ascii=False)


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else _toml_string(key)


def render_profiles(profiles: Mapping[str, Mapping[str, str]]) -> str:
    lines = ["# Written by `cbr configure`. Holds secret keys: keep it mode 0600.", ""]
    for name in sorted(profiles):
        lines.append(f"[profiles.{_toml_key(name)}]")
        for key, value in profiles[name].items():
            lines.append(f"{_toml_key(key)} = {_toml_string(value)}")
        lines.append("")
    return "\n".join(lines)


def save_profiles(path: Path, profiles: Mapping[str, Mapping[str, str]]) -> None:
    """Replaces the file atomically; it is never readable by others, even briefly."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=".config.", suffix=".toml", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(render_profiles(profiles))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class Settings:
    profile: str
    endpoint: str
    access_key: str
    secret_key: str
    ca_file: str = ""
    # The name the API's certificate is verified by (cbr.tls.SERVER_NAME
    # unless the operator's certificate names the controller otherwise).
    server_name: str = ""
    # Plaintext, for a development controller with insecure_listen.
    insecure: str = ""
    # Where each value came from, for error messages.
    sources: Mapping[str, str] = field(default_factory=dict)

    def require(self) -> None:
        missing = [
            flag
            for flag, value in (
                ("--endpoint", self.endpoint),
                ("--access-key", self.access_key),
                ("--secret-key", self.secret_key),
            )
            if not value
        ]
        if missing:
            raise ConfigError(
                f"no {', '.join(m.lstrip('-') for m in missing)} configured for profile "
                f"'{self.profile}'; run `cbr configure` (or pass {' '.join(missing)}, "
                f"or set {ENV_ENDPOINT}/{ENV_ACCESS_KEY}/{ENV_SECRET_KEY})"
            )


def resolve_settings(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> Settings:
    """Flags win over the environment, which wins over the profile file."""
    env = os.environ if env is None else env
    explicit_profile = getattr(args, "profile", None) or env.get(ENV_PROFILE)
    profile = explicit_profile or DEFAULT_PROFILE
    path = config_path(env)
    profiles = load_profiles(path)
    if explicit_profile and profile not in profiles and profile != DEFAULT_PROFILE:
        raise ConfigError(
            f"profile '{profile}' is not in {path}; create it with "
            f"`cbr configure --profile {profile}`"
        )
    stored = profiles.get(profile, {})
    values: dict[str, str] = {}
    sources: dict[str, str] = {}
    for key, env_name in (
        ("endpoint", ENV_ENDPOINT),
        ("access_key", ENV_ACCESS_KEY),
        ("secret_key", ENV_SECRET_KEY),
        ("ca_file", ENV_CA_FILE),
        ("server_name", ""),
        ("insecure", ENV_INSECURE),
    ):
        flag = getattr(args, key, None)
        if flag:
            values[key], sources[key] = "true" if flag is True else flag, "flag"
        elif env_name and env.get(env_name):
            values[key], sources[key] = env[env_name], env_name
        elif stored.get(key):
            values[key], sources[key] = stored[key], f"profile {profile}"
        else:
            values[key] = ""
    return Settings(profile=profile, sources=sources, **values)


# -- enums ----------------------------------------------------------------------


def _enum_prefix(descriptor: EnumDescriptor) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", descriptor.name).upper() + "_"


class EnumNames:
    """Short lower-case names of a proto enum (``server`` for OBJECT_TYPE_SERVER)."""

    def __init__(self, descriptor: EnumDescriptor, aliases: Mapping[str, str] | None = None):
        self.descriptor = descriptor
        prefix = _enum_prefix(descriptor)
        self._by_short: dict[str, int] = {}
        self._short: dict[int, str] = {}
        for value in descriptor.values:
            short = value.name.removeprefix(prefix).lower()
            self._short[value.number] = short
            if value.number != 0:
                self._by_short[short] = value.number
        for alias, target in (aliases or {}).items():
            self._by_short[alias] = self._by_short[target]

    @property
    def choices(self) -> list[str]:
        return list(self._by_short)

    def value(self, name: str | None) -> int:
        """The number of a short name; None (flag not given) is UNSPECIFIED."""
        return 0 if not name else self._by_short[name]

    def short(self, number: int) -> str:
        if number == 0:
            return "-"
        return self._short.get(number, str(number))


def enum_names(descriptor: EnumDescriptor) -> EnumNames:
    cached = _ENUM_CACHE.get(descriptor.full_name)
    if cached is None:
        cached = _ENUM_CACHE[descriptor.full_name] = EnumNames(descriptor)
    return cached


_ENUM_CACHE: dict[str, EnumNames] = {}


# -- argument helpers -------------------------------------------------------------


def key_value(text: str) -> tuple[str, str]:
    """argparse type of KEY=VALUE arguments (tags, bind rules, mappings)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


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


# -- formatting ---------------------------------------------------------------------


def fmt_time(ts: Timestamp) -> str:
    if ts.seconds == 0 and ts.nanos == 0:
        return "-"
    moment = dt.datetime.fromtimestamp(ts.seconds + ts.nanos / 1e9, tz=dt.UTC)
    return moment.astimezone().isoformat(timespec="seconds")


def fmt_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover - the loop always returns


def _fmt_scalar(fd: Any, value: Any) -> str:
    if fd.type == FieldDescriptor.TYPE_ENUM:
        return enum_names(fd.enum_type).short(value)
    if fd.type == FieldDescriptor.TYPE_BOOL:
        return "yes" if value else "no"
    if fd.name.endswith("_bytes") and isinstance(value, int):
        return fmt_bytes(value)
    if fd.name == "size_gb":
        return f"{value} GB"
    if isinstance(value, str):
        return value or "-"
    return str(value)


def _is_map(fd: Any) -> bool:
    return fd.message_type is not None and fd.message_type.GetOptions().map_entry


def fmt_field(msg: Message, path: str) -> str:
    """A field (dotted path allowed) as a table cell."""
    head, _, rest = path.partition(".")
    fd = msg.DESCRIPTOR.fields_by_name[head]
    value = getattr(msg, head)
    if rest:
        return fmt_field(value, rest)
    if _is_map(fd):
        return ", ".join(f"{k}={v}" for k, v in sorted(value.items())) or "-"
    if fd.is_repeated:
        if fd.message_type is not None:
            if fd.message_type.name == "Tag":
                return ", ".join(f"{t.key}={t.value}" for t in value) or "-"
            return str(len(value))
        return ", ".join(_fmt_scalar(fd, v) for v in value) or "-"
    if fd.message_type is not None:
        if fd.message_type.full_name == "google.protobuf.Timestamp":
            return fmt_time(value)
        return "-" if not msg.HasField(head) else str(value).replace("\n", " ").strip()
    return _fmt_scalar(fd, value)


_TIMESTAMP = "google.protobuf.Timestamp"


def listed_below(msg: Message) -> list[tuple[str, list[Message]]]:
    """The lists of messages ``detail_rows`` leaves to tables below it."""
    return [(fd.name, list(getattr(msg, fd.name))) for fd in msg.DESCRIPTOR.fields
            if fd.is_repeated and not _is_map(fd) and fd.message_type is not None
            and fd.message_type.name != "Tag" and fd.message_type.full_name != _TIMESTAMP
            and getattr(msg, fd.name)]


def plain_columns(msg: Message) -> list[Column]:
    """A table's columns for a message shown without a command's own choice:
    its single fields, in order."""
    columns: list[Column] = [
        (fd.name.upper(), fd.name) for fd in msg.DESCRIPTOR.fields
        if not fd.is_repeated and (fd.message_type is None
                                   or fd.message_type.full_name == _TIMESTAMP)]
    return columns[:8]


def detail_rows(msg: Message, prefix: str = "") -> list[tuple[str, str]]:
    """Field/value rows of a message; nested messages flattened, lists of
    messages other than tags left to the command's own sub-tables."""
    rows: list[tuple[str, str]] = []
    for fd in msg.DESCRIPTOR.fields:
        name = prefix + fd.name
        value = getattr(msg, fd.name)
        if _is_map(fd):
            for k, v in sorted(value.items()):
                rows.append((f"{name}.{k}", str(v)))
            continue
        if fd.is_repeated:
            if fd.message_type is not None and fd.message_type.full_name == _TIMESTAMP:
                rows.append((name, ", ".join(fmt_time(t) for t in value) or "-"))
                continue
            if fd.message_type is not None and fd.message_type.name != "Tag":
                if value:
                    rows.append((name, f"{len(value)} (below)"))
                continue
            rows.append((name, fmt_field(msg, fd.name)))
            continue
        if fd.message_type is not None and fd.message_type.full_name != "google.protobuf.Timestamp":
            if msg.HasField(fd.name):
                rows.extend(detail_rows(value, prefix=name + "."))
            continue
        rows.append((name, fmt_field(msg, fd.name)))
    return rows


def to_dict(msg: Message) -> dict[str, Any]:
    """A message as JSON-ready data: API field names, enum names, every field."""
    return json_format.MessageToDict(
        msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


Column = tuple[str, str | Callable[[Any], str]]


class Output:
    """Writes results as rich tables or JSON, and notes to stderr so that
    stdout stays parseable."""

    def __init__(self, mode: str, stdout: TextIO | None = None, stderr: TextIO | None = None):
        self.mode = mode
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        terminal = self.stdout.isatty()
        # Text from the controller is shown as it is: no [markup], no :emoji:
        # (an action "cbr:cloud:get" is not a cloud). Off a terminal a table
        # is as wide as its content, never folded to a guessed width.
        self.console = Console(
            file=self.stdout,
            width=None if terminal else OFF_TERMINAL_WIDTH,
            highlight=False,
            soft_wrap=False,
            markup=False,
            emoji=False,
        )
        self.err_console = Console(file=self.stderr, highlight=False, markup=False,
                                   emoji=False)

    @property
    def json(self) -> bool:
        return self.mode == "json"

    def json_value(self, value: Any, *, compact: bool = False) -> None:
        text = json.dumps(value, ensure_ascii=False, indent=None if compact else 2)
        self.stdout.write(text + "\n")
        self.stdout.flush()

    def note(self, text: str) -> None:
        """A hint for a person; never on stdout, so JSON output stays clean."""
        self.stderr.write(text + "\n")
        self.stderr.flush()

    def message(self, text: str) -> None:
        """A result line in table mode (ids of started tasks, confirmations)."""
        self.console.print(text, markup=False)

    def deleted(self, kind: str, ident: str) -> None:
        """Delete calls answer with an empty message; say what was deleted."""
        if self.json:
            self.json_value({"id": ident, "kind": kind, "deleted": True})
        else:
            self.message(f"deleted {kind} {ident}")

    def show(
        self,
        msg: Message,
        title: str | None = None,
        subtables: Iterable[tuple[str, Sequence[Message], Sequence[Column]]] = (),
    ) -> None:
        """One resource: JSON object, or field/value rows plus its lists."""
        if self.json:
            self.json_value(to_dict(msg))
            return
        table = Table(title=title, show_header=False, box=None, pad_edge=False)
        table.add_column("field", style="bold")
        table.add_column("value", overflow="fold")
        for name, value in detail_rows(msg):
            table.add_row(name, value)
        self._print(table)
        given = list(subtables)
        named = {sub_title for sub_title, _, _ in given}
        given += [(name, items, plain_columns(items[0])) for name, items in listed_below(msg)
                  if name not in named]  # every "(below)" has its table
        for sub_title, items, columns in given:
            if items:
                self.console.print()
                self._print(make_table(items, columns, title=sub_title))

    def _print(self, table: Table) -> None:
        """A table without the spaces that pad each line to the table's width."""
        with self.console.capture() as captured:
            self.console.print(table)
        lines = captured.get().splitlines()
        self.stdout.write("".join(line.rstrip() + "\n" for line in lines))
        self.stdout.flush()

    def items(self, items: Sequence[Message], columns: Sequence[Column]) -> None:
        """A list result: a JSON list, or one table row per item."""
        if self.json:
            self.json_value([to_dict(m) for m in items])
            return
        if not items:
            self.note("no items")
            return
        self._print(make_table(items, columns))


OFF_TERMINAL_WIDTH = 4096
"""Wide enough for any row; trailing spaces are stripped anyway."""
UNBROKEN_MAX = 64
"""A cell of one word up to this long (an id, a time, a code) is never split."""


def make_table(
    items: Sequence[Message], columns: Sequence[Column], title: str | None = None
) -> Table:
    rows = [[getter(item) if callable(getter) else fmt_field(item, getter)
             for _, getter in columns] for item in items]
    table = Table(title=title, header_style="bold", box=None, pad_edge=False)
    for n, (header, _) in enumerate(columns):
        words = all(len(r[n]) <= UNBROKEN_MAX and not any(c.isspace() for c in r[n])
                    for r in rows)
        table.add_column(header, overflow="fold", no_wrap=words)
    for row in rows:
        table.add_row(*row)
    return table


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
