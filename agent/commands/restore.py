"""The ``restore`` command: a backup back onto this host.

The controller has already checked the reference's refusals (backup status,
a busy resource, a target disk smaller than the backup); this side checks
what only the host can see (a block device's real size, a target path that
is not what it should be) and then writes. Disks come back byte-identical
and sparse; trees come back with their metadata, never outside the target.
A restore reads under a ``restore`` lock so prune cannot delete a pack it
is about to read.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from agent.commands import CommandContext, Outcome
from agent.commands.storage import failure, locked_repository, reporting
from agent.dataplane import DataplaneError, Progress, RestoreResult, UnsafeTarget
from agent.dataplane import disk as disk_engine
from agent.dataplane import tree as tree_engine
from cbr.repo import DiskContent, Repository, TreeContent

log = logging.getLogger("cbr.agent")


def run(context: CommandContext, command: Any) -> Outcome:
    progress = Progress()
    try:
        with locked_repository(command.storage, kind="restore",
                               task_id=context.task_id) as (repo, _lock), \
                reporting(context, progress):
            results = _restore(repo, command, progress)
    except Exception as exc:
        log.warning("restore of backup %s failed: %s", command.backup_id, exc)
        return failure(exc, f"restore of backup {command.backup_id}")
    counters = progress.snapshot()
    warnings = [w for r in results for w in r.warnings]
    extra = {"bytes_restored": str(counters["bytes_scanned"]),
             "bytes_read": str(counters["bytes_read"])}
    if warnings:
        extra["warnings"] = "; ".join(warnings[:20])
    return Outcome(True, extra_info=extra)


def _absolute(path: str) -> Path:
    if not path.startswith("/"):
        raise UnsafeTarget(f"restore target {path!r} is not an absolute path")
    return Path(path)


def _restore(repo: Repository, command: Any, progress: Progress) -> list[RestoreResult]:
    expected = dict(command.manifest_sha256)
    manifest = repo.load_manifest(command.backup_id,
                                  expected_sha256=expected.get(command.backup_id, ""))
    if command.disk_targets:
        children = {c: repo.load_manifest(c, expected_sha256=expected.get(c, ""))
                    for c in manifest.children} \
            if manifest.children else {manifest.backup_id: manifest}
        unknown = set(command.disk_targets) - set(children)
        if unknown:
            raise DataplaneError(f"disk backups {sorted(unknown)} are not part of backup "
                                 f"{command.backup_id}")
        total = sum(m.content.size for m in children.values()
                    if isinstance(m.content, DiskContent))
        progress.set_total(total)
        results = []
        for child_id, path in sorted(command.disk_targets.items()):
            content = children[child_id].content
            if not isinstance(content, DiskContent):
                raise DataplaneError(f"backup {child_id} holds no disk")
            results.append(disk_engine.restore_disk(
                repo, content, _absolute(path), progress=progress,
                key_id=children[child_id].chunk_key_id))
        return results
    content = manifest.content
    target = _absolute(command.target_path)
    if isinstance(content, DiskContent):
        progress.set_total(content.size)
        return [disk_engine.restore_disk(repo, content, target, progress=progress,
                                         key_id=manifest.chunk_key_id)]
    if isinstance(content, TreeContent):
        path = [p.encode("utf-8", "surrogateescape")
                for p in command.source_path.split("/") if p]
        size = tree_engine.restore_size(repo, content, path, manifest.chunk_key_id)
        progress.set_total(int(manifest.stats.get("bytes_scanned", 0)) if size is None
                           else size)
        target.mkdir(parents=True, exist_ok=True)
        return [tree_engine.restore_tree(repo, content, target, path=path, progress=progress,
                                         key_id=manifest.chunk_key_id)]
    raise DataplaneError(f"backup {command.backup_id} is a server backup; restore its disks "
                         "with disk targets")
