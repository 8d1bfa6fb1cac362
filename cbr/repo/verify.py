"""Vault verification (``docs/storage-format.md`` section 13).

Structure check: every chunk reachable from every manifest is indexed, and
every indexed pack exists with at least the size its entries imply. With
``read_data``: every pack's bytes hash to its name and every reachable chunk
decodes and matches its id. Each problem names the backup, chunk and pack,
so a person knows which restore points are damaged.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from cbr.repo import layout
from cbr.repo.errors import ChunkNotFound, IntegrityError, RepoError
from cbr.repo.repository import Repository
from cbr.repo.walk import complete_manifests, iter_reachable
from cbr.storage import ObjectNotFound


@dataclass
class VerifyReport:
    backups: int = 0
    chunks_checked: int = 0
    packs_checked: int = 0
    bytes_read: int = 0
    problems: list[str] = field(default_factory=list)
    damaged_backups: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"backups_checked": self.backups, "chunks_checked": self.chunks_checked,
                "packs_checked": self.packs_checked, "bytes_read": self.bytes_read,
                "problems": len(self.problems),
                "damaged_backups": ",".join(self.damaged_backups),
                "first_problems": "; ".join(self.problems[:10])}


def _check_packs(repo: Repository, report: VerifyReport, read_data: bool) -> set[bytes]:
    """Pack ids that are missing, short or (read_data) corrupt."""
    implied: dict[bytes, int] = {}
    for _key, _cid, loc in repo.index.entries():
        end = loc.offset + loc.stored_length
        if end > implied.get(loc.pack_id, 0):
            implied[loc.pack_id] = end
    bad: set[bytes] = set()
    for pack_id, end in implied.items():
        name = layout.pack_name(pack_id)
        report.packs_checked += 1
        try:
            size = repo.backend.stat(name).size
        except ObjectNotFound:
            report.problems.append(f"pack {pack_id.hex()} is missing")
            bad.add(pack_id)
            continue
        if size < end:
            report.problems.append(f"pack {pack_id.hex()} is truncated ({size} < {end} bytes)")
            bad.add(pack_id)
            continue
        if read_data:
            h = hashlib.sha256()
            for part in repo.backend.iter_get(name):
                h.update(part)
                report.bytes_read += len(part)
            if h.digest() != pack_id:
                report.problems.append(f"pack {pack_id.hex()} does not match its name "
                                       "(its bytes changed)")
                bad.add(pack_id)
    return bad


def verify(repo: Repository, *, read_data: bool = False) -> VerifyReport:
    report = VerifyReport()
    repo.load_index()
    bad_packs = _check_packs(repo, report, read_data)
    manifests, _unfinished = complete_manifests(repo)
    damaged: set[str] = set()
    for manifest in manifests:
        report.backups += 1
        owner = manifest.parent_id or manifest.backup_id
        key_id = manifest.chunk_key_id
        seen: set[bytes] = set()
        try:
            for _kind, cid in iter_reachable(repo, manifest):
                if cid in seen:
                    continue
                seen.add(cid)
                report.chunks_checked += 1
                loc = repo.index.lookup(key_id, cid)
                if loc is None:
                    report.problems.append(f"backup {manifest.backup_id}: chunk {cid.hex()} "
                                           "is in no index (missing)")
                    damaged.add(owner)
                    continue
                if loc.pack_id in bad_packs:
                    report.problems.append(f"backup {manifest.backup_id}: chunk {cid.hex()} "
                                           f"is in damaged pack {loc.pack_id.hex()}")
                    damaged.add(owner)
                    continue
                if read_data:
                    try:
                        repo.load_blob(cid, key_id=key_id)
                    except (IntegrityError, ChunkNotFound) as exc:
                        report.problems.append(f"backup {manifest.backup_id}: {exc}")
                        damaged.add(owner)
        except RepoError as exc:  # a metadata blob could not be read: the walk stops here
            report.problems.append(f"backup {manifest.backup_id}: {exc}")
            damaged.add(owner)
    report.damaged_backups = sorted(damaged)
    return report
