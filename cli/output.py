"""How a message becomes a table or JSON, and how an enum is spelled on the
command line and in a table: one decision, the same in every command."""

from __future__ import annotations

import datetime as dt
import json
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TextIO

from google.protobuf import json_format
from google.protobuf.descriptor import EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Console
from rich.table import Table

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
        named = {sub_title.replace("_", " ") for sub_title, _, _ in given}
        given += [(name, items, plain_columns(items[0])) for name, items in listed_below(msg)
                  if name.replace("_", " ") not in named]  # every "(below)" has its table
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
