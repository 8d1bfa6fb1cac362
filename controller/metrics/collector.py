"""The series read from the state database at each scrape, and the listener.

Each family is read in its own short transaction: a database that fails one
query (or is away) costs that family for this scrape, logged, and the others
and the process's own counters are still served.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy.orm import Session

from cbr.metrics import Forward, MetricsServer
from controller.app import App
from controller.metrics import REGISTRY
from controller.services import monitoring

log = logging.getLogger("cbr.controller.metrics")

T = TypeVar("T")


class StateCollector(Collector):
    """What one controller's database says, plus whether this controller leads
    the policy loop."""

    def __init__(self, app: App) -> None:
        self._app = app
        # Families whose last read failed: one line when a family fails and
        # one when it is back, not a line per scrape while the database is away.
        self._failing: set[str] = set()

    def _read(self, what: str, query: Callable[[Session], T]) -> T | None:
        try:
            with self._app.db.begin() as session:
                answer = query(session)
        except Exception as exc:  # a scrape never fails for one family
            if what not in self._failing:
                self._failing.add(what)
                log.warning("metrics: cannot read %s from the state database (left out of "
                            "the scrapes until it can): %s", what,
                            str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__)
            return None
        if what in self._failing:
            self._failing.discard(what)
            log.info("metrics: %s read again from the state database", what)
        return answer

    def collect(self) -> Iterator[Any]:
        yield from self._resources()
        yield from self._tasks()
        yield from self._replication()
        yield from self._vaults()
        yield from self._agents()
        yield from self._policy_loop()

    def _resources(self) -> Iterator[Any]:
        rows = self._read("the last backups", monitoring.resource_backups)
        if rows is None:
            return
        labels = ("resource_id", "resource_name", "vault_id")
        last = GaugeMetricFamily(
            "cbr_resource_last_backup_success_timestamp_seconds",
            "When the resource's last successful backup ended (Unix seconds).", labels=labels)
        outcome = GaugeMetricFamily(
            "cbr_resource_last_backup_success",
            "1 if the resource's last backup succeeded, 0 if it failed or timed out.",
            labels=labels)
        for r in rows:
            values = (r.resource_id, r.resource_name, r.vault_id)
            if r.last_success_at is not None:
                last.add_metric(values, r.last_success_at.timestamp())
            if r.last_succeeded is not None:
                outcome.add_metric(values, 1.0 if r.last_succeeded else 0.0)
        yield last
        yield outcome

    def _tasks(self) -> Iterator[Any]:
        counts = self._read("the tasks", monitoring.tasks_by_status)
        if counts is None:
            return
        family = GaugeMetricFamily("cbr_tasks", "Tasks in the state database, by operation "
                                   "type and status.", labels=("operation", "status"))
        for (operation, status), n in sorted(counts.items()):
            family.add_metric((operation, status), n)
        yield family

    def _replication(self) -> Iterator[Any]:
        now = self._app.clock.now()
        lags = self._read("the replication lag",
                          lambda s: monitoring.replication_lag(s, now))
        if lags is None:
            return
        family = GaugeMetricFamily(
            "cbr_replication_lag_seconds",
            "Per vault with a replication policy and its destination region: age of the "
            "oldest backup not yet replicated among those newer than the newest replicated "
            "one (0 when nothing waits).", labels=("vault_id", "destination_region"))
        for lag in lags:
            family.add_metric((lag.vault_id, lag.destination_region), lag.seconds)
        yield family

    def _vaults(self) -> Iterator[Any]:
        usage = self._read("the vaults", monitoring.vault_usage)
        if usage is None:
            return
        labels = ("vault_id", "vault_name")
        used = GaugeMetricFamily("cbr_vault_used_bytes", "Bytes the vault's backups use.",
                                 labels=labels)
        capacity = GaugeMetricFamily("cbr_vault_capacity_bytes",
                                     "The vault's capacity (its size_gb, in bytes).",
                                     labels=labels)
        threshold = GaugeMetricFamily("cbr_vault_threshold_ratio",
                                      "The vault's warning threshold, as a share of capacity.",
                                      labels=labels)
        past = GaugeMetricFamily("cbr_vault_threshold_exceeded",
                                 "1 while the vault's usage is past its threshold (the "
                                 "vault.threshold_exceeded event was raised), else 0.",
                                 labels=labels)
        for v in usage:
            used.add_metric((v.vault_id, v.vault_name), v.used_bytes)
            capacity.add_metric((v.vault_id, v.vault_name), v.capacity_bytes)
            threshold.add_metric((v.vault_id, v.vault_name), v.threshold_percent / 100)
            past.add_metric((v.vault_id, v.vault_name), 1 if v.threshold_exceeded else 0)
        yield used
        yield capacity
        yield threshold
        yield past

    def _agents(self) -> Iterator[Any]:
        cfg = self._app.config
        now = self._app.clock.now()
        counts = self._read("the agents", lambda s: monitoring.agents_online(
            s, now, cfg.agent_offline_after))
        if counts is None:
            return
        family = GaugeMetricFamily("cbr_agents_online", "Agents connected to a controller of "
                                   "this database and heard from recently, by role.",
                                   labels=("role",))
        for role, n in sorted(counts.items()):
            family.add_metric((role,), n)
        yield family

    def _policy_loop(self) -> Iterator[Any]:
        scheduler = self._app.scheduler
        yield GaugeMetricFamily("cbr_policy_loop_leader", "1 while this controller leads the "
                                "policy loop (among the controllers of one database).",
                                value=1.0 if scheduler is not None and scheduler.leading
                                else 0.0)
        missed = self._read("the missed runs", monitoring.missed_runs)
        if missed is not None:
            yield CounterMetricFamily("cbr_policy_runs_missed", "Scheduled policy runs "
                                      "recorded as missed (never run late), by every "
                                      "controller of this database.", value=missed)


def registry_for(app: App) -> CollectorRegistry:
    """What one controller's listener serves: the process's counters, its
    state, and the process itself (memory, CPU, open files)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Forward(REGISTRY))
    registry.register(StateCollector(app))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def start(app: App) -> MetricsServer:
    """The controller's ``/metrics`` on ``metrics_listen`` (stop it on shutdown)."""
    server = MetricsServer(registry_for(app), log)
    server.start(app.config.metrics_listen, "metrics_listen")
    return server
