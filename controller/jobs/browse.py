"""Reading file-system backups for the API: walking one, diffing two.

The controller reads only tree blobs here (directory listings), never file
content, and streams what it finds: a directory at a time, so a call's
memory is one directory per level of the tree, whatever the tree's size.
Which backups a caller may read (account, type, status) is the servicer's
decision; this module opens a checked backup's storage with its own vault's
key and turns storage errors into CBR errors.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from google.protobuf.timestamp_pb2 import Timestamp

from cbr import errors, faults
from cbr.diff_pb import change_pb, summary_pb
from cbr.repo import RepoError, Repository
from cbr.repo.objects.diff import Options, Summary, diff_trees, display_path
from cbr.repo.objects.manifest import TreeContent
from cbr.repo.objects.tree import EntryType, TreeEntry, decode_tree, root_entry
from cbr.v1 import backup_pb2
from controller.app import App
from controller.persistence.models import Backup, Vault
from controller.services import keys

BATCH = 500
"""Changes or entries per streamed message: bounds each message."""


def file_pb(entry: TreeEntry) -> backup_pb2.BackupFile:
    """A tree entry as the API shows it; chunk ids never leave the controller
    (in an encrypted vault they would let a reader confirm known content)."""
    mtime = Timestamp()
    mtime.FromNanoseconds(int(entry.mtime or 0))
    target = ""
    if entry.target is not None:
        target = entry.target.decode("utf-8", "replace")
    elif entry.link:
        target = "/" + "/".join(p.decode("utf-8", "replace") for p in entry.link)
    return backup_pb2.BackupFile(
        name=entry.name.decode("utf-8", "replace"), type=str(entry.type),
        size=int(entry.size or 0), mode=int(entry.mode or 0), uid=int(entry.uid or 0),
        gid=int(entry.gid or 0), user=entry.user or "", group=entry.group or "",
        mtime=mtime, target=target, changed=bool(entry.changed), raw_name=entry.name,
        raw_target=entry.target or b"", xattrs=entry.xattrs, rdev=int(entry.rdev or 0))


@dataclass
class OpenTree:
    """A backup's tree in its vault's storage, read in the backup's namespace."""

    backup_id: str
    repo: Repository
    key_id: bytes
    content: TreeContent

    def entries(self, subtree: bytes | None) -> list[TreeEntry]:
        if subtree is None:
            return []
        return decode_tree(self.repo.load_blob(subtree, key_id=self.key_id),
                           f"tree {subtree.hex()}")

    def list(self, _path: bytes, entry: TreeEntry) -> Sequence[TreeEntry]:
        """A :data:`cbr.repo.objects.diff.Lister` over this backup."""
        return self.entries(entry.subtree)

    def descend(self, path: str) -> tuple[bytes, TreeEntry]:
        """(raw path, entry) of the directory at ``path`` ("/"-separated);
        the root's entry carries the manifest's ``root_meta`` if it has one."""
        entry = root_entry(self.content.root, self.content.root_meta)
        raw = b""
        for part in [p.encode("utf-8", "surrogateescape") for p in path.split("/") if p]:
            raw += b"/" + part
            found = next((e for e in self.entries(entry.subtree) if e.name == part), None)
            if found is None:
                raise errors.PathNotInBackup(
                    f"{display_path(raw)} is not in backup {self.backup_id}.",
                    path=display_path(raw), backup_id=self.backup_id)
            if found.type is not EntryType.DIR:
                raise errors.InvalidParameter(
                    f"{display_path(raw)} is a {found.type} in backup {self.backup_id}; "
                    "give a directory.", field="path")
            entry = found
        return raw, entry


def open_tree(app: App, backup_id: str) -> OpenTree:
    """The tree of a backup the caller was allowed to read, with its own
    vault's key (two backups of one diff may be in two vaults)."""
    with app.db.begin() as s:
        backup = s.get(Backup, backup_id)
        vault = s.get(Vault, backup.vault_id) if backup is not None else None
        if backup is None or vault is None:
            raise errors.ResourceNotFound(f"No backup with id {backup_id!r}.",
                                          backup_id=backup_id)
        key = keys.vault_key(s, app.root_key, vault, app.clock.now())
        encrypted = bool(vault.encrypted)
        url = vault.storage_url
        expected = backup.manifest_sha256
    try:
        repo = app.storage.reader(url, key=key, expect_encrypted=encrypted)
        manifest = repo.load_manifest(backup_id, expected_sha256=expected)
    except RepoError as exc:
        raise faults.as_cbr_error(exc, f"Backup {backup_id}", backup_id=backup_id) from exc
    if not isinstance(manifest.content, TreeContent):
        raise errors.InvalidParameter(f"Backup {backup_id} holds no file tree.",
                                      field="backup_id")
    return OpenTree(backup_id, repo, manifest.chunk_key_id, manifest.content)


def diff_backups(app: App, backup_id: str, other_backup_id: str,
                 path: str) -> Iterator[backup_pb2.DiffBackupsResponse]:
    """What changed from ``backup_id`` to ``other_backup_id``, streamed.

    In one chunk-id namespace (the same vault lineage) contents are compared
    by chunk ids and equal subtrees are skipped unread; across namespaces
    ids are unrelated, so every directory is read and a file's content is
    judged by its size and mtime (the summary says so)."""
    old, new = open_tree(app, backup_id), open_tree(app, other_backup_id)
    same_namespace = old.key_id == new.key_id
    prefix, old_dir = old.descend(path)
    _, new_dir = new.descend(path)
    # A root's own metadata is known only from manifests that keep root_meta.
    compare_root = bool(prefix) or (old.content.root_meta is not None
                                    and new.content.root_meta is not None)
    summary = Summary()
    batch: list[backup_pb2.BackupChange] = []
    try:
        for change in diff_trees(old_dir, new_dir, old.list, new.list,
                                 options=Options(content_ids=same_namespace),
                                 compare_root=compare_root, prefix=prefix):
            summary.count(change)
            batch.append(change_pb(change))
            if len(batch) >= BATCH:
                yield backup_pb2.DiffBackupsResponse(changes=batch)
                batch = []
    except RepoError as exc:
        raise faults.as_cbr_error(exc, f"Backups {backup_id} and {other_backup_id}",
                                  backup_id=backup_id) from exc
    yield backup_pb2.DiffBackupsResponse(
        changes=batch, summary=summary_pb(summary, content_by_metadata=not same_namespace))


def walk_files(app: App, backup_id: str, path: str
               ) -> Iterator[backup_pb2.WalkBackupFilesResponse]:
    """Every directory's listing below ``path``, depth first in name order,
    a directory before those inside it: the order in which
    :func:`cbr.repo.objects.diff.diff_trees` asks for them."""
    tree = open_tree(app, backup_id)
    prefix, top = tree.descend(path)
    known = bool(prefix) or tree.content.root_meta is not None
    try:
        entries = tree.entries(top.subtree)
        first = True
        for message in _listing(prefix, entries):
            if first and known:
                message.entry.CopyFrom(file_pb(top))
            first = False
            yield message
        stack = [_subdirs(prefix, entries)]
        while stack:
            item = next(stack[-1], None)
            if item is None:
                stack.pop()
                continue
            where, entry = item
            entries = tree.entries(entry.subtree)
            yield from _listing(where, entries)
            stack.append(_subdirs(where, entries))
    except RepoError as exc:
        raise faults.as_cbr_error(exc, f"Backup {backup_id}", backup_id=backup_id) from exc


def _subdirs(path: bytes, entries: list[TreeEntry]) -> Iterator[tuple[bytes, TreeEntry]]:
    for e in sorted(entries, key=lambda e: e.name):
        if e.type is EntryType.DIR:
            yield path + b"/" + e.name, e


def _listing(path: bytes, entries: list[TreeEntry]
             ) -> Iterator[backup_pb2.WalkBackupFilesResponse]:
    ordered = sorted(entries, key=lambda e: e.name)
    start = 0
    while True:
        part = ordered[start:start + BATCH]
        start += BATCH
        yield backup_pb2.WalkBackupFilesResponse(
            directory=display_path(path) or "/", raw_directory=path,
            files=[file_pb(e) for e in part], continued=start < len(ordered))
        if start >= len(ordered):
            return
