"""Replication records: the list with the API's filters, and one record.

Both clouds keep a record of each replication: the source's names its own
backup and vault, the target's (written when it accepted the import) names
the replica and the replication vault it landed in, with the same vault as
``vault_id`` and ``destination_vault_id``. Each console lists its own
cloud's records, and links the ids that are backups of this cloud.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from cbr.v1 import replication_pb2, vault_pb2
from console import web as cw
from console.views.backups import PAGE_SIZE, choice_number, enum_choices, page_size_of

STATUSES = enum_choices(replication_pb2.ReplicationStatus.DESCRIPTOR, "REPLICATION_STATUS_")


@dataclass(frozen=True)
class Row:
    """A record as this cloud sees it: on its source or its target side."""

    record: replication_pb2.ReplicationRecord

    @property
    def on_target(self) -> bool:
        return self.record.vault_id == self.record.destination_vault_id

    @property
    def local_backup_id(self) -> str:
        """The id of the record's backup that is in this cloud's catalog."""
        return (self.record.destination_backup_id if self.on_target
                else self.record.source_backup_id)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/replication", list_page)
    app.router.add_get("/replication/{record_id}", detail_page)


async def list_page(request: web.Request) -> web.Response:
    api = cw.api(request)
    q = request.query
    filters = {name: q.get(name, "").strip() for name in
               ("vault_id", "source_backup_id", "destination_region", "status")}
    size = page_size_of(q)
    listed = await api(api.stubs.replication.ListReplicationRecords,
                       replication_pb2.ListReplicationRecordsRequest(
                           page_size=size, page_token=q.get("page_token", ""),
                           vault_id=filters["vault_id"],
                           source_backup_id=filters["source_backup_id"],
                           destination_region=filters["destination_region"],
                           status=choice_number(  # type: ignore[arg-type]
                               STATUSES, filters["status"]), newest_first=True))
    vault_names: dict[str, str] = {}
    if not cw.missing(request, "VaultService/ListVaults"):
        vaults = await api(api.stubs.vaults.ListVaults, vault_pb2.ListVaultsRequest(
            page_size=1000))
        vault_names = {v.id: v.name for v in vaults.vaults}
    kept = {k: v for k, v in filters.items() if v}
    if size != PAGE_SIZE:
        kept["page_size"] = str(size)
    return cw.render(request, "replication.html",
                     rows=[Row(r) for r in listed.replication_records],
                     total=listed.total_count, next_page_token=listed.next_page_token,
                     first_page=not q.get("page_token", ""), filters=filters, kept=kept,
                     statuses=STATUSES, vault_names=vault_names)


async def detail_page(request: web.Request) -> web.Response:
    api = cw.api(request)
    record = (await api(api.stubs.replication.GetReplicationRecord,
                        replication_pb2.GetReplicationRecordRequest(
                            replication_record_id=request.match_info["record_id"]))
              ).replication_record
    return cw.render(request, "replication_record.html", row=Row(record), r=record,
                     task_id=request.query.get("task", ""))
