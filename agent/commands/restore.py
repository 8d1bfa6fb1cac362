"""The ``restore`` command: a backup back onto this host.

The controller has already checked the reference's refusals (backup status,
a busy resource, a target disk smaller than the backup); this side checks
what only the host can see (a target outside the host's restore roots after
symlinks, a block device's real size, a target path that is not what it
should be) and then writes. Disks come back byte-identical
and sparse; trees come back with their metadata, never outside the target.
A restore reads under a ``restore`` lock so prune cannot delete a pack it
is about to read.
"""

from __future__ import annotations

import logging

from agent import restore_targets
from agent.commands import CommandContext, Outcome
from agent.commands.storage import (
    failure,
    locked_repository,
    reported_warnings,
    reporting,
)
from agent.config import AgentConfig
from agent.dataplane import DataplaneError, Progress, RestoreResult, tree_restore
from agent.dataplane import disk as disk_engine
from agent.dataplane import tree as tree_engine
from cbr.repo import DiskContent, Repository, TreeContent
from cbr.v1 import agent_pb2

log = logging.getLogger("cbr.agent")


def run(context: CommandContext, command: agent_pb2.RestoreCommand) -> Outcome:
    progress = Progress(cancelled=context.cancelled)
    try:
        with locked_repository(command.storage, kind="restore",
                               task_id=context.task_id) as (repo, _lock), \
                reporting(context, progress):
            results = _restore(context.config, repo, command, progress)
    except Exception as exc:
        log.warning("restore of backup %s failed: %s", command.backup_id, exc)
        return failure(exc, f"restore of backup {command.backup_id}",
                       encrypted=bool(command.storage.encrypted))
    counters = progress.snapshot()
    warnings = reported_warnings(repo, [w for r in results for w in r.warnings],
                                 f"restore of backup {command.backup_id}")
    return Outcome.done(agent_pb2.RestoreResult(
        bytes_restored=counters["bytes_scanned"], bytes_read=counters["bytes_read"],
        warnings=warnings[:20]))


def _restore(config: AgentConfig, repo: Repository, command: agent_pb2.RestoreCommand,
             progress: Progress) -> list[RestoreResult]:
    expected = dict(command.manifest_sha256)
    manifest = repo.load_manifest(command.backup_id,
                                  expected_sha256=expected.get(command.backup_id, ""))
    if command.disk_targets:
        children = {c: repo.load_manifest(c, expected_sha256=expected.get(c, ""))
                    for c in manifest.children} \
            if manifest.children else {manifest.backup_id: manifest}
        targets = {child: restore_targets.disk_target(config, path)
                   for child, path in command.disk_targets.items()}
        unknown = set(targets) - set(children)
        if unknown:
            raise DataplaneError(f"disk backups {sorted(unknown)} are not part of backup "
                                 f"{command.backup_id}")
        total = sum(m.content.size for m in children.values()
                    if isinstance(m.content, DiskContent))
        progress.set_total(total)
        results = []
        for child_id, disk_path in sorted(targets.items()):
            content = children[child_id].content
            if not isinstance(content, DiskContent):
                raise DataplaneError(f"backup {child_id} holds no disk")
            results.append(disk_engine.restore_disk(
                repo, content, disk_path, progress=progress,
                key_id=children[child_id].chunk_key_id))
        return results
    content = manifest.content
    if isinstance(content, DiskContent):
        target = restore_targets.disk_target(config, command.target_path)
        progress.set_total(content.size)
        return [disk_engine.restore_disk(repo, content, target, progress=progress,
                                         key_id=manifest.chunk_key_id)]
    if isinstance(content, TreeContent):
        target = restore_targets.tree_target(config, command.target_path)
        path = [p.encode("utf-8", "surrogateescape")
                for p in command.source_path.split("/") if p]
        size = tree_engine.restore_size(repo, content, path, manifest.chunk_key_id)
        progress.set_total(int(manifest.stats.get("bytes_scanned", 0)) if size is None
                           else size)
        target.mkdir(parents=True, exist_ok=True)
        return [tree_restore.restore_tree(repo, content, target, path=path, progress=progress,
                                          key_id=manifest.chunk_key_id)]
    raise DataplaneError(f"backup {command.backup_id} is a server backup; restore its disks "
                         "with disk targets")
