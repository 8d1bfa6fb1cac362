"""The agent's Prometheus series, defined in one place.

Host agents and importers count the commands they run, and host agents what
their backups found: how changes were detected, how much of what was read
the vault already held, and the bytes read, new and stored. The process
collector adds the resident memory (process_resident_memory_bytes), the
figure that shows a backup's peak. Served on the agent's own listener
(``--metrics-listen``); the series and their meaning are listed in
docs/operations.md.
"""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
)

from cbr.metrics import Forward, MetricsServer
from cbr.v1 import agent_pb2

log = logging.getLogger("cbr.agent.metrics")

REGISTRY = CollectorRegistry(auto_describe=True)

COMMANDS = Counter(
    "cbr_agent_commands", "Commands this agent ran to their end, by action (backup, restore, "
    "replicate, import, sync) and outcome (success, failed).", ("action", "outcome"),
    registry=REGISTRY)
CHANGE_DETECTION = Counter(
    "cbr_agent_backup_change_detection", "Backups (one per disk of a server) by how changes "
    "were found: full, cbt, hash-scan, journal, walk.", ("method",), registry=REGISTRY)
DEDUP_RATIO = Gauge(
    "cbr_agent_last_backup_dedup_ratio", "Of the bytes the resource's last successful backup "
    "read, the share the vault already held (1 - new/read; 0 to 1).", ("resource",),
    registry=REGISTRY)
READ_BYTES = Counter(
    "cbr_agent_backup_read_bytes", "Bytes successful backups read from their sources.",
    registry=REGISTRY)
NEW_BYTES = Counter(
    "cbr_agent_backup_new_bytes", "Bytes of content successful backups found the vault did "
    "not hold (before compression).", registry=REGISTRY)
STORED_BYTES = Counter(
    "cbr_agent_backup_stored_bytes", "Bytes successful backups wrote to vault storage (after "
    "dedup, compression and encryption).", registry=REGISTRY)
ROLE = Gauge("cbr_agent_info", "1, labelled with this agent's role (host or importer).",
             ("role",), registry=REGISTRY)

OUTCOMES = ("success", "failed")
ACTIONS = tuple(f.name for f in agent_pb2.Command.DESCRIPTOR.oneofs_by_name["action"].fields)


def command_ended(action: str, succeeded: bool, command: Any, result: Any) -> None:
    """Counts one command run to its end (not one whose result was only sent again)."""
    if action not in ACTIONS:
        action = "unknown"
    COMMANDS.labels(action, "success" if succeeded else "failed").inc()
    if succeeded and isinstance(result, agent_pb2.BackupResult):
        backup_ended(str(getattr(command, "resource_name", "")), result)


def backup_ended(resource: str, result: agent_pb2.BackupResult) -> None:
    for item in result.backups:
        if item.HasField("change_detection") and item.change_detection:
            CHANGE_DETECTION.labels(item.change_detection).inc()
    READ_BYTES.inc(max(0, result.bytes_scanned))
    NEW_BYTES.inc(max(0, result.bytes_new))
    STORED_BYTES.inc(max(0, result.bytes_sent))
    read = result.bytes_scanned
    ratio = 1.0 - min(result.bytes_new, read) / read if read > 0 else 0.0
    DEDUP_RATIO.labels(resource).set(ratio)


def _zero() -> None:
    """Every action's counters exist from the start, at 0."""
    for action in ACTIONS:
        for outcome in OUTCOMES:
            COMMANDS.labels(action, outcome)


_zero()


def start(listen: str, role: str) -> MetricsServer:
    """The agent's ``/metrics`` on ``listen`` (stop it on shutdown)."""
    ROLE.labels(role).set(1)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Forward(REGISTRY))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    server = MetricsServer(registry, log)
    server.start(listen, "--metrics-listen")
    return server

