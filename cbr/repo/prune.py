"""Deleting backups and freeing their space (``docs/storage-format.md`` section 12).

Deleting a backup removes its manifests at once; the space is freed by
prune, in two phases so that it is safe while backups run:

- *mark* (under the prune lock): find every chunk reachable from every
  finished backup, condemn the packs holding no live chunk (and packs in no
  index), rewrite the index files that mention them (new files first), then
  record which other locks are live *after* that rewrite;
- *sweep*: once every recorded lock is gone or stale, reload manifests and
  the index; a condemned pack that a newer manifest reaches, or that was
  indexed by a backup that finished meanwhile, is kept (and re-indexed if
  needed); the rest are deleted.

A crash anywhere leaves the old state, duplicates in the index, or a
``condemned/`` record that the next prune sweeps again.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
from dataclasses import dataclass, field
from typing import Any

from cbr.repo import layout
from cbr.repo.envelope import INDEX_MAGIC, seal_envelope
from cbr.repo.errors import FormatError
from cbr.repo.ids import object_id
from cbr.repo.index import encode_index
from cbr.repo.locks import LOCK_STALE, Lock, list_locks, storage_now
from cbr.repo.pack import PackEntry
from cbr.repo.repository import Repository
from cbr.repo.walk import complete_manifests, iter_reachable
from cbr.storage import ObjectNotFound


@dataclass
class PruneReport:
    backups: int = 0
    live_chunks: int = 0
    packs_condemned: int = 0
    packs_deleted: int = 0
    packs_resurrected: int = 0
    bytes_freed: int = 0
    index_files_rewritten: int = 0
    pending_sweeps: int = 0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"backups_kept": self.backups, "live_chunks": self.live_chunks,
                "packs_condemned": self.packs_condemned, "packs_deleted": self.packs_deleted,
                "packs_resurrected": self.packs_resurrected, "bytes_freed": self.bytes_freed,
                "index_files_rewritten": self.index_files_rewritten,
                "pending_sweeps": self.pending_sweeps}


def delete_backup(repo: Repository, backup_id: str) -> list[str]:
    """Removes a backup's manifests (a server's disks first, so a crash in
    between leaves disk manifests that prune treats as unfinished)."""
    deleted = []
    try:
        manifest = repo.load_manifest(backup_id)
        children = list(manifest.children)
    except Exception:  # already gone, or unreadable: remove what is there
        children = []
    for name in [*children, backup_id]:
        repo.backend.delete(layout.manifest_name(name))
        deleted.append(name)
    return deleted


def _live_set(repo: Repository) -> tuple[set[tuple[bytes, bytes]], int]:
    live: set[tuple[bytes, bytes]] = set()
    manifests, _unfinished = complete_manifests(repo)
    seen: dict[bytes, set[bytes]] = {}
    for m in manifests:
        trees = seen.setdefault(m.chunk_key_id, set())
        for _kind, cid in iter_reachable(repo, m, trees):
            live.add((m.chunk_key_id, cid))
    return live, len(manifests)


def prune(repo: Repository, *, task_id: str = "", stale: dt.timedelta = LOCK_STALE,
          now: dt.datetime | None = None) -> PruneReport:
    """One prune run: sweep what earlier marks condemned (when their locks
    allow), then mark, then sweep at once if no other writer is live."""
    report = PruneReport()
    with Lock.acquire(repo.backend, kind="prune", task_id=task_id, stale=stale) as lock:
        _sweep_all(repo, lock, report, stale)
        prune_id = _mark(repo, lock, report, stale)
        if prune_id is not None:
            _sweep_all(repo, lock, report, stale)
    return report


def _mark(repo: Repository, lock: Lock, report: PruneReport,
          stale: dt.timedelta) -> str | None:
    repo.load_index()
    live, report.backups = _live_set(repo)
    report.live_chunks = len(live)
    pack_live: dict[bytes, bool] = {}
    pack_bytes: dict[bytes, int] = {}
    for key_id, cid, loc in repo.index.entries():
        alive = (key_id, cid) in live
        pack_live[loc.pack_id] = pack_live.get(loc.pack_id, False) or alive
        pack_bytes[loc.pack_id] = pack_bytes.get(loc.pack_id, 0) + loc.stored_length
    stored = {p: 0 for p in repo.list_packs()}
    condemned = {p for p, alive in pack_live.items() if not alive and p in stored}
    unindexed = {p for p in stored if p not in pack_live}
    condemned |= unindexed
    if not condemned:
        return None
    prune_id = secrets.token_hex(16)
    record: dict[str, Any] = {"prune_id": prune_id, "packs": sorted(p.hex() for p in condemned),
                              "created_at": dt.datetime.now(dt.UTC).isoformat(), "locks": []}
    name = layout.CONDEMNED + prune_id
    repo.backend.put(name, json.dumps(record).encode())
    # New index files first (everything they held but the condemned packs), then
    # the old ones go: a crash between leaves duplicates, never a gap.
    for index_id in repo.list_index_files():
        packs = repo._read_index_file(index_id)
        if not any(p in condemned for p, _ in packs):
            continue
        keep: list[tuple[bytes, list[PackEntry]]] = [(p, e) for p, e in packs
                                                     if p not in condemned]
        if keep:
            data = seal_envelope(INDEX_MAGIC, encode_index(keep), repo._data_key)
            repo.backend.put(layout.index_name(object_id(data)), data)
        repo.backend.delete(layout.index_name(index_id))
        report.index_files_rewritten += 1
    # Listed only now: any writer that could have seen a condemned pack in an
    # index wrote its lock before loading that index, so it is in this list.
    now = storage_now(repo.backend)
    record["locks"] = [x.lock_id for x in list_locks(repo.backend)
                       if x.lock_id != lock.lock_id and now - x.mtime < stale]
    repo.backend.put(name, json.dumps(record).encode())
    report.packs_condemned += len(condemned)
    return prune_id


def _sweep_all(repo: Repository, lock: Lock, report: PruneReport,
               stale: dt.timedelta) -> None:
    names = [info.name for info in repo.backend.list(layout.CONDEMNED)]
    if not names:
        return
    now = storage_now(repo.backend)
    live_ids = {x.lock_id for x in list_locks(repo.backend) if now - x.mtime < stale}
    ready: list[tuple[str, dict[str, Any]]] = []
    for name in names:
        try:
            record = json.loads(repo.backend.get(name))
        except (ObjectNotFound, ValueError):
            continue
        if any(lock_id in live_ids for lock_id in record.get("locks", [])):
            report.pending_sweeps += 1
            continue
        ready.append((name, record))
    if not ready:
        return
    repo.load_index()
    indexed = repo.index.pack_ids()
    live, _ = _live_set_tolerant(repo)
    for name, record in ready:
        for pack_hex in record.get("packs", []):
            pack_id = bytes.fromhex(pack_hex)
            if pack_id in indexed:
                continue  # a writer that was running at the mark indexed it since
            pack_name = layout.pack_name(pack_id)
            try:
                size = repo.backend.stat(pack_name).size
            except ObjectNotFound:
                continue
            try:
                entries = repo.read_pack_header(pack_id)
            except FormatError:
                entries = []  # a torn upload: nothing in it can be referenced
            if any((e.key_id, e.chunk_id) in live for e in entries):
                # Resurrection: a backup that started before the mark reuses it.
                data = seal_envelope(INDEX_MAGIC, encode_index([(pack_id, entries)]),
                                     repo._data_key)
                repo.backend.put(layout.index_name(object_id(data)), data)
                report.packs_resurrected += 1
                continue
            repo.backend.delete(pack_name)
            report.packs_deleted += 1
            report.bytes_freed += size
        repo.backend.delete(name)


def _live_set_tolerant(repo: Repository) -> tuple[set[tuple[bytes, bytes]], int]:
    """The live set for a sweep: chunks a manifest reaches whose blobs are
    in a condemned pack cannot be loaded through the index, so metadata is
    read straight from pack headers when the index no longer has it."""
    try:
        return _live_set(repo)
    except Exception:
        # Resurrect conservatively: index every unindexed pack before deciding.
        for pack_id in repo.list_unindexed_packs():
            try:
                repo.index.add_pack(pack_id, repo.read_pack_header(pack_id))
            except FormatError:
                continue
        return _live_set(repo)
