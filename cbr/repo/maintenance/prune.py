"""Deleting backups and freeing their space (``docs/storage-format.md`` section 12).

Deleting a backup removes its manifests at once; the space is freed by
prune, in two phases so that it is safe while backups run:

- *mark* (under the prune lock): find every chunk reachable from every
  finished backup, copy the live blobs of mostly-dead packs into new packs
  (stored and indexed first), condemn the packs holding no live chunk, the
  repacked ones and the packs in no index, rewrite the index files that
  mention them (new files first), then record which other locks are live
  *after* that rewrite;
- *sweep*: once every recorded lock is gone or stale, reload manifests and
  the index; a condemned pack that a manifest reaches now, or that a backup
  which finished meanwhile indexed, is kept (and re-indexed if needed); the
  rest are deleted.

A crash anywhere leaves the old state, duplicates in the index, or a
``condemned/`` record that the next prune sweeps again (or, when the crash
came before the record was complete, drops without deleting anything).

This module owns that protocol. It must not be run without the prune lock
(:func:`prune` takes it) and never deletes a manifest except in
:func:`delete_backup` and :func:`erase_vault` (a whole vault, deleted).
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from cbr.clock import utc_now
from cbr.repo import layout
from cbr.repo.content.blob import EncodedBlob
from cbr.repo.content.ids import KEY_ID_SIZE
from cbr.repo.content.index import Index, Location
from cbr.repo.content.pack import PackEntry
from cbr.repo.errors import FormatError, IntegrityError, ManifestNotFound, RepoError
from cbr.repo.maintenance.locks import LOCK_REFRESH, LOCK_STALE, Lock, is_lock_name, live_locks
from cbr.repo.maintenance.walk import complete_manifests, iter_reachable
from cbr.repo.repository import Repository
from cbr.storage import Backend, ObjectNotFound

ABANDONED_AFTER = 2 * LOCK_STALE
"""A write unfinished for this long was left by a killed writer (section 12)."""
# condemned/<prune-id>: this many random bytes, as hex (storage format section 2).
PRUNE_ID_SIZE = 16
REPACK_DEAD_FRACTION = 0.25
"""A pack with live blobs is repacked when more than this share of its blob
bytes is dead: copying a quarter-dead 16 MiB pack costs one read and 12 MiB
of upload to free 4 MiB; below that, copying costs more than it frees."""

SWEEP_POLL_SECONDS = 5.0
"""How often a sweep told to wait looks at the locks again."""


@dataclass
class PruneReport:
    """What one prune run did. Blob counts are distinct chunk ids."""

    backups: int = 0
    backups_unfinished: int = 0
    live_blobs: int = 0
    dead_blobs: int = 0
    packs_condemned: int = 0
    packs_repacked: int = 0
    bytes_repacked: int = 0
    packs_reindexed: int = 0
    packs_deleted: int = 0
    packs_resurrected: int = 0
    bytes_freed: int = 0
    index_files_rewritten: int = 0
    pending_sweeps: int = 0
    index_files_repaired: int = 0
    abandoned_writes: int = 0
    abandoned_bytes: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def live_chunks(self) -> int:
        return self.live_blobs

    def to_dict(self) -> dict[str, Any]:
        return {"backups_kept": self.backups, "backups_unfinished": self.backups_unfinished,
                "live_chunks": self.live_blobs, "dead_chunks": self.dead_blobs,
                "packs_condemned": self.packs_condemned, "packs_deleted": self.packs_deleted,
                "packs_repacked": self.packs_repacked, "bytes_repacked": self.bytes_repacked,
                "packs_reindexed": self.packs_reindexed,
                "packs_resurrected": self.packs_resurrected, "bytes_freed": self.bytes_freed,
                "index_files_rewritten": self.index_files_rewritten,
                "pending_sweeps": self.pending_sweeps,
                "index_files_repaired": self.index_files_repaired,
                "abandoned_writes_removed": self.abandoned_writes,
                "abandoned_bytes_freed": self.abandoned_bytes}


# -- deleting a backup ------------------------------------------------------------------------


def delete_backup(repo: Repository, backup_id: str) -> list[str]:
    """Removes a backup's manifest and, for a server backup, its disks'
    manifests; returns the ids deleted (or already gone). Idempotent.

    The disks go first and the server manifest last, so a crash in between
    leaves the server manifest that still names them and a second call
    finishes the job. Frees no space by itself: prune does, safely.
    """
    try:
        children = list(repo.load_manifest(backup_id).children)
    except ManifestNotFound:
        children = []
    except RepoError:
        children = []  # unreadable: nothing names its disks; what is named goes
    for name in [*children, backup_id]:
        repo.backend.delete(layout.manifest_name(name))
    return [*children, backup_id]


# -- deleting a vault -------------------------------------------------------------------------


def erase_vault(backend: Backend) -> tuple[int, int]:
    """Deletes every object of the vault's storage whose name this format
    defines (section 12, deleting a vault): manifests first, ``config``
    last; returns how many objects and their bytes. Idempotent; a foreign
    object stays. Only for a vault nothing reads or writes any more."""
    store = layout.sharded(backend)
    count = size = 0
    for prefix, ok in ((layout.MANIFESTS, _is_manifest),
                       (layout.DATA, lambda n: layout.id_from_name(n, layout.DATA) is not None),
                       (layout.INDEX, lambda n: layout.id_from_name(n, layout.INDEX)
                        is not None),
                       (layout.CONDEMNED, lambda n: layout.id_from_name(
                           n, layout.CONDEMNED, PRUNE_ID_SIZE) is not None),
                       (layout.LOCKS, is_lock_name),
                       (layout.KEYS, lambda n: layout.id_from_name(n, layout.KEYS, KEY_ID_SIZE)
                        is not None)):
        for info in list(store.list(prefix)):
            if ok(info.name):
                store.delete(info.name)
                count += 1
                size += info.size
    try:
        config = store.stat(layout.CONFIG)
    except ObjectNotFound:
        return count, size
    store.delete(layout.CONFIG)
    return count + 1, size + config.size


def _is_manifest(name: str) -> bool:
    try:
        return layout.manifest_name(name[len(layout.MANIFESTS):]) == name
    except ValueError:
        return False


# -- the live set -----------------------------------------------------------------------------


class _Unindexed:
    """Headers of stored packs that no index lists, read on first need.

    Prune must read metadata blobs that only such packs hold (a condemned
    pack a manifest reaches again) and find which of them hold live chunks.
    """

    def __init__(self, repo: Repository, pack_ids: Iterable[bytes]) -> None:
        self._repo = repo
        self._pack_ids = list(pack_ids)
        self._index: Index | None = None
        self.entries: dict[bytes, list[PackEntry]] = {}
        self.unreadable: set[bytes] = set()
        """Packs whose header does not read: damaged, left for repair."""

    def _load(self) -> Index:
        if self._index is None:
            index = Index()
            for pack_id in self._pack_ids:
                try:
                    entries = self._repo.read_pack_header(pack_id)
                except ObjectNotFound:
                    continue
                except (FormatError, IntegrityError):
                    self.unreadable.add(pack_id)
                    continue
                self.entries[pack_id] = entries
                index.add_pack(pack_id, entries)
            self._index = index
        return self._index

    def lookup(self, key_id: bytes, chunk_id: bytes) -> Location | None:
        return self._load().lookup(key_id, chunk_id) if self._pack_ids else None

    def damaged(self) -> set[bytes]:
        """The packs whose header does not read (every header read once)."""
        if self._pack_ids:
            self._load()
        return self.unreadable


@dataclass
class _LiveSet:
    chunks: dict[bytes, set[bytes]]
    """Live chunk ids per namespace."""
    unindexed_live: dict[bytes, list[PackEntry]]
    """Packs in no index that hold a live chunk the index lacks (to re-index)."""
    backups: int
    unfinished: int


def _live_set(repo: Repository, unindexed: _Unindexed, report: PruneReport) -> _LiveSet:
    """Walks every finished backup. A chunk missing from the loaded index is
    looked for in the unindexed packs. A metadata blob found nowhere stops
    prune (what it reaches is unknown, so nothing could be called dead); a
    data chunk found nowhere is only noted (nothing is left to lose)."""
    try:
        manifests, skipped = complete_manifests(repo)
    except (IntegrityError, FormatError) as exc:
        raise RepoError(f"{exc}; prune stops, since what that backup reaches is unknown "
                        "(cbr vault repair marks it damaged; deleting it lets prune run)"
                        ) from exc
    chunks: dict[bytes, set[bytes]] = {}
    revive: dict[bytes, list[PackEntry]] = {}
    lost = 0

    def locate(key_id: bytes, chunk_id: bytes) -> Location | None:
        """None when the index has the chunk (or nothing has it)."""
        if repo.index.contains(key_id, chunk_id):
            return None
        loc = unindexed.lookup(key_id, chunk_id)
        if loc is not None:
            revive[loc.pack_id] = unindexed.entries[loc.pack_id]
        return loc

    def load(key_id: bytes, chunk_id: bytes) -> bytes:
        loc = locate(key_id, chunk_id)
        if loc is None:
            return repo.load_blob(chunk_id, key_id=key_id)
        return repo.load_blob_at(loc, chunk_id, key_id=key_id)

    lost_meta: set[bytes] = set()
    for manifest in manifests:
        live = chunks.setdefault(manifest.chunk_key_id, set())
        seen: set[bytes] = set()
        try:
            # A metadata blob found nowhere is lost with all it reached: no
            # one can find that any more, so the walk goes on (section 12).
            for _kind, cid in iter_reachable(repo, manifest, seen, load=load,
                                             on_lost=lost_meta.add):
                if cid in live:
                    continue
                live.add(cid)
                if (locate(manifest.chunk_key_id, cid) is None
                        and not repo.index.contains(manifest.chunk_key_id, cid)):
                    lost += 1
        except (IntegrityError, FormatError) as exc:
            raise RepoError(f"backup {manifest.backup_id}: {exc}; prune stops (cbr vault "
                            "repair VAULT_ID removes the damaged data)") from exc
    if lost:
        report.notes.append(f"{lost} chunks reached by backups are in no pack (cbr vault "
                            "verify names the backups)")
    return _LiveSet(chunks, revive, len(manifests), len(skipped))


# -- prune ------------------------------------------------------------------------------------


def prune(repo: Repository, *, task_id: str = "", stale: dt.timedelta = LOCK_STALE,
          refresh: dt.timedelta = LOCK_REFRESH,
          repack_dead_fraction: float = REPACK_DEAD_FRACTION,
          sweep_wait: float = 0.0, poll: float = SWEEP_POLL_SECONDS) -> PruneReport:
    """One prune run under the prune lock: sweep what earlier marks condemned
    (when their locks allow), mark, then sweep again (its own record at once
    when no other lock was live, else after waiting up to ``sweep_wait``
    seconds for the recorded locks; what is still waiting is reported as
    ``pending_sweeps`` for a later run).

    Raises :class:`cbr.repo.maintenance.locks.LockConflict` when another prune runs.
    """
    report = PruneReport()
    with Lock.acquire(repo.backend, kind="prune", task_id=task_id, stale=stale,
                      refresh=refresh) as lock:
        _sweep(repo, lock, report, stale, wait=0.0, poll=poll)
        _mark(repo, lock, report, stale, repack_dead_fraction)
        report.pending_sweeps = _sweep(repo, lock, report, stale, wait=sweep_wait, poll=poll)
        lock.check()
        report.abandoned_writes, report.abandoned_bytes = \
            repo.backend.remove_abandoned_writes(ABANDONED_AFTER.total_seconds())
        if report.abandoned_writes:
            report.notes.append(f"removed {report.abandoned_writes} writes killed writers left "
                                f"unfinished ({report.abandoned_bytes} bytes)")
    return report


def _mark(repo: Repository, lock: Lock, report: PruneReport, stale: dt.timedelta,
          repack_dead_fraction: float) -> str | None:
    """Mark steps 1-6; returns the new record's id (None: nothing to condemn)."""
    marked_at = lock.storage_time()
    # 1. index files (remembering which file lists which pack), packs, manifests.
    index_files = repo.list_index_files()
    index = Index()
    files_of: dict[bytes, list[int]] = {}
    pack_bytes: dict[bytes, int] = {}
    damaged: list[bytes] = []
    for ordinal, index_id in enumerate(index_files):
        try:
            described = repo.read_index_file(index_id)
        except (IntegrityError, FormatError) as exc:
            # Its packs are unindexed from here on: the live ones are indexed
            # again below from their headers, the dead ones condemned (section 7).
            damaged.append(index_id)
            report.notes.append(f"index file {layout.index_name(index_id)} is damaged ({exc})")
            continue
        for pack_id, entries in described:
            files_of.setdefault(pack_id, []).append(ordinal)
            pack_bytes[pack_id] = sum(e.stored_length for e in entries)
            index.add_pack(pack_id, entries, bulk=True)
    index.compact()
    repo.index = index
    stored = {pid: info.size for info in repo.backend.list(layout.DATA)
              if (pid := layout.id_from_name(info.name, layout.DATA)) is not None}
    unindexed_ids = [p for p in stored if p not in pack_bytes]
    # 2. the live set; unindexed packs holding live chunks are indexed again
    # (recover, under the prune lock: section 11), not condemned.
    unindexed = _Unindexed(repo, unindexed_ids)
    live = _live_set(repo, unindexed, report)
    report.backups, report.backups_unfinished = live.backups, live.unfinished
    rewritten: set[bytes] = set()
    if live.unindexed_live:
        lock.check()
        rewritten.update(repo.index_packs(live.unindexed_live.items()))
        report.packs_reindexed += len(live.unindexed_live)
        report.notes.append(f"re-indexed {len(live.unindexed_live)} packs holding live chunks")
    for index_id in damaged:  # what it described that lives is in a new index file now
        lock.check()
        if index_id not in rewritten:  # the same packs again: the very same name, now whole
            repo.backend.delete(layout.index_name(index_id))
        report.index_files_repaired += 1
    # 3. liveness per pack, by the one location the index keeps per chunk
    # (a pack holding only duplicates of blobs kept elsewhere counts as dead).
    live_bytes: dict[bytes, int] = {}
    for key_id, cid, loc in repo.index.entries():
        if cid in live.chunks.get(key_id, ()):
            live_bytes[loc.pack_id] = live_bytes.get(loc.pack_id, 0) + loc.stored_length
            report.live_blobs += 1
        else:
            report.dead_blobs += 1
    condemned = {p for p in pack_bytes if p in stored and p not in live_bytes}
    # A pack whose header does not read may still hold blobs repair can save.
    unreadable = unindexed.damaged()
    if unreadable:
        report.notes.append(f"{len(unreadable)} packs in no index have a damaged header; "
                            "left for cbr vault repair")
    condemned |= {p for p in unindexed_ids
                  if p not in live.unindexed_live and p not in unreadable}
    missing = [p for p in live_bytes if p not in stored]
    if missing:
        report.notes.append(f"{len(missing)} indexed packs with live chunks are missing "
                            "(run verify)")
    repack = {p for p, n in live_bytes.items()
              if p in stored and pack_bytes.get(p, 0) > 0
              and 1 - n / pack_bytes[p] > repack_dead_fraction}
    condemned |= _repack(repo, lock, report, live.chunks, repack)
    if not condemned:
        return None
    # 4. the record, incomplete (locks null) until step 6.
    lock.check()
    prune_id = secrets.token_hex(PRUNE_ID_SIZE)
    name = layout.CONDEMNED + prune_id
    record: dict[str, Any] = {
        "prune_id": prune_id, "packs": sorted(p.hex() for p in condemned),
        "created_at": _iso(utc_now()), "marked_at": _iso(marked_at),
        "locks": None}
    repo.backend.put(name, json.dumps(record, sort_keys=True).encode())
    report.packs_condemned += len(condemned)
    # 5. new index files first (every surviving pack of the files that name a
    # condemned pack), then the old ones go: a crash between leaves
    # duplicates, never a gap.
    affected = sorted({f for p in condemned for f in files_of.get(p, ())})
    survivors: dict[bytes, list[PackEntry]] = {}
    for ordinal in affected:
        for pack_id, entries in repo.read_index_file(index_files[ordinal]):
            if pack_id not in condemned:
                survivors.setdefault(pack_id, entries)
    repo.write_index_files(survivors.items())
    for ordinal in affected:
        repo.backend.delete(layout.index_name(index_files[ordinal]))
    report.index_files_rewritten += len(affected)
    # 6. the locks, listed only now: a writer that could have seen a condemned
    # pack in an index wrote its lock before loading that index.
    now = lock.storage_time()
    record["locks"] = sorted(x.lock_id for x in live_locks(repo.backend, stale_after=stale,
                                                           now=now)
                             if x.lock_id != lock.lock_id)
    repo.backend.put(name, json.dumps(record, sort_keys=True).encode())
    return prune_id


def _repack(repo: Repository, lock: Lock, report: PruneReport,
            live: dict[bytes, set[bytes]], packs: set[bytes]) -> set[bytes]:
    """Copies the live blobs of ``packs`` into new packs, stores and indexes
    them, and returns the packs whose blobs all moved (to condemn). A blob
    that does not verify is never copied: its pack is kept whole."""
    if not packs:
        return set()
    by_pack: dict[bytes, list[tuple[bytes, bytes, Location]]] = {p: [] for p in packs}
    for key_id, cid, loc in repo.index.entries():
        if loc.pack_id in by_pack and cid in live.get(key_id, ()):
            by_pack[loc.pack_id].append((key_id, cid, loc))
    moved: set[bytes] = set()
    for pack_id in sorted(by_pack):
        lock.check()
        try:
            data = repo.backend.get(layout.pack_name(pack_id))
            blobs = []
            for key_id, cid, loc in by_pack[pack_id]:
                stored = data[loc.offset:loc.offset + loc.stored_length]
                if len(stored) != loc.stored_length:
                    raise IntegrityError(f"pack {pack_id.hex()} is truncated")
                repo.decode_stored(stored, loc, cid, key_id=key_id)
                blobs.append(EncodedBlob(loc.type, key_id, cid, stored, loc.flags,
                                         loc.raw_length))
        except (IntegrityError, ObjectNotFound) as exc:
            report.notes.append(f"pack {pack_id.hex()} not repacked: {exc}")
            continue
        for blob in blobs:
            repo.repack_blob(blob)
            report.bytes_repacked += len(blob.stored)
        moved.add(pack_id)
    repo.flush()  # the copies are stored and indexed before any original is condemned
    report.packs_repacked += len(moved)
    return moved


def _sweep(repo: Repository, lock: Lock, report: PruneReport, stale: dt.timedelta, *,
           wait: float, poll: float) -> int:
    """Sweeps every ``condemned/`` record whose recorded locks are gone or
    stale (waiting up to ``wait`` seconds for them); returns how many records
    still wait."""
    records: dict[str, dict[str, Any]] = {}
    for info in repo.backend.list(layout.CONDEMNED):
        if layout.id_from_name(info.name, layout.CONDEMNED, PRUNE_ID_SIZE) is None:
            report.notes.append(f"left foreign object {info.name} alone")
            continue
        try:
            record = json.loads(repo.backend.get(info.name))
        except ObjectNotFound:
            continue
        except ValueError:
            record = {}
        if not isinstance(record, dict) or not isinstance(record.get("locks"), list):
            # A mark that stopped before step 6: its index rewrite may be
            # partial and its locks unknown, so nothing it lists may be
            # deleted. The next mark condemns those packs again, properly.
            lock.check()
            repo.backend.delete(info.name)
            report.notes.append(f"dropped unfinished condemned record {info.name}")
            continue
        records[info.name] = record
    if not records:
        return 0
    deadline = time.monotonic() + wait
    while True:
        now = lock.storage_time()
        live_ids = {x.lock_id for x in live_locks(repo.backend, stale_after=stale, now=now)}
        ready = {n: r for n, r in records.items()
                 if not any(lock_id in live_ids for lock_id in r["locks"])}
        if len(ready) == len(records) or time.monotonic() + poll > deadline:
            break
        time.sleep(poll)
    if ready:
        _sweep_records(repo, lock, report, ready)
    return len(records) - len(ready)


def _sweep_records(repo: Repository, lock: Lock, report: PruneReport,
                   records: dict[str, dict[str, Any]]) -> None:
    # 2. a condemned pack indexed since (its backup finished) leaves the set.
    repo.load_index()
    indexed = repo.index.pack_ids()
    stored = {pid: info for info in repo.backend.list(layout.DATA)
              if (pid := layout.id_from_name(info.name, layout.DATA)) is not None}
    # 3. the live set again; a live chunk only an unindexed pack holds brings
    # that pack back (resurrection).
    live = _live_set(repo, _Unindexed(repo, [p for p in stored if p not in indexed]),
                     report)
    if live.unindexed_live:
        lock.check()
        repo.index_packs(live.unindexed_live.items())
        report.packs_resurrected += len(live.unindexed_live)
        indexed |= set(live.unindexed_live)
    # 4. delete the rest; 5. then the record.
    for name, record in sorted(records.items()):
        marked_at = _parse_time(record.get("marked_at"))
        for pack_hex in record.get("packs", []):
            try:
                pack_id = bytes.fromhex(pack_hex)
            except ValueError:
                continue
            info = stored.get(pack_id)
            if pack_id in indexed or info is None:
                continue
            if marked_at is not None and info.mtime >= marked_at:
                # Written again after the mark (an unencrypted writer can make
                # the very same pack): it is that writer's now.
                report.notes.append(f"pack {pack_hex} was rewritten after the mark; kept")
                continue
            lock.check()
            repo.backend.delete(layout.pack_name(pack_id))
            report.packs_deleted += 1
            report.bytes_freed += info.size
        repo.backend.delete(name)


def _iso(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _parse_time(text: object) -> dt.datetime | None:
    if not isinstance(text, str):
        return None
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None

