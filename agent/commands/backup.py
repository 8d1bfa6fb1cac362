"""The ``backup`` command: one resource into its vault.

Order (storage format section 11): lock, open the vault (loading the index
after the lock), snapshot, read and store, then manifests (a server's disks
first, the server last), then report. The controller marks the backup
``available`` only on this command's success, which comes after the
manifests are written, so a backup the catalog shows is always complete.
A cancelled backup stops at its next chunk, file or directory, indexes the
packs it uploaded (so the next backup reuses them) and writes no manifest.

A server's disks are snapshotted together (one freeze around all of them),
each disk's backup then sends only what changed since the disk's previous
backup: by reflink changed-block tracking when the kept snapshot belongs to
that backup, else by comparing block hashes.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

from agent.commands import CommandContext, Outcome
from agent.commands.storage import (
    failure,
    keeping_uploads,
    locked_repository,
    reported_warnings,
    reporting,
)
from agent.config import AgentConfig, DiskSpec, FileSystemSpec, ServerSpec, SingleDiskSpec
from agent.dataplane import (
    BackupResult,
    DataplaneError,
    Progress,
    SourceUnreadable,
    tree_backup,
    watches,
)
from agent.dataplane import disk as disk_engine
from agent.dataplane import snapshot as snapshots
from cbr.clock import utc_now
from cbr.limits import RESOURCE_TYPES
from cbr.repo import DiskContent, Manifest, Repository, Resource, TreeContent
from cbr.repo.errors import IntegrityError, ManifestNotFound
from cbr.v1 import agent_pb2

log = logging.getLogger("cbr.agent")



def _find(config: AgentConfig, local_id: str) -> ServerSpec | SingleDiskSpec | FileSystemSpec:
    specs: list[ServerSpec | SingleDiskSpec | FileSystemSpec] = [
        *config.servers, *config.disks, *config.file_systems]
    for spec in specs:
        if spec.local_id == local_id:
            return spec
    raise SourceUnreadable(f"this agent does not protect {local_id!r} (any more); check its "
                           "configuration and sync")


def _parent_content(repo: Repository, parent_id: str, digest: str = "") -> Any:
    """The parent's content, or None (a full backup). A parent manifest that
    differs from the catalog's record is not trusted: changed-block tracking
    against a replayed older map would store a wrong disk."""
    if not parent_id:
        return None
    try:
        return repo.load_manifest(parent_id, expected_sha256=digest).content
    except ManifestNotFound:
        log.info("parent backup %s has no manifest (deleted); taking a full backup", parent_id)
        return None
    except IntegrityError as exc:
        log.warning("parent backup %s: %s; taking a full backup", parent_id, exc)
        return None


def _created(command: agent_pb2.BackupCommand) -> dt.datetime:
    if command.HasField("created_at"):
        return command.created_at.ToDatetime(tzinfo=dt.UTC)
    return utc_now()


def run(context: CommandContext, command: agent_pb2.BackupCommand) -> Outcome:
    progress = Progress(int(command.resource_size_bytes), cancelled=context.cancelled)
    try:
        spec = _find(context.config, command.resource_local_id)
        with locked_repository(command.storage, kind="backup",
                               task_id=context.task_id) as (repo, lock), \
                reporting(context, progress), keeping_uploads(repo):
            if isinstance(spec, ServerSpec):
                items = _backup_server(repo, lock, spec, command, progress)
            elif isinstance(spec, SingleDiskSpec):
                items = _backup_single_disk(repo, lock, spec, command, progress)
            else:
                items = _backup_tree(repo, lock, spec, command, progress)
    except Exception as exc:
        log.warning("backup %s of %s failed: %s", command.backup_id, command.resource_name, exc)
        return failure(exc, f"backup of {command.resource_name}",
                       encrypted=bool(command.storage.encrypted))
    counters = progress.snapshot()
    return Outcome.done(agent_pb2.BackupResult(
        backups=items, bytes_scanned=counters["bytes_scanned"],
        bytes_sent=counters["bytes_sent"], bytes_new=counters["bytes_new"]))


def _manifest(command: agent_pb2.BackupCommand, repo: Repository, *, backup_id: str, name: str,
              resource: Resource, content: Any, result: BackupResult | None,
              parent_id: str | None = None, children: list[str] | None = None,
              incremental: bool, extend: dict[str, Any] | None = None,
              protected_at: dt.datetime) -> Manifest:
    return Manifest(
        backup_id=backup_id, name=name, checkpoint_id=command.checkpoint_id,
        vault_id=command.vault_id, resource=resource, created_at=_created(command),
        chunk_key_id=repo.config.chunk_key_id, content=content,
        description=command.description, protected_at=protected_at,
        parent_id=parent_id, children=children or [], incremental=incremental,
        extend_info={"auto_trigger": bool(command.auto_trigger), **(extend or {})},
        stats=dict(result.stats) if result is not None else {},
        warnings=list(result.warnings) if result is not None else [])


def _item(repo: Repository, backup_id: str, result: BackupResult | None,
          protected_at: dt.datetime, **extra: Any) -> agent_pb2.BackedUp:
    stats = result.stats if result is not None else {}
    item = agent_pb2.BackedUp(
        backup_id=backup_id, stored_bytes=int(stats.get("bytes_sent", 0)),
        bytes_scanned=int(stats.get("bytes_scanned", 0)),
        warnings=reported_warnings(repo, list(result.warnings) if result else [],
                                   f"backup {backup_id}"), **extra)
    item.protected_at.FromDatetime(protected_at)
    return item


def _disk_backup(repo: Repository, snaps: Any, key: str, parent_id: str, parent_digest: str,
                 size: int, progress: Progress) -> tuple[BackupResult, str]:
    parent = _parent_content(repo, parent_id, parent_digest)
    if not isinstance(parent, DiskContent):
        parent = None
    changed = snaps.changed_ranges(key, parent_id) if parent is not None else None
    result = disk_engine.backup_disk(repo, snaps.source(key), size=size, parent=parent,
                                     changed=changed, progress=progress)
    method = "full" if parent is None else ("cbt" if changed is not None else "hash-scan")
    return result, method


def _backup_server(repo: Repository, lock: Any, spec: ServerSpec, command: agent_pb2.BackupCommand,
                   progress: Progress) -> list[agent_pb2.BackedUp]:
    by_id = {spec.disk_id(d): d for d in spec.disks}
    wanted: list[tuple[Any, DiskSpec]] = []
    for child in command.disks:
        disk = by_id.get(child.disk_local_id)
        if disk is None:
            raise SourceUnreadable(f"server {spec.name} has no disk {child.disk_local_id!r}")
        wanted.append((child, disk))
    sizes = {child.backup_id: disk_engine.disk_size(Path(disk.path)) for child, disk in wanted}
    progress.set_total(sum(sizes.values()))
    items: list[agent_pb2.BackedUp] = []
    manifests: list[Manifest] = []
    with snapshots.take_snapshots(
            [(child.disk_local_id, Path(disk.path)) for child, disk in wanted],
            pre_hook=list(spec.pre_snapshot) or None,
            post_hook=list(spec.post_snapshot) or None,
            hook_timeout=spec.hook_timeout) as snaps:
        protected_at = utc_now()
        for child, disk in wanted:
            size = sizes[child.backup_id]
            result, method = _disk_backup(repo, snaps, child.disk_local_id,
                                          child.parent_backup_id, child.parent_manifest_sha256,
                                          size, progress)
            extend = {"system_disk": bool(child.system_disk), "disk_id": child.disk_local_id,
                      "snapshot": snaps.kind(child.disk_local_id), "method": method}
            manifests.append(_manifest(
                command, repo, backup_id=child.backup_id, name=command.name,
                resource=Resource(command.resource_id, disk.name, RESOURCE_TYPES["disk"], size),
                content=result.content, result=result, parent_id=command.backup_id,
                incremental=bool(child.parent_backup_id), extend=extend,
                protected_at=protected_at))
            items.append(_item(repo, child.backup_id, result, protected_at,
                               snapshot=snaps.kind(child.disk_local_id), change_detection=method,
                               freeze_ms=round(snaps.freeze_seconds * 1000)))
        snaps.release()  # thaw: a live (non-reflink) read held the freeze until now
        lock.check()
        digests = {m.backup_id: repo.save_manifest(m) for m in manifests}
        for item in items:
            item.manifest_sha256 = digests[item.backup_id]
        has_system = any(c.system_disk for c, _ in wanted)
        server_digest = repo.save_manifest(_manifest(
            command, repo, backup_id=command.backup_id, name=command.name,
            resource=Resource(command.resource_id, command.resource_name,
                              RESOURCE_TYPES["server"], int(command.resource_size_bytes)),
            content=None, result=None, children=[m.backup_id for m in manifests],
            incremental=bool(command.parent_backup_id),
            extend={"contain_system_disk": has_system,
                    "app_consistent": bool(spec.pre_snapshot)},
            protected_at=protected_at))
        for child, _disk in wanted:
            snaps.commit(child.disk_local_id, child.backup_id)
    items.append(_item(repo, command.backup_id, None, protected_at,
                       app_consistent=bool(spec.pre_snapshot), manifest_sha256=server_digest))
    return items


def _backup_single_disk(repo: Repository, lock: Any, spec: SingleDiskSpec,
                        command: agent_pb2.BackupCommand,
                        progress: Progress) -> list[agent_pb2.BackedUp]:
    size = disk_engine.disk_size(Path(spec.path))
    progress.set_total(size)
    with snapshots.take_snapshots([(spec.local_id, Path(spec.path))], pre_hook=None,
                                  post_hook=None, hook_timeout=60.0) as snaps:
        protected_at = utc_now()
        result, method = _disk_backup(repo, snaps, spec.local_id, command.parent_backup_id,
                                      command.parent_manifest_sha256, size, progress)
        lock.check()
        digest = repo.save_manifest(_manifest(
            command, repo, backup_id=command.backup_id, name=command.name,
            resource=Resource(command.resource_id, command.resource_name,
                              RESOURCE_TYPES["disk"], size),
            content=result.content, result=result,
            incremental=bool(command.parent_backup_id),
            extend={"snapshot": snaps.kind(spec.local_id), "method": method},
            protected_at=protected_at))
        snaps.commit(spec.local_id, command.backup_id)
    return [_item(repo, command.backup_id, result, protected_at, snapshot=snaps.kind(spec.local_id),
                  change_detection=method, manifest_sha256=digest)]


def _backup_tree(repo: Repository, lock: Any, spec: FileSystemSpec,
                 command: agent_pb2.BackupCommand,
                 progress: Progress) -> list[agent_pb2.BackedUp]:
    root = Path(spec.path)
    if not root.is_dir():
        raise SourceUnreadable(f"file system {spec.name}: {root} is not a directory")
    parent = _parent_content(repo, command.parent_backup_id, command.parent_manifest_sha256)
    if not isinstance(parent, TreeContent):
        parent = None
    protected_at = utc_now()
    tracking = watches.track(root, command.parent_backup_id if parent is not None else None,
                             watches.WATCHES if spec.change_journal else None)
    if tracking.method == "walk":
        log.info("file system %s: walking the whole tree (%s)", spec.name, tracking.reason)
    result = tree_backup.backup_tree(repo, root, parent=parent, progress=progress,
                                     changed=tracking.changed)
    lock.check()
    digest = repo.save_manifest(_manifest(
        command, repo, backup_id=command.backup_id, name=command.name,
        resource=Resource(command.resource_id, command.resource_name, RESOURCE_TYPES["turbo"],
                          int(command.resource_size_bytes)),
        content=result.content, result=result, incremental=parent is not None,
        protected_at=protected_at, extend={"method": tracking.method}))
    tracking.commit(command.backup_id, result.recheck_dirs)
    return [_item(repo, command.backup_id, result, protected_at, manifest_sha256=digest,
                  change_detection=tracking.method)]


__all__ = ["DataplaneError", "run"]
