"""The controller's Prometheus series, defined in one place.

Two kinds: what the process counts as it works (API calls, the ends of
backups, restores and replications) lives in ``REGISTRY`` and is fed by the
API interceptor and the task outcomes; what the state holds (last backups,
tasks, replication lag, vaults, agents, missed runs) is read from the
database at scrape time by ``controller.metrics.collector``, so that every
controller on one database agrees and a restart loses nothing. The list of
series with their meaning is in docs/operations.md.

This package sits above the services (its collector reads through them)
and below the agents, jobs and API floors that feed it.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

API_CALLS = Counter(
    "cbr_api_calls", "cbr.v1 API calls answered, by full method name and gRPC status code.",
    ("method", "code"), registry=REGISTRY)
API_LATENCY = Histogram(
    "cbr_api_call_duration_seconds",
    "Time to answer a unary cbr.v1 API call, from the interceptor's view.",
    ("method",), registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))

# Operations as the series name them (the task's operation type, import for
# the target's side of a replication).
OPERATIONS = ("backup", "restore", "replication", "import")

OPERATION_DURATION = Histogram(
    "cbr_operation_duration_seconds",
    "Duration of backups, restores, replications (source side) and imports (target side) "
    "that ended, from the task's start to its end, by outcome.",
    ("operation", "outcome"), registry=REGISTRY,
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400))
READ_BYTES = Counter(
    "cbr_operation_read_bytes", "Bytes read by ended operations: the source's bytes scanned "
    "by a backup, the vault's bytes read by a restore or a replication.",
    ("operation",), registry=REGISTRY)
NEW_BYTES = Counter(
    "cbr_operation_new_bytes", "Bytes of content the destination vault did not hold yet "
    "(before compression), by ended operations.", ("operation",), registry=REGISTRY)
STORED_BYTES = Counter(
    "cbr_operation_stored_bytes", "Bytes ended operations added to vault storage (after "
    "dedup, compression and encryption); for a restore, bytes written to the target.",
    ("operation",), registry=REGISTRY)
WIRE_BYTES = Counter(
    "cbr_operation_wire_bytes", "Bytes ended operations sent on the wire: a backup's to "
    "vault storage, a replication's to the target's importer.", ("operation",),
    registry=REGISTRY)


@dataclass(frozen=True)
class Ended:
    """The figures of one ended operation, as its task and typed result give them."""

    operation: str
    succeeded: bool
    seconds: float
    read: int = 0
    new: int = 0
    stored: int = 0
    wire: int = 0


def operation_ended(end: Ended) -> None:
    """Counts one ended operation (called once per task, after its end is committed)."""
    OPERATION_DURATION.labels(end.operation, "success" if end.succeeded else "failed") \
        .observe(max(0.0, end.seconds))
    for counter, value in ((READ_BYTES, end.read), (NEW_BYTES, end.new),
                           (STORED_BYTES, end.stored), (WIRE_BYTES, end.wire)):
        if value > 0:
            counter.labels(end.operation).inc(value)


def _zero() -> None:
    """Every operation's counters exist from the start (at 0), so a dashboard
    and rate() see them before the first operation ends."""
    for operation in OPERATIONS:
        for outcome in ("success", "failed"):
            OPERATION_DURATION.labels(operation, outcome)
        for counter in (READ_BYTES, NEW_BYTES, STORED_BYTES, WIRE_BYTES):
            counter.labels(operation)


_zero()
