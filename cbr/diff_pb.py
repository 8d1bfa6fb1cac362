"""The wire form of a tree diff (``BackupChange``, ``DiffSummary``).

Shared by the controller (``DiffBackups``, two backups) and the CLI
(``cbr backup diff --against``, a backup and a local directory), so both
kinds of diff print and serialize the same way. The comparison itself is
:mod:`cbr.repo.objects.diff`.
"""

from __future__ import annotations

from cbr.repo.objects.diff import Change, ChangeKind, Summary, display_path
from cbr.v1 import backup_pb2

KIND_PB = {ChangeKind.ADDED: backup_pb2.CHANGE_KIND_ADDED,
           ChangeKind.REMOVED: backup_pb2.CHANGE_KIND_REMOVED,
           ChangeKind.MODIFIED: backup_pb2.CHANGE_KIND_MODIFIED}
KIND_OF_PB = {v: k for k, v in KIND_PB.items()}


def change_pb(change: Change) -> backup_pb2.BackupChange:
    both = change.old is not None and change.new is not None
    return backup_pb2.BackupChange(
        path=display_path(change.path), raw_path=change.path, kind=KIND_PB[change.kind],
        type=str(change.type),
        old_type=str(change.old.type) if both and change.old is not None else "",
        changed=list(change.what),
        old_size=change.old.size if change.old is not None else 0,
        size=change.new.size if change.new is not None else 0)


def summary_pb(summary: Summary, *, content_by_metadata: bool) -> backup_pb2.DiffSummary:
    return backup_pb2.DiffSummary(content_by_metadata=content_by_metadata, **summary.to_dict())
