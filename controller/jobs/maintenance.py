"""Vault maintenance the controller runs itself: deleting backups, pruning, verifying,
repairing, importing a vault from its storage, listing a file-system backup.

These touch only metadata and the vault's own storage, never a protected
host, so they need no agent. They run one at a time on one worker thread
(prune and verify must not race each other on one vault, and they are
bounded work that should not compete with API calls for more than one
core). Each is a task; a task left ``waiting`` or ``running`` by a
controller that stopped is run again at the next start, which is safe
because every step is idempotent (deleting a deleted manifest, a prune
resuming its condemned sets).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import queue
import threading
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from cbr import errors, faults

# prune and verify are maintenance modules, loaded only by the controller
from cbr.repo import RepoError, layout
from cbr.repo.maintenance import prune, repair, verify
from cbr.repo.maintenance.subset import DataSubset
from cbr.repo.objects.manifest import Manifest, TreeContent
from cbr.repo.objects.tree import EntryType, decode_tree
from cbr.storage import StorageError
from cbr.v1 import backup_pb2
from controller.app import App
from controller.jobs.browse import file_pb
from controller.kms import CustomerKey
from controller.persistence.models import Backup, Checkpoint, Key, Task, Vault
from controller.persistence.vocabulary import (
    BackupStatus,
    CheckpointStatus,
    ConsistentLevel,
    ObjectType,
    OperationType,
    ProtectType,
    TaskStatus,
    VaultStatus,
)
from controller.services import capacity, deletions, keys, tasks, vaults

log = logging.getLogger("cbr.controller.maintenance")

# The tasks this worker runs (no agent does).
OPERATIONS = frozenset({OperationType.DELETE, OperationType.PRUNE, OperationType.VERIFY,
                        OperationType.REPAIR, OperationType.VAULT_DELETE,
                        OperationType.REMOVE_RESOURCE})


# Backups whose manifests verify checks against the catalog's digest.
CATALOGUED = frozenset({BackupStatus.AVAILABLE, BackupStatus.RESTORING})


@dataclass
class _Opener:
    """A vault's storage, key and catalog facts for one maintenance task."""

    app: App
    url: str
    key: CustomerKey | None
    encrypted: bool
    expected_manifests: dict[str, str]
    known_damaged: set[str] = field(default_factory=set)
    """Backups a repair marked damaged (verify reports them, but as known)."""

    def open(self, *, load_index: bool = True) -> Any:
        return self.app.storage.repository(self.url, load_index=load_index, key=self.key,
                                           expect_encrypted=self.encrypted)


@dataclass
class ImportResult:
    vault_id: str
    imported: int = 0
    warnings: list[str] = field(default_factory=list)


class Maintenance:
    def __init__(self, app: App) -> None:
        self._app = app
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- the worker -----------------------------------------------------------------------

    def start(self) -> None:
        """Starts the worker and queues the tasks an earlier process left unfinished."""
        with self._app.db.begin() as s:
            left = list(s.scalars(select(Task.id).where(
                Task.agent_id == "", Task.operation_type.in_(OPERATIONS),
                Task.status.in_(tasks.OPEN_STATUSES)).order_by(Task.created_at)))
        for task_id in left:
            self.submit(task_id)

    def submit(self, task_id: str) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="maintenance",
                                                daemon=True)
                self._thread.start()
        self._queue.put(task_id)

    def stop(self, timeout: float = 10.0) -> None:
        with self._lock:
            thread = self._thread
        if thread is not None and thread.is_alive():
            self._queue.put(None)
            thread.join(timeout)

    def _run(self) -> None:
        while True:
            task_id = self._queue.get()
            if task_id is None:
                return
            try:
                self._run_task(task_id)
            except Exception:
                log.exception("maintenance task %s failed unexpectedly", task_id)
                self._finish(task_id, TaskStatus.FAILED, errors.InternalError.code,
                             "Internal error; the controller log has the details.", {})

    def _run_task(self, task_id: str) -> None:
        now = self._app.clock.now()
        with self._app.db.begin() as s:
            task = tasks.start_task(s, task_id, now)
            if task is None:
                return
            operation = task.operation_type
            vault = s.get(Vault, task.vault_id)
            url = vault.storage_url if vault is not None else ""
            info = dict(task.extra_info)
        if not url:
            if operation == OperationType.VAULT_DELETE:  # erased and forgotten before a restart
                self._finish(task_id, TaskStatus.SUCCESS, "", "", {})
            else:
                self._finish(task_id, TaskStatus.FAILED, errors.VaultNotFound.code,
                             "The vault is gone.", {})
            return
        log.info("running %s task %s on %s", operation, task_id, url)
        try:
            if operation == OperationType.VAULT_DELETE:  # erasing needs no key: it reads nothing
                self._delete_vault(task_id, url)
                return
            opener = self._opener(task_id)
            if operation == OperationType.REMOVE_RESOURCE:
                self._remove_backups(task_id, opener, list(info.get("backup_ids", [])))
            elif operation == OperationType.DELETE:
                self._delete(task_id, opener, str(info.get("backup_id", "")))
            elif operation == OperationType.PRUNE:
                self._prune(task_id, opener)
            elif operation == OperationType.VERIFY:
                self._verify(task_id, opener, bool(info.get("read_data", False)),
                             str(info.get("read_data_subset", "") or ""))
            elif operation == OperationType.REPAIR:
                self._repair(task_id, opener, bool(info.get("dry_run", False)))
        except errors.CbrError as exc:
            self._finish(task_id, TaskStatus.FAILED, exc.code, exc.message, {})
        except (StorageError, RepoError) as exc:
            err = faults.as_cbr_error(exc, f"Vault storage {url}")
            self._finish(task_id, TaskStatus.FAILED, err.code, err.detail, {})

    def _finish(self, task_id: str, status: TaskStatus, code: str, message: str,
                extra: dict[str, Any]) -> None:
        with self._app.db.begin() as s:
            tasks.finish_task(s, task_id, status, self._app.clock.now(), error_code=code,
                              error_message=message, extra_info=extra)
            task = s.get(Task, task_id)
            if status == TaskStatus.SUCCESS or task is None:
                return
            # What the task was deleting is error now: the user may delete it again.
            if task.operation_type == OperationType.DELETE:
                ids = [str(task.extra_info.get("backup_id", ""))]
            elif task.operation_type == OperationType.REMOVE_RESOURCE:
                ids = [str(i) for i in task.extra_info.get("backup_ids", [])]
            elif task.operation_type == OperationType.VAULT_DELETE:
                ids = list(s.scalars(select(Backup.id).where(
                    Backup.vault_id == task.vault_id, Backup.parent_id.is_(None))))
                vault = s.get(Vault, task.vault_id)
                if vault is not None:
                    vault.status = VaultStatus.ERROR
            else:
                return
            for backup_id in ids:
                for b in s.scalars(select(Backup).where(
                        (Backup.id == backup_id) | (Backup.parent_id == backup_id))):
                    b.status = BackupStatus.ERROR

    # -- operations -----------------------------------------------------------------------

    def _opener(self, task_id: str) -> _Opener:
        """How to open the task's vault: its URL, and its key when encrypted,
        checked now (a disabled or deleted key stops the task, naming it)."""
        with self._app.db.begin() as s:
            task = s.get(Task, task_id)
            vault = s.get(Vault, task.vault_id) if task is not None else None
            if vault is None:
                raise errors.VaultNotFound("The vault is gone.")
            key = keys.vault_key(s, self._app.root_key, vault, self._app.clock.now())
            expected: dict[str, str] = {}
            known: set[str] = set()
            if task is not None and task.operation_type in (OperationType.VERIFY,
                                                            OperationType.REPAIR):
                for backup_id, digest, status, info in s.execute(select(
                        Backup.id, Backup.manifest_sha256, Backup.status, Backup.extend_info,
                ).where(Backup.vault_id == vault.id)):
                    damaged = status == BackupStatus.ERROR and deletions.DAMAGED in (info or {})
                    if damaged:
                        known.add(backup_id)
                    if digest and (status in CATALOGUED or damaged):
                        expected[backup_id] = digest
            return _Opener(self._app, vault.storage_url, key, bool(vault.encrypted), expected,
                           known)

    def _delete(self, task_id: str, opener: _Opener, backup_id: str) -> None:
        with opener.open(load_index=False) as repo:
            deleted = prune.delete_backup(repo, backup_id)
        with self._app.db.begin() as s:
            task = s.get(Task, task_id)
            freed = deletions.forget_backup(s, backup_id)
            vault = s.get(Vault, task.vault_id) if task is not None else None
            if vault is not None:
                vault.used_bytes = max(0, vault.used_bytes - freed)
                capacity.usage_changed(s, vault, self._app.clock.now())
        report = self._prune_storage(opener)
        self._finish(task_id, TaskStatus.SUCCESS, "", "", {
            "manifests_deleted": len(deleted), **report})

    def _remove_backups(self, task_id: str, opener: _Opener, backup_ids: list[str]) -> None:
        """A resource's backups, deleted as one backup is (manifests, then the
        catalog, then a prune), so its space is free when the task ends."""
        deleted = 0
        with opener.open(load_index=False) as repo:
            for backup_id in backup_ids:
                deleted += len(prune.delete_backup(repo, backup_id))
        with self._app.db.begin() as s:
            for backup_id in backup_ids:
                deletions.forget_backup(s, backup_id)
        report = self._prune_storage(opener)
        self._finish(task_id, TaskStatus.SUCCESS, "", "", {
            "backups_deleted": len(backup_ids), "manifests_deleted": deleted, **report})

    def _delete_vault(self, task_id: str, url: str) -> None:
        objects, size = prune.erase_vault(self._app.storage.backend(url))
        self._app.storage.remove_empty_dirs(url)
        with self._app.db.begin() as s:
            task = s.get(Task, task_id)
            if task is not None:
                deletions.forget_vault(s, task.vault_id)
        self._finish(task_id, TaskStatus.SUCCESS, "", "", {"objects_deleted": objects,
                                                  "bytes_freed": size})

    def _prune(self, task_id: str, opener: _Opener) -> None:
        self._finish(task_id, TaskStatus.SUCCESS, "", "", self._prune_storage(opener))

    def _prune_storage(self, opener: _Opener) -> dict[str, Any]:
        with opener.open() as repo:
            report = prune.prune(repo, task_id="controller")
            used = _storage_used(repo)
        self._set_used(opener.url, used)
        return {**report.to_dict(), "vault_used_bytes": used}

    def _set_used(self, url: str, used: int) -> None:
        with self._app.db.begin() as s:
            vault = s.scalars(select(Vault).where(Vault.storage_url == url)).first()
            if vault is not None:
                vault.used_bytes = used
                capacity.usage_changed(s, vault, self._app.clock.now())

    def _repair(self, task_id: str, opener: _Opener, dry_run: bool) -> None:
        with opener.open(load_index=False) as repo:
            report = repair.repair(repo, dry_run=dry_run, task_id=task_id,
                                   expected_manifests=opener.expected_manifests)
            used = _storage_used(repo)
        with self._app.db.begin() as s:
            task = s.get(Task, task_id)
            vault_id = task.vault_id if task is not None else ""
            marks = deletions.mark_damage(s, vault_id, report.damage, report.backups_checked,
                                     self._app.clock.now(), dry_run=dry_run)
        if not dry_run:
            self._set_used(opener.url, used)
        extra = {**report.to_dict(), "vault_used_bytes": used,
                 "marked_damaged": ",".join(marks.damaged),
                 "marked_whole_again": ",".join(marks.whole_again),
                 "damaged_but_busy": ",".join(marks.busy)}
        log.info("repair%s of %s: %d damaged packs, %d chunks lost, damaged backups: %s",
                 " (dry run)" if dry_run else "", opener.url, len(report.damaged_packs),
                 report.chunks_lost, ", ".join(report.damaged_backups) or "none")
        self._finish(task_id, TaskStatus.SUCCESS, "", "", extra)

    def _verify(self, task_id: str, opener: _Opener, read_data: bool, subset: str) -> None:
        with opener.open() as repo:
            report = verify.verify(repo, read_data=read_data,
                                   expected_manifests=opener.expected_manifests,
                                   subset=DataSubset.parse(subset) if subset else None)
            used = _storage_used(repo)
        self._set_used(opener.url, used)
        extra = {**report.to_dict(), "vault_used_bytes": used}
        known = set(report.damaged_backups) <= opener.known_damaged and all(
            p.backups for p in report.problems)
        if report.ok or known:
            # Damage a repair already marked is no news: the vault is
            # consistent, and those backups say what they lack.
            if not report.ok:
                extra["known_damaged_backups"] = ",".join(report.damaged_backups)
            self._finish(task_id, TaskStatus.SUCCESS, "", "", extra)
        else:
            damaged = ", ".join(report.damaged_backups) or "no backup (unreferenced data)"
            self._finish(task_id, TaskStatus.FAILED, errors.DataIntegrityError.code,
                         f"{len(report.problems)} problems; damaged backups: {damaged}. "
                         f"First: {report.problems[0]}", extra)

    # -- synchronous calls ----------------------------------------------------------------

    def list_files(self, url: str, backup_id: str, path: str) -> list[backup_pb2.BackupFile]:
        with self._app.db.begin() as s:
            vault = s.scalars(select(Vault).where(Vault.storage_url == url)).first()
            backup = s.get(Backup, backup_id)
            key = (keys.vault_key(s, self._app.root_key, vault, self._app.clock.now())
                   if vault is not None else None)
            encrypted = bool(vault.encrypted) if vault is not None else None
            expected = backup.manifest_sha256 if backup is not None else ""
        repo = self._app.storage.reader(url, key=key, expect_encrypted=encrypted)
        try:
            manifest = repo.load_manifest(backup_id, expected_sha256=expected)
            if not isinstance(manifest.content, TreeContent):
                raise errors.InvalidParameter(f"Backup {backup_id} holds no file tree.",
                                              field="backup_id")
            key_id = manifest.chunk_key_id
            tree = decode_tree(repo.load_blob(manifest.content.root, key_id=key_id))
            parts = [p.encode("utf-8", "surrogateescape") for p in path.split("/") if p]
            for i, part in enumerate(parts):
                entry = next((e for e in tree if e.name == part), None)
                where = "/" + "/".join(p.decode("utf-8", "replace") for p in parts[:i + 1])
                if entry is None:
                    raise errors.PathNotInBackup(f"{where} is not in backup {backup_id}.",
                                                  path=where)
                if entry.type != EntryType.DIR or entry.subtree is None:
                    if i == len(parts) - 1:
                        return [file_pb(entry)]
                    raise errors.InvalidParameter(f"{where} is not a directory.",
                                                  field="path")
                tree = decode_tree(repo.load_blob(entry.subtree, key_id=key_id))
            return [file_pb(e) for e in tree]
        except RepoError as exc:
            raise faults.as_cbr_error(exc, f"Backup {backup_id}", backup_id=backup_id) from exc

    def import_storage(self, project_id: str, url: str, name: str,
                       size_gb: int, kms_key_id: str = "") -> ImportResult:
        """Rebuilds a vault and its catalog from the manifests in its storage.

        An encrypted storage needs ``kms_key_id``: a key here (owned or
        shared in) whose material wraps the storage's keys, e.g. the same
        material imported into this controller's key service."""
        now = self._app.clock.now()
        with self._app.db.begin() as s:
            self._app.storage.roots.check(url, vaults.storage_urls(s))
            key = None
            if kms_key_id:
                keys.key_for_new_vault(s, project_id, kms_key_id, ProtectType.BACKUP, now)
                key = keys.customer_key(self._app.root_key, s.get(Key, kms_key_id))  # type: ignore[arg-type]
        encrypted = self._app.storage.config(url).encrypted
        if encrypted and key is None:
            raise errors.InvalidParameter(
                f"The storage {url} is encrypted; name the key that protects it "
                "(kms_key_id).", field="kms_key_id")
        if key is not None and not encrypted:
            raise errors.InvalidParameter(f"The storage {url} is not encrypted; import it "
                                          "without kms_key_id.", field="kms_key_id")
        with self._app.storage.repository(url, load_index=False, key=key,
                                          expect_encrypted=encrypted) as repo:
            vault_id = repo.config.vault_id
            manifests: list[Manifest] = []
            warnings: list[str] = []
            digests: dict[str, str] = {}
            for backup_id in sorted(repo.list_manifests()):
                try:
                    manifests.append(repo.load_manifest(backup_id))
                    # Trusted from now on: later restores and verifies refuse another.
                    digests[backup_id] = hashlib.sha256(
                        repo.backend.get(layout.manifest_name(backup_id))).hexdigest()
                except RepoError as exc:
                    warnings.append(f"{backup_id}: {exc}")
        by_id = {m.backup_id: m for m in manifests}
        tops = [m for m in manifests if m.parent_id is None]
        kinds = {(ObjectType.SERVER if m.content is None else
                  ObjectType.TURBO if isinstance(m.content, TreeContent) else ObjectType.DISK)
                 for m in tops}
        object_type = kinds.pop() if len(kinds) == 1 else ObjectType.SERVER
        if len(kinds) > 0:
            warnings.append("backups of several resource types; the vault is a server vault")
        with self._app.db.begin() as s:
            if s.get(Vault, vault_id) is not None:
                raise errors.DuplicateVault(
                    f"Vault {vault_id} of that storage is already in this controller.",
                    vault_id=vault_id)
            spec = vaults.VaultSpec(
                name=name or f"imported-{vault_id[:8]}", object_type=object_type,
                protect_type=ProtectType.BACKUP,
                consistent_level=ConsistentLevel.CRASH_CONSISTENT,
                size_gb=size_gb or 1024, encrypted=encrypted,
                kms_key_id=kms_key_id if encrypted else "")
            # The stored vault id is kept, so manifests and catalog agree.
            vault = vaults.create_vault(s, project_id, self._app.config.region, spec, now,
                                        vault_id=vault_id)
            vault.storage_url = url
            checkpoints: set[str] = set()
            imported = 0
            for m in sorted(tops, key=lambda m: m.created_at):
                kids = [by_id[c] for c in m.children if c in by_id]
                if len(kids) != len(m.children):
                    warnings.append(f"{m.backup_id}: some disk manifests are missing")
                    continue
                if m.checkpoint_id and m.checkpoint_id not in checkpoints:
                    s.add(Checkpoint(id=m.checkpoint_id, project_id=project_id,
                                     vault_id=vault_id, name=m.name, description="",
                                     status=CheckpointStatus.AVAILABLE,
                                     auto_trigger=bool(m.extend_info.get("auto_trigger")),
                                     skipped_resources=[], created_at=m.created_at))
                    checkpoints.add(m.checkpoint_id)
                for b in (m, *kids):
                    row = _backup_from_manifest(b, project_id, vault_id, now)
                    row.manifest_sha256 = digests.get(b.backup_id, "")
                    row.extend_info = {**row.extend_info, "encrypted": encrypted}
                    s.add(row)
                s.flush()
                imported += 1
            vault.used_bytes = sum(int(b.stats.get("bytes_sent", 0)) for b in manifests)
            capacity.usage_changed(s, vault, now)
        return ImportResult(vault_id, imported, warnings)


def _storage_used(repo: Any) -> int:
    """What the vault takes in its storage now: every object, and the
    unfinished writes (a killed writer's) until they are removed."""
    stored = sum(info.size for info in repo.backend.list(""))
    return stored + repo.backend.remove_abandoned_writes(0, dry_run=True)[1]


def _backup_from_manifest(m: Manifest, project_id: str, vault_id: str,
                          now: dt.datetime) -> Backup:
    kind = (ObjectType.SERVER if m.content is None and m.children else
            ObjectType.TURBO if isinstance(m.content, TreeContent) else ObjectType.DISK)
    return Backup(
        id=m.backup_id, project_id=project_id, vault_id=vault_id,
        checkpoint_id=m.checkpoint_id, parent_id=m.parent_id, name=m.name,
        description=m.description, resource_id=m.resource.id, resource_name=m.resource.name,
        resource_type=kind, resource_size_bytes=m.resource.size, status=BackupStatus.AVAILABLE,
        image_type=m.image_type, incremental=m.incremental,
        stored_bytes=int(m.stats.get("bytes_sent", 0)), extend_info=dict(m.extend_info),
        protected_at=m.protected_at or m.created_at, expired_at=m.expired_at,
        created_at=m.created_at, updated_at=now)
