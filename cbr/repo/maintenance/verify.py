"""Vault verification (``docs/storage-format.md`` section 13).

Structure check: every chunk reachable from every manifest is indexed, and
every indexed pack exists with at least the size its entries imply. With
``read_data``: every indexed pack is read once, its bytes hash to its name,
its header parses and agrees with the index, and every blob in it decodes
and matches its id. Each problem names the backups, the chunk and the pack,
so a person knows which restore points are damaged and what to delete.

Memory: one pack (``read_data``), one segment or directory of a walk, the
sizes of the stored packs, and the damaged chunks found; never a backup's
whole chunk list.

This module only reads; it must not repair (:mod:`cbr.repo.maintenance.repair` does,
and deleting a damaged backup is the user's call).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cbr.repo import layout
from cbr.repo.content.index import Location
from cbr.repo.content.pack import TRAILER_SIZE, PackEntry, decode_header, parse_trailer
from cbr.repo.errors import FormatError, IntegrityError, RepoError
from cbr.repo.maintenance.subset import DataSubset
from cbr.repo.maintenance.walk import complete_manifests, iter_reachable
from cbr.repo.objects.manifest import Manifest
from cbr.repo.repository import Repository
from cbr.storage import ObjectNotFound, StorageError


@dataclass
class Problem:
    """One thing wrong, with everything needed to act on it. ``backups`` are
    the finished backups that reach the chunk (empty: no backup needs it)."""

    kind: str
    """``missing-chunk``, ``missing-pack``, ``truncated-pack``, ``pack-hash``,
    ``pack-header``, ``bad-blob``, ``index-mismatch``, ``bad-manifest``,
    ``damaged-index``."""
    message: str
    backups: list[str] = field(default_factory=list)
    chunk_id: str = ""
    pack_id: str = ""

    def __str__(self) -> str:
        where = []
        if self.backups:
            where.append("backup " + ", ".join(self.backups))
        if self.chunk_id:
            where.append(f"chunk {self.chunk_id}")
        if self.pack_id:
            where.append(f"pack {self.pack_id}")
        text = f"{'; '.join(where)}: {self.message}" if where else self.message
        return f"{text}. {self.remedy}" if self.remedy else text

    @property
    def reason(self) -> str:
        """The problem in a phrase, without the backups it names or a remedy."""
        where = f" {self.chunk_id}" if self.chunk_id else ""
        return f"{self.kind}{where}: {self.message}"

    @property
    def remedy(self) -> str:
        """What a person does about it. Data that is gone is not repaired by
        any command; what the backups named still hold restores."""
        if self.kind in ("damaged-index",) or "repair re-indexes" in self.message:
            return ""  # the message says it: repair rewrites the index
        if not self.backups:
            return ("No backup loses data by it; cbr vault repair VAULT_ID keeps what still "
                    "reads and removes the rest") if self.kind != "missing-manifest" else ""
        return ("Its data is gone from storage: the backups named do not restore in full. "
                "cbr vault repair VAULT_ID keeps all that still reads, marks those backups "
                "damaged, and a backup of a resource that still holds the lost data stores "
                "it again")


@dataclass
class VerifyReport:
    backups: int = 0
    chunks_checked: int = 0
    packs_checked: int = 0
    blobs_read: int = 0
    bytes_read: int = 0
    unindexed_packs: int = 0
    packs_read: int = 0
    read_data_subset: str = ""
    """The part of the packs read (``n/t`` or ``P%``); empty: all, or none."""
    problems: list[Problem] = field(default_factory=list)
    damaged_backups: list[str] = field(default_factory=list)
    checked_backups: set[str] = field(default_factory=set)
    """Every backup walked (a server backup by its own id)."""
    reasons: dict[str, str] = field(default_factory=dict)
    """Per damaged backup, the first thing found wrong with it, in a phrase."""

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"backups_checked": self.backups, "chunks_checked": self.chunks_checked,
                "packs_checked": self.packs_checked, "blobs_read": self.blobs_read,
                "bytes_read": self.bytes_read, "unindexed_packs": self.unindexed_packs,
                "packs_read": self.packs_read, "read_data_subset": self.read_data_subset,
                "problems": len(self.problems),
                "damaged_backups": ",".join(self.damaged_backups),
                "first_problems": "; ".join(str(p) for p in self.problems[:10])}


def verify(repo: Repository, *, read_data: bool = False,
           expected_manifests: Mapping[str, str] | None = None,
           load_index: bool = True, subset: DataSubset | None = None) -> VerifyReport:
    """Checks the vault (section 13); see the module docstring. Never raises
    for damage (it is reported); storage errors propagate.

    ``expected_manifests`` (backup id -> hex SHA-256, the catalog's record)
    adds a check that each of those manifests is in storage unchanged: a
    manifest replaced or replayed is reported naming the backup.
    ``load_index=False`` checks against the index ``repo`` holds (repair's
    dry run: the index it would write).
    ``subset`` (implies ``read_data``) reads only those packs
    (:mod:`cbr.repo.maintenance.subset`); the structure check still covers
    every backup and every pack's presence and size.
    """
    report = VerifyReport()
    _check_manifest_digests(repo, report, expected_manifests or {})
    # The backups to check are listed before the indexes are loaded: a backup
    # indexes its chunks before writing its manifest, so each of these is
    # wholly in the index loaded next, even if it finished a moment ago.
    unreadable: dict[str, str] = {}
    manifests, _unfinished = complete_manifests(repo, unreadable)
    if load_index:
        repo.load_index()
    for index_id, why in sorted(repo.damaged_index_files.items()):
        report.problems.append(Problem(
            "damaged-index", f"{layout.index_name(index_id)} is damaged ({why}); what it "
            "described was found from the pack headers, so no backup is lost by it. "
            "cbr vault repair VAULT_ID rewrites it from those headers"))
    stored = {pid: info.size for info in repo.backend.list(layout.DATA)
              if (pid := layout.id_from_name(info.name, layout.DATA)) is not None}
    # Pack problems, keyed by pack; chunk problems, keyed by (key id, chunk id),
    # so a damaged chunk shared by many backups is one problem naming them all.
    bad_packs = _check_packs(repo, report, stored)
    bad_chunks: dict[tuple[bytes, bytes], Problem] = {}
    if read_data or subset is not None:
        to_read = sorted(repo.index.pack_ids())
        if subset is not None:
            to_read = subset.select(to_read)
            report.read_data_subset = str(subset)
        for pack_id in to_read:
            if pack_id not in bad_packs:
                report.packs_read += 1
                _read_pack(repo, report, pack_id, bad_chunks, bad_packs)
    report.unindexed_packs = sum(1 for p in stored if p not in repo.index.pack_ids())
    _check_backups(repo, report, manifests, bad_packs, bad_chunks, unreadable)
    return report


def _check_manifest_digests(repo: Repository, report: VerifyReport,
                            expected: Mapping[str, str]) -> None:
    for backup_id, digest in sorted(expected.items()):
        name = layout.manifest_name(backup_id)
        try:
            data = repo.backend.get(name)
        except ObjectNotFound:
            problem = Problem("missing-manifest", f"{name} is missing", backups=[backup_id])
            report.problems.append(problem)
            report.damaged_backups.append(backup_id)
            report.reasons.setdefault(backup_id, problem.reason)
            continue
        if hashlib.sha256(data).hexdigest() != digest:
            problem = Problem("manifest-digest", f"{name} differs from the manifest the "
                              "catalog recorded (replaced or replayed)", backups=[backup_id])
            report.problems.append(problem)
            report.damaged_backups.append(backup_id)
            report.reasons.setdefault(backup_id, problem.reason)


def _check_packs(repo: Repository, report: VerifyReport,
                 stored: dict[bytes, int]) -> dict[bytes, Problem]:
    """Every indexed pack exists and is long enough for its blobs and trailer."""
    implied: dict[bytes, int] = {}
    for _key, _cid, loc in repo.index.entries():
        end = loc.offset + loc.stored_length + TRAILER_SIZE
        if end > implied.get(loc.pack_id, 0):
            implied[loc.pack_id] = end
    bad: dict[bytes, Problem] = {}
    for pack_id in sorted(repo.index.pack_ids()):
        report.packs_checked += 1
        size = stored.get(pack_id)
        end = implied.get(pack_id, TRAILER_SIZE)
        if size is None:
            bad[pack_id] = Problem("missing-pack", "indexed pack is missing from storage",
                                   pack_id=pack_id.hex())
        elif size < end:
            bad[pack_id] = Problem("truncated-pack",
                                   f"pack is truncated ({size} bytes, index implies >= {end})",
                                   pack_id=pack_id.hex())
    return bad


@dataclass
class PackCheck:
    """What reading one stored pack whole found (repair salvages by it)."""

    pack_id: bytes
    size: int
    hash_ok: bool
    header: list[PackEntry] | None
    """The header's entries; None when it does not parse (``header_error``)."""
    header_error: str
    blobs: list[tuple[PackEntry, str]]
    """Each blob checked, with why it does not verify ("" when it does)."""
    data: bytes = field(default=b"", repr=False)

    @property
    def sound(self) -> bool:
        return self.hash_ok and self.header is not None and not any(e for _b, e in self.blobs)


def check_pack(repo: Repository, pack_id: bytes, data: bytes,
               fallback: Sequence[PackEntry] = ()) -> PackCheck:
    """Checks a pack's bytes: hash, header, every blob. When the header does
    not parse, the blobs checked are ``fallback`` (where the index says they
    are)."""
    hexid = pack_id.hex()
    hash_ok = hashlib.sha256(data).digest() == pack_id
    limit = len(data)
    try:
        trailer = parse_trailer(data[-TRAILER_SIZE:], hexid)
        start = len(data) - TRAILER_SIZE - trailer.header_length
        if start < 0:
            raise FormatError(f"truncated pack {hexid}: header longer than the pack")
        _kind, header = decode_header(data[start:len(data) - TRAILER_SIZE], trailer,
                                      repo.data_keys, hexid)
        entries: Sequence[PackEntry] = header
        limit, header_error = start, ""
    except (FormatError, IntegrityError) as exc:
        header, header_error, entries = None, str(exc), fallback
    view = memoryview(data)
    blobs: list[tuple[PackEntry, str]] = []
    for e in entries:
        if e.offset + e.stored_length > limit:
            blobs.append((e, "blob runs past the header" if header is not None
                          else "blob runs past the end of the pack"))
            continue
        loc = Location(pack_id, e.type, e.offset, e.stored_length, e.raw_length, e.flags)
        try:
            repo.decode_stored(view[e.offset:e.offset + e.stored_length], loc, e.chunk_id,
                               key_id=e.key_id)
            blobs.append((e, ""))
        except (IntegrityError, RepoError) as exc:
            blobs.append((e, str(exc).split(": ", 1)[-1] or "does not verify"))
    return PackCheck(pack_id, len(data), hash_ok, header, header_error, blobs, data)


def _read_pack(repo: Repository, report: VerifyReport, pack_id: bytes,
               bad_chunks: dict[tuple[bytes, bytes], Problem],
               bad_packs: dict[bytes, Problem]) -> None:
    """Reads one pack whole (at most ``pack_size`` in memory): hash, header,
    agreement with the index, and every blob."""
    hexid = pack_id.hex()
    try:
        data = repo.backend.get(layout.pack_name(pack_id))
    except ObjectNotFound:
        bad_packs[pack_id] = Problem("missing-pack", "pack vanished while verifying",
                                     pack_id=hexid)
        return
    report.bytes_read += len(data)
    check = check_pack(repo, pack_id, data)
    if not check.hash_ok:
        # Recorded, but the blobs decide which chunks are damaged.
        report.problems.append(Problem("pack-hash", "pack bytes do not match its name",
                                       pack_id=hexid))
    if check.header is None:
        bad_packs[pack_id] = Problem("pack-header",
                                     f"header does not parse: {check.header_error}",
                                     pack_id=hexid)
        return
    for e, error in check.blobs:
        report.blobs_read += 1
        key = (e.key_id, e.chunk_id)
        indexed = repo.index.lookup(e.key_id, e.chunk_id)
        if indexed is not None and indexed.pack_id == pack_id and (
                indexed.offset, indexed.stored_length, indexed.type, indexed.flags) != (
                e.offset, e.stored_length, e.type, e.flags):
            bad_chunks[key] = Problem("index-mismatch", "index and pack header disagree on "
                                      "where the blob is", chunk_id=e.chunk_id.hex(),
                                      pack_id=hexid)
            continue
        if not error:
            continue
        problem = Problem("bad-blob", error, chunk_id=e.chunk_id.hex(), pack_id=hexid)
        # Damaged here; it matters only if this is the copy readers use.
        if indexed is None or indexed.pack_id == pack_id:
            bad_chunks[key] = problem
        else:
            report.problems.append(problem)


def _check_backups(repo: Repository, report: VerifyReport, manifests: list[Manifest],
                   bad_packs: dict[bytes, Problem],
                   bad_chunks: dict[tuple[bytes, bytes], Problem],
                   unreadable: dict[str, str]) -> None:
    """Walks the finished backups listed at the start and attaches each to
    the problems of the chunks it reaches. A manifest that does not read
    damages its own backup (a disk's, the server backup that names it)."""
    missing: dict[tuple[bytes, bytes], Problem] = {}
    damaged: set[str] = set()
    owners = {c: m.backup_id for m in manifests for c in m.children}
    for backup_id, why in sorted(unreadable.items()):
        owner = owners.get(backup_id, backup_id)
        problem = Problem("bad-manifest", f"{layout.manifest_name(backup_id)} cannot be "
                          f"read ({why})", backups=[backup_id])
        report.problems.append(problem)
        damaged.add(owner)
        report.checked_backups.add(owner)
        report.reasons.setdefault(owner, problem.reason)
    for manifest in manifests:
        report.backups += 1
        owner = manifest.parent_id or manifest.backup_id
        report.checked_backups.add(owner)
        key_id = manifest.chunk_key_id
        hit: list[Problem] = []
        try:
            for _kind, cid in iter_reachable(repo, manifest):
                report.chunks_checked += 1
                loc = repo.index.lookup(key_id, cid)
                if loc is None:
                    problem = missing.setdefault((key_id, cid), Problem(
                        "missing-chunk", "chunk is in no index", chunk_id=cid.hex()))
                elif (key_id, cid) in bad_chunks:
                    problem = bad_chunks[(key_id, cid)]
                elif loc.pack_id in bad_packs:
                    problem = bad_packs[loc.pack_id]
                else:
                    continue
                hit.append(problem)
                if manifest.backup_id not in problem.backups:
                    problem.backups.append(manifest.backup_id)
                if not problem.chunk_id:
                    problem.chunk_id = cid.hex()  # first chunk lost with the pack
        except (RepoError, StorageError) as exc:
            # A metadata blob could not be read: what lies below it is lost.
            problem = Problem("bad-manifest", f"walk stopped: {exc}",
                              backups=[manifest.backup_id],
                              chunk_id=getattr(exc, "chunk_id", "") or "",
                              pack_id=getattr(exc, "pack_id", "") or "")
            report.problems.append(problem)
            hit.append(problem)
        if hit:
            damaged.add(owner)
            report.reasons.setdefault(owner, hit[0].reason)
    _locate_missing(repo, missing)
    listed = {id(p) for p in report.problems}
    for problem in [*missing.values(), *bad_packs.values(), *bad_chunks.values()]:
        if id(problem) not in listed:
            listed.add(id(problem))
            report.problems.append(problem)
    report.damaged_backups = sorted(damaged | set(report.damaged_backups))


def _locate_missing(repo: Repository, missing: dict[tuple[bytes, bytes], Problem]) -> None:
    """Names the unindexed pack a missing chunk could be recovered from, if any
    (repair and prune re-index such packs)."""
    if not missing:
        return
    for pack_id in repo.list_unindexed_packs():
        try:
            entries = repo.read_pack_header(pack_id)
        except (FormatError, IntegrityError, ObjectNotFound):
            continue
        for e in entries:
            problem = missing.get((e.key_id, e.chunk_id))
            if problem is not None and not problem.pack_id:
                problem.pack_id = pack_id.hex()
                problem.message = ("chunk is in no index; unindexed pack holds it "
                                   "(cbr vault repair re-indexes it)")
