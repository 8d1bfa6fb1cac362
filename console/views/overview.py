"""The overview: what is protected and what is not, how each resource's last
backup went, what failed in the last day, how far replication is behind per
region, and vault usage against capacity.

One page, a bounded number of API calls made together (under 300 ms with
1,000 backups in a vault), and what a bound cut short is said on the page
rather than guessed.

A resource's last backup comes with its vault (VaultResource.last_backup_*,
one set-based query for a page of vaults); how its last attempt went is the
resource's protect status (error after a failed backup).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web
from google.protobuf.timestamp_pb2 import Timestamp

from cbr.v1 import notification_pb2, protectable_pb2, replication_pb2, vault_pb2
from console import web as cw
from console.api import Api, ApiError

PAGE = 1000  # the API's largest page (cbr.limits.PAGE_SIZE_MAX)
FAILURE_SHOWN = 50
FAILURE_WINDOW = dt.timedelta(hours=24)
# The events that are failures (notification.proto Event.event_type).
FAILURE_EVENTS = ("backup.failed", "restore.failed", "replication.failed")
PENDING_REPLICATION = (replication_pb2.REPLICATION_STATUS_WAITING_REPLICATE,
                       replication_pb2.REPLICATION_STATUS_REPLICATING)

T = TypeVar("T")


@dataclass
class Protected:
    vault: Any
    resource: Any


@dataclass
class RegionLag:
    region: str
    pending: int = 0
    oldest: dt.datetime | None = None  # created_at of the oldest record still pending
    lag: dt.timedelta = field(default_factory=dt.timedelta)


async def _section(call: Awaitable[T]) -> tuple[T | None, ApiError | None]:
    try:
        return await call, None
    except ApiError as err:
        if err.status == "UNAUTHENTICATED":
            raise
        return None, err


async def _failures(api: Api, since: dt.datetime) -> tuple[list[Any], int]:
    stamp = Timestamp()
    stamp.FromDatetime(since)
    pages = await asyncio.gather(*(api(api.stubs.notifications.ListEvents,
                                       notification_pb2.ListEventsRequest(
                                           page_size=FAILURE_SHOWN, event_type=kind,
                                           since=stamp))
                                   for kind in FAILURE_EVENTS))
    events = sorted((e for p in pages for e in p.events),
                    key=lambda e: e.occurred_at.ToDatetime(), reverse=True)
    return events[:FAILURE_SHOWN], sum(int(p.total_count) for p in pages)


async def _pending_replication(api: Api) -> tuple[list[Any], bool]:
    pages = await asyncio.gather(*(api(api.stubs.replication.ListReplicationRecords,
                                       replication_pb2.ListReplicationRecordsRequest(
                                           page_size=PAGE, status=status))  # oldest first
                                   for status in PENDING_REPLICATION))
    return ([r for p in pages for r in p.replication_records],
            any(p.next_page_token for p in pages))


def lag_by_region(records: list[Any], now: dt.datetime) -> list[RegionLag]:
    """Per destination region: how many replications are still pending and
    the age of the oldest (the lag: that backup is not in the region yet).
    From a cut list (each status's oldest first) a region read has its
    oldest record of that status; the page says what may be missing."""
    regions: dict[str, RegionLag] = {}
    for record in records:
        lag = regions.setdefault(record.destination_region, RegionLag(record.destination_region))
        lag.pending += 1
        created = record.created_at.ToDatetime(tzinfo=dt.UTC)
        if lag.oldest is None or created < lag.oldest:
            lag.oldest = created
            lag.lag = max(dt.timedelta(), now - created)
    return sorted(regions.values(), key=lambda r: r.lag, reverse=True)


async def page(request: web.Request) -> web.Response:
    api = cw.api(request)
    now = cw.console_of(request).app.clock.now()
    (vaults, vaults_err), (unprotected, unprotected_err), \
        (failures, failures_err), (pending, pending_err) = await asyncio.gather(
            _section(api(api.stubs.vaults.ListVaults, vault_pb2.ListVaultsRequest(page_size=PAGE))),
            _section(api(api.stubs.protectables.ListProtectables,
                         protectable_pb2.ListProtectablesRequest(page_size=PAGE,
                                                                 protection="unprotected"))),
            _section(_failures(api, now - FAILURE_WINDOW)),
            _section(_pending_replication(api)))
    protected = [Protected(v, r) for v in (vaults.vaults if vaults else ()) for r in v.resources]
    return cw.render(
        request, "overview.html", since=now - FAILURE_WINDOW, page_size=PAGE,
        vaults=vaults.vaults if vaults else [], vaults_error=vaults_err,
        protected=protected,
        unprotected=unprotected.protectables if unprotected else [],
        unprotected_total=unprotected.total_count if unprotected else 0,
        unprotected_error=unprotected_err,
        failures=failures[0] if failures else [], failures_total=failures[1] if failures else 0,
        failures_error=failures_err,
        lags=lag_by_region(pending[0], now) if pending else [],
        pending_truncated=bool(pending and pending[1]), pending_error=pending_err)

