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


# TaskStatus numbers that end a task (task.proto): success, failed,
# skipped, timeout, cancelled.
FINAL_TASK_STATUSES = frozenset({3, 4, 5, 6, 7})
TASK_SUCCESS = 3


@dataclass(frozen=True)
class Progress:
    """A task's progress as its page shows it.

    Figures come from the counters the agent last reported (task.extra_info,
    one report a second at most), so "left" is an estimate as of that report.
    """

    percent: int
    done: int
    total: int
    rate: float  # average bytes a second from the start to the last report (or the end)
    left: float | None  # seconds, when it can be told
    final: bool = False
    # done is the percent of total (a replication reports how far its walk
    # is, not a byte count): shown as "about".
    estimated: bool = False
    sent: int = 0  # bytes uploaded or sent on the wire so far

    @property
    def rate_text(self) -> str:
        return f"{size(self.rate)}/s" if self.rate else ""

    @property
    def left_text(self) -> str:
        return seconds(self.left) if self.left is not None else ""


def progress(task: Any) -> Progress:
    """What agents report (agent.dataplane.Progress.snapshot for backups and
    restores: bytes_total and bytes_scanned, logical bytes with holes; the
    replication source: bytes_total and bytes_sent, with the percent of its
    walk; an importer: bytes_stored only, no total) turned into one bar.

    A final task's progress is always 100 in the API; a cancelled or failed
    one shows how far it got instead, and only a success shows 100%."""
    info = dict(task.extra_info)
    final = task.status in FINAL_TASK_STATUSES
    total = _int(info.get("bytes_total"))
    done = _int(info.get("bytes_scanned"))
    sent = _int(info.get("bytes_sent"))
    estimated = False
    if not done and total and task.progress and task.status not in FINAL_TASK_STATUSES:
        done, estimated = total * task.progress // 100, True
    if not done and not total:
        done = _int(info.get("bytes_stored"))  # an importer: what arrived, of an unknown total
    if task.status == TASK_SUCCESS:
        percent = 100
        done = max(done, total)
    elif final:
        percent = min(99, done * 100 // total) if total else 0
    else:
        percent = min(99, max(0, task.progress))
    started = _time(task, "started_at")
    until = _time(task, "ended_at") if final else _time(task, "updated_at")
    elapsed = (until - started).total_seconds() if started and until else 0.0
    rate = done / elapsed if elapsed > 0 and done else 0.0
    left = (total - done) / rate if rate and total > done and not final else None
    return Progress(percent, done, total, rate, left, final, estimated, sent)


def _time(message: Any, field: str) -> dt.datetime | None:
    if not message.HasField(field):
        return None
    value: Timestamp = getattr(message, field)
    if not value.seconds and not value.nanos:
        return None
    return value.ToDatetime(tzinfo=dt.UTC)


def _int(value: object) -> int:
    try:
        return int(str(value or 0))
    except ValueError:
        return 0


FILTERS = {"size": size, "when": when, "seconds": seconds, "enum": enum,
           "progress": progress}
