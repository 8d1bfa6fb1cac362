"""How the console shows API values: sizes, times, enum names, task progress.

Filters for the templates; they take the API's messages as they come (a
protobuf Timestamp, an enum number) so views pass responses through as is.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def size(value: int | float | str) -> str:
    """Bytes for a person: 1536 -> "1.5 KiB"."""
    try:
        n = float(value)
    except (TypeError, ValueError):
        return str(value)
    for unit in UNITS:
        if abs(n) < 1024 or unit == UNITS[-1]:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(value)


def when(value: Timestamp | dt.datetime | None) -> str:
    """A time in UTC to the second, or "" when unset."""
    if value is None:
        return ""
    if isinstance(value, Timestamp):
        if not value.seconds and not value.nanos:
            return ""
        value = value.ToDatetime(tzinfo=dt.UTC)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def seconds(value: float | int) -> str:
    """A duration for a person: 75 -> "1 min 15 s"."""
    s = int(value)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


def enum(message: Message, field: str) -> str:
    """The name of an enum field's value ("RUNNING"), not its number."""
    descriptor = message.DESCRIPTOR.fields_by_name[field]
    number = getattr(message, field)
    if descriptor.enum_type is None:
        return str(number)
    value = descriptor.enum_type.values_by_number.get(number)
    name = value.name if value is not None else str(number)
    prefix = _enum_prefix(descriptor.enum_type.name)
    name = name.removeprefix(prefix)
    return name.lower().replace("_", " ")


def _enum_prefix(enum_name: str) -> str:
    out = []
    for i, ch in enumerate(enum_name):
        if ch.isupper() and i:
            out.append("_")
        out.append(ch.upper())
    return "".join(out) + "_"


@dataclass(frozen=True)
class Progress:
    """A task's progress as its page shows it while it runs."""

    percent: int
    done: int
    total: int
    rate: float  # bytes a second since it started
    left: float | None  # seconds, when it can be told

    @property
    def rate_text(self) -> str:
        return f"{size(self.rate)}/s" if self.rate else ""

    @property
    def left_text(self) -> str:
        return seconds(self.left) if self.left is not None else ""


def progress(task: Any) -> Progress:
    info = dict(task.extra_info)
    done = _int(info.get("bytes_scanned") or info.get("bytes_received") or 0)
    total = _int(info.get("bytes_total") or 0)
    started = task.started_at.ToDatetime() if task.HasField("started_at") else None
    updated = task.updated_at.ToDatetime() if task.HasField("updated_at") else None
    elapsed = (updated - started).total_seconds() if started and updated else 0.0
    rate = done / elapsed if elapsed > 0 and done else 0.0
    left = (total - done) / rate if rate and total > done else None
    return Progress(task.progress, done, total, rate, left)


def _int(value: object) -> int:
    try:
        return int(str(value))
    except ValueError:
        return 0


FILTERS = {"size": size, "when": when, "seconds": seconds, "enum": enum,
           "progress": progress}
