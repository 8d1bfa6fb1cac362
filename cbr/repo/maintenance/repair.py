"""Repairing a damaged vault (``docs/storage-format.md`` section 13.1).

Damage must cost only what it destroyed. Repair reads every pack once,
copies every blob that still verifies out of damaged packs, indexes every
sound pack no readable index file lists, drops damaged and missing packs
from the index files, deletes the damaged packs, and then checks which
backups still reach data that is gone. Chunks lost that way are in no index
afterwards, so the next backup holding them stores them again, and every
backup that reaches them is whole again (the vault heals).

This module owns that procedure. It runs under the prune lock, so it never
races prune or another repair, while backups keep running: it only adds
packs and index files, rewrites index files new-first, and deletes only
packs that no longer verify. It never deletes a manifest; which backups are
damaged is reported, and marking them is the catalog's business.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cbr.repo import layout
from cbr.repo.content.blob import EncodedBlob
from cbr.repo.content.index import Index
from cbr.repo.content.pack import PackEntry
from cbr.repo.errors import FormatError, IntegrityError
from cbr.repo.maintenance.locks import LOCK_REFRESH, LOCK_STALE, Lock
from cbr.repo.maintenance.prune import ABANDONED_AFTER
from cbr.repo.maintenance.verify import PackCheck, check_pack, verify
from cbr.repo.repository import Repository
from cbr.storage import ObjectInfo, ObjectNotFound

LIST_LIMIT = 100
"""How many ids a report lists per kind (counts are always whole)."""


@dataclass
class RepairReport:
    dry_run: bool = False
    packs_read: int = 0
    bytes_read: int = 0
    damaged_packs: list[str] = field(default_factory=list)
    missing_packs: list[str] = field(default_factory=list)
    damaged_index_files: list[str] = field(default_factory=list)
    blobs_salvaged: int = 0
    chunks_lost: int = 0
    """Distinct chunks whose every copy was damaged or missing."""
    packs_reindexed: int = 0
    index_files_written: int = 0
    index_files_deleted: int = 0
    packs_deleted: int = 0
    bytes_deleted: int = 0
    abandoned_writes: int = 0
    abandoned_bytes: int = 0
    backups_checked: set[str] = field(default_factory=set)
    damaged_backups: list[str] = field(default_factory=list)
    damage: dict[str, str] = field(default_factory=dict)
    """Per damaged backup, what is wrong with it (verify's first finding)."""
    problems: list[str] = field(default_factory=list)
    """What verify still finds afterwards (data that is gone), first ones."""
    problem_count: int = 0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "packs_read": self.packs_read,
                "bytes_read": self.bytes_read,
                "damaged_packs": ",".join(self.damaged_packs[:LIST_LIMIT]),
                "damaged_pack_count": len(self.damaged_packs),
                "missing_packs": ",".join(self.missing_packs[:LIST_LIMIT]),
                "missing_pack_count": len(self.missing_packs),
                "damaged_index_files": ",".join(self.damaged_index_files[:LIST_LIMIT]),
                "blobs_salvaged": self.blobs_salvaged, "chunks_lost": self.chunks_lost,
                "packs_reindexed": self.packs_reindexed,
                "index_files_written": self.index_files_written,
                "index_files_deleted": self.index_files_deleted,
                "packs_deleted": self.packs_deleted, "bytes_deleted": self.bytes_deleted,
                "abandoned_writes_removed": self.abandoned_writes,
                "abandoned_bytes_freed": self.abandoned_bytes,
                "backups_checked": len(self.backups_checked),
                "damaged_backups": ",".join(self.damaged_backups),
                "problems": self.problem_count,
                "first_problems": "; ".join(self.problems[:10]),
                "notes": "; ".join(self.notes[:20])}


def repair(repo: Repository, *, dry_run: bool = False, task_id: str = "",
           expected_manifests: Mapping[str, str] | None = None,
           stale: dt.timedelta = LOCK_STALE,
           refresh: dt.timedelta = LOCK_REFRESH) -> RepairReport:
    """Repairs the vault (section 13.1) and reports which backups are still
    damaged; ``dry_run`` reports the same without writing anything.

    Raises :class:`cbr.repo.maintenance.locks.LockConflict` when a prune or another
    repair runs; storage errors propagate (nothing half-done is left: every
    write is new-first).
    """
    report = RepairReport(dry_run=dry_run)
    with Lock.acquire(repo.backend, kind="prune", task_id=task_id, stale=stale,
                      refresh=refresh) as lock:
        # 1. index files, remembering which file lists which pack.
        files_of: dict[bytes, list[bytes]] = {}
        index = Index()
        damaged_files: list[bytes] = []
        for index_id in repo.list_index_files():
            try:
                described = repo.read_index_file(index_id)
            except (IntegrityError, FormatError) as exc:
                damaged_files.append(index_id)
                report.notes.append(f"{layout.index_name(index_id)} is damaged ({exc})")
                continue
            except ObjectNotFound:
                continue  # rewritten by a writer's flush meanwhile
            for pack_id, entries in described:
                files_of.setdefault(pack_id, []).append(index_id)
                index.add_pack(pack_id, entries, bulk=True)
        index.compact()
        report.damaged_index_files = [i.hex() for i in damaged_files]
        # 2. every stored pack, read once. ``after`` is the index as it will be.
        stored = {pid: info for info in repo.backend.list(layout.DATA)
                  if (pid := layout.id_from_name(info.name, layout.DATA)) is not None}
        indexed = index.pack_ids()
        after = Index()
        unindexed: list[tuple[bytes, list[PackEntry]]] = []
        damaged: dict[bytes, ObjectInfo] = {}
        bad_chunks: set[tuple[bytes, bytes]] = set()
        lost_headers: list[bytes] = []
        for pack_id in sorted(stored):
            check = _read(repo, report, pack_id)
            if check is None:
                continue
            if check.header is None:
                lost_headers.append(pack_id)  # checked again below, by the index
                damaged[pack_id] = stored[pack_id]
                continue
            _take(repo, report, check, after, bad_chunks, damaged, stored, dry_run)
            if check.sound and pack_id not in indexed:
                unindexed.append((pack_id, check.header))
        if lost_headers:
            fallback = _index_entries(index, set(lost_headers))
            for pack_id in lost_headers:
                check = _read(repo, report, pack_id, fallback.get(pack_id, []), count=False)
                if check is not None:
                    _take(repo, report, check, after, bad_chunks, damaged, stored, dry_run)
        if dry_run:
            for pack_id, entries in unindexed:
                after.add_pack(pack_id, entries, bulk=True)
        missing = sorted(p for p in indexed if p not in stored)
        report.damaged_packs = [p.hex() for p in sorted(damaged)]
        report.missing_packs = [p.hex() for p in missing]
        report.packs_reindexed = len(unindexed)
        if not dry_run:
            lock.check()
            repo.flush()  # the salvaged copies are stored and indexed first
            _rewrite_index(repo, report, lock, files_of, damaged_files, unindexed,
                           set(damaged) | set(missing))
            _delete_damaged(repo, report, lock, damaged)
            report.abandoned_writes, report.abandoned_bytes = \
                repo.backend.remove_abandoned_writes(ABANDONED_AFTER.total_seconds())
            repo.load_index()
        else:
            # What the index will hold: every blob that verifies, where it is now.
            for key_id, chunk_id, loc in index.entries():
                if loc.pack_id in stored and loc.pack_id not in damaged:
                    after.add_pack(loc.pack_id, [PackEntry(
                        loc.type, key_id, chunk_id, loc.offset, loc.stored_length,
                        loc.raw_length, loc.flags)], bulk=True)
            after.compact()
            repo.index = after
            repo.damaged_index_files = {}
            report.abandoned_writes, report.abandoned_bytes = \
                repo.backend.remove_abandoned_writes(ABANDONED_AFTER.total_seconds(),
                                                     dry_run=True)
        report.chunks_lost = sum(1 for k in bad_chunks if not repo.index.contains(*k))
        # 6. which backups still reach data that is gone.
        checked = verify(repo, expected_manifests=expected_manifests, load_index=False)
    report.backups_checked = checked.checked_backups
    report.damaged_backups = checked.damaged_backups
    report.damage = {b: checked.reasons.get(b, "damaged") for b in checked.damaged_backups}
    report.problem_count = len(checked.problems)
    report.problems = [str(p) for p in checked.problems[:LIST_LIMIT]]
    return report


def _read(repo: Repository, report: RepairReport, pack_id: bytes,
          fallback: list[PackEntry] | None = None, *, count: bool = True) -> PackCheck | None:
    try:
        data = repo.backend.get(layout.pack_name(pack_id))
    except ObjectNotFound:
        return None  # only a writer's crash undone can take a pack away now
    if count:
        report.packs_read += 1
        report.bytes_read += len(data)
    return check_pack(repo, pack_id, data, fallback or ())


def _take(repo: Repository, report: RepairReport, check: PackCheck, after: Index,
          bad_chunks: set[tuple[bytes, bytes]], damaged: dict[bytes, ObjectInfo],
          stored: dict[bytes, ObjectInfo], dry_run: bool) -> None:
    """Files what one pack holds: a sound pack as it is; from a damaged one,
    the blobs that verify are salvaged (copied as stored into new packs)."""
    pack_id = check.pack_id
    if check.sound:
        return
    damaged.setdefault(pack_id, stored[pack_id])
    for entry, error in check.blobs:
        if error:
            bad_chunks.add((entry.key_id, entry.chunk_id))
            continue
        report.blobs_salvaged += 1
        if dry_run:
            after.add_pack(pack_id, [entry], bulk=True)
            continue
        stored_bytes = check.data[entry.offset:entry.offset + entry.stored_length]
        repo.repack_blob(EncodedBlob(entry.type, entry.key_id, entry.chunk_id, stored_bytes,
                                     entry.flags, entry.raw_length))


def _index_entries(index: Index, packs: set[bytes]) -> dict[bytes, list[PackEntry]]:
    """Where the index says the blobs of ``packs`` are (their headers are lost)."""
    found: dict[bytes, list[PackEntry]] = {}
    for key_id, chunk_id, loc in index.entries():
        if loc.pack_id in packs:
            found.setdefault(loc.pack_id, []).append(PackEntry(
                loc.type, key_id, chunk_id, loc.offset, loc.stored_length, loc.raw_length,
                loc.flags))
    for entries in found.values():
        entries.sort(key=lambda e: e.offset)
    return found


def _rewrite_index(repo: Repository, report: RepairReport, lock: Lock,
                   files_of: dict[bytes, list[bytes]], damaged_files: list[bytes],
                   unindexed: list[tuple[bytes, list[PackEntry]]], gone: set[bytes]) -> None:
    """New index files for the sound unindexed packs and for the surviving
    packs of every file that lists a gone pack; then the old files go."""
    affected = sorted({f for p in gone for f in files_of.get(p, ())})
    survivors: dict[bytes, list[PackEntry]] = dict(unindexed)
    for index_id in affected:
        for pack_id, entries in repo.read_index_file(index_id):
            if pack_id not in gone:
                survivors.setdefault(pack_id, entries)
    lock.check()
    written = set(repo.write_index_files(survivors.items())) if survivors else set()
    report.index_files_written += len(written)
    for index_id in [*affected, *damaged_files]:
        if index_id in written:
            continue  # the very same file again, now whole
        lock.check()
        repo.backend.delete(layout.index_name(index_id))
        report.index_files_deleted += 1


def _delete_damaged(repo: Repository, report: RepairReport, lock: Lock,
                    damaged: dict[bytes, ObjectInfo]) -> None:
    """Deletes the damaged packs that are still damaged: in an unencrypted
    vault packs are deterministic, so the salvage (or a writer) may have made
    the very same pack again, whole."""
    for pack_id, info in sorted(damaged.items()):
        name = layout.pack_name(pack_id)
        try:
            again = check_pack(repo, pack_id, repo.backend.get(name))
        except ObjectNotFound:
            continue
        if again.sound:
            report.notes.append(f"pack {pack_id.hex()} was written whole again")
            continue
        lock.check()
        repo.backend.delete(name)
        report.packs_deleted += 1
        report.bytes_deleted += info.size
