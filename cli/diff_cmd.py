"""`cbr backup diff`: what changed between two file-system backups, or
between a backup and a directory on this machine.

Two backups are compared by the controller (``DiffBackups``), which reads
both trees and skips what they share. ``--against PATH`` walks PATH here
(``lstat``, never following a symlink) while the controller streams the
backup's directory listings (``WalkBackupFiles``) in the order the walk needs
them; both sides go through the same comparison (:mod:`cbr.repo.objects.diff`). A
file's content cannot be compared with the backup's from here (chunk ids are
keyed with the vault's key), so a file counts as modified when its size or
mtime differs, as restic's change detection does.

Output: one line per change with restic's marks, then a summary; with
``--output json``, one JSON object per change and a last one with the
summary, so a huge diff streams instead of building one document.
"""

from __future__ import annotations

import argparse
import base64
import errno
import os
import stat
from collections.abc import Iterator, Sequence
from typing import Any

from cbr.diff_pb import KIND_OF_PB, change_pb, summary_pb
from cbr.repo.objects.diff import (
    XATTRS,
    Options,
    Summary,
    diff_trees,
    display_path,
    letter,
)
from cbr.repo.objects.tree import EntryType, TreeEntry, root_entry
from cbr.v1 import backup_pb2
from cli._common import CliError, Context, add_command, fmt_bytes

HELP = "what changed between two file-system backups, or a backup and a local directory"
EPILOG = (
    "Marks: + added, - removed, M content changed, U metadata changed (mode, owner, mtime, "
    "xattrs, link target), T type changed. With --against, a file counts as changed in "
    "content when its size or mtime differs (content is not read); symlinks are never "
    "followed. Bytes are sizes of regular files: added plus the new size of changed ones, "
    "removed plus the old size of changed ones."
)


def register(group: Any) -> None:
    p = add_command(
        group,
        "diff",
        cmd_diff,
        HELP,
        rpc=("BackupService.DiffBackups", "BackupService.WalkBackupFiles"),
    )
    p.epilog = EPILOG + " " + (p.epilog or "")
    p.add_argument("backup_id", metavar="BACKUP_ID", help="the older side")
    p.add_argument(
        "other_backup_id", nargs="?", metavar="OTHER_BACKUP_ID", help="the newer side"
    )
    p.add_argument(
        "--against",
        metavar="PATH",
        help="compare with this local directory instead of another backup",
    )
    p.add_argument(
        "--path", default="", help="only this directory of the backup(s) (e.g. etc/nginx)"
    )


def cmd_diff(ctx: Context, args: argparse.Namespace) -> int:
    if bool(args.other_backup_id) == bool(args.against):
        raise CliError("give OTHER_BACKUP_ID or --against PATH (one of them)")
    if args.against:
        changes, done = _against(ctx, args.backup_id, args.path, args.against)
    else:
        changes, done = _between(ctx, args.backup_id, args.other_backup_id, args.path)
    for change in changes:
        _print_change(ctx, change)
    _print_summary(ctx, done())
    return 0


# -- two backups: the controller compares ------------------------------------------------


def _between(
    ctx: Context, backup_id: str, other_id: str, path: str
) -> tuple[Iterator[backup_pb2.BackupChange], Any]:
    stream = ctx.client.backups.DiffBackups(
        backup_pb2.DiffBackupsRequest(backup_id=backup_id, other_backup_id=other_id, path=path),
        timeout=ctx.stream_timeout,
    )
    summary = backup_pb2.DiffSummary()

    def changes() -> Iterator[backup_pb2.BackupChange]:
        for response in stream:
            yield from response.changes
            if response.HasField("summary"):
                summary.CopyFrom(response.summary)

    return changes(), lambda: summary


# -- a backup and a local directory: compared here ----------------------------------------


def _against(
    ctx: Context, backup_id: str, path: str, local: str
) -> tuple[Iterator[backup_pb2.BackupChange], Any]:
    root = os.fsencode(os.path.abspath(local))
    try:
        st = os.lstat(root)
    except OSError as exc:
        raise CliError(f"cannot read {local}: {exc.strerror}") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise CliError(f"{local} is not a directory")
    stream = ctx.client.backups.WalkBackupFiles(
        backup_pb2.WalkBackupFilesRequest(backup_id=backup_id, path=path),
        timeout=ctx.stream_timeout,
    )
    listings = Listings(stream)
    prefix, backup_top = listings.top()
    local_top = local_entry(b"", st, root)
    summary = Summary()
    options = Options(
        content_ids=False,
        loose_hardlinks=True,
        ignore=frozenset() if hasattr(os, "listxattr") else frozenset({XATTRS}),
    )

    def list_local(where: bytes, _entry: TreeEntry) -> list[TreeEntry]:
        return scan(root + where[len(prefix):])

    def changes() -> Iterator[backup_pb2.BackupChange]:
        for change in diff_trees(
            backup_top if backup_top is not None else root_entry(None, None),
            local_top,
            listings.list,
            list_local,
            options=options,
            compare_root=backup_top is not None,
            prefix=prefix,
        ):
            summary.count(change)
            yield change_pb(change)

    return changes(), lambda: summary_pb(summary, content_by_metadata=True)


class Listings:
    """The backup's directory listings as ``WalkBackupFiles`` streams them:
    depth first in name order, the order :func:`diff_trees` asks for them,
    so each is read when asked for and only one per level is held."""

    def __init__(self, stream: Iterator[backup_pb2.WalkBackupFilesResponse]) -> None:
        self._stream = iter(stream)
        self._next: backup_pb2.WalkBackupFilesResponse | None = next(self._stream, None)

    def top(self) -> tuple[bytes, TreeEntry | None]:
        """The walked directory's path and its own entry, if the backup knows it."""
        first = self._next
        if first is None:
            raise CliError("the controller sent no listing")
        entry = entry_of(first.entry) if first.HasField("entry") else None
        return first.raw_directory, entry

    def list(self, path: bytes, _entry: TreeEntry) -> list[TreeEntry]:
        # Listings the walk did not ask for (none, when both keep the order) are passed.
        while self._next is not None and self._next.raw_directory != path:
            self._next = next(self._stream, None)
        if self._next is None:
            raise CliError(f"the controller's listing ended before {display_path(path)}")
        entries: list[TreeEntry] = []
        while True:
            message = self._next
            entries.extend(entry_of(f) for f in message.files)
            self._next = next(self._stream, None)
            if not message.continued or self._next is None:
                return entries


def entry_of(f: backup_pb2.BackupFile) -> TreeEntry:
    """A listed file as a tree entry, with what the comparison reads."""
    return TreeEntry(
        name=f.raw_name or f.name.encode(),
        type=EntryType(f.type),
        mode=f.mode,
        uid=f.uid,
        gid=f.gid,
        mtime=f.mtime.ToNanoseconds(),
        size=f.size,
        rdev=f.rdev,
        xattrs=dict(f.xattrs),
        target=f.raw_target if f.type == EntryType.SYMLINK else None,
    )


def scan(path: bytes) -> list[TreeEntry]:
    """A local directory's entries by ``lstat``; a name gone meanwhile is skipped."""
    try:
        names = [e.name for e in os.scandir(path)]
    except OSError as exc:
        raise CliError(f"cannot read {display_path(path)}: {exc.strerror}") from exc
    out = []
    for name in names:
        child = path + b"/" + name
        try:
            out.append(local_entry(name, os.lstat(child), child))
        except FileNotFoundError:
            continue
    return out


def local_entry(name: bytes, st: os.stat_result, path: bytes) -> TreeEntry:
    """The entry a backup of ``path`` would record, as far as a diff compares."""
    mode = st.st_mode
    kind = (
        EntryType.DIR if stat.S_ISDIR(mode)
        else EntryType.FILE if stat.S_ISREG(mode)
        else EntryType.SYMLINK if stat.S_ISLNK(mode)
        else EntryType.FIFO if stat.S_ISFIFO(mode)
        else EntryType.CHARDEV if stat.S_ISCHR(mode)
        else EntryType.BLOCKDEV if stat.S_ISBLK(mode)
        else EntryType.SOCKET
    )
    entry = TreeEntry(
        name=name,
        type=kind,
        mode=stat.S_IMODE(mode),
        uid=st.st_uid,
        gid=st.st_gid,
        mtime=st.st_mtime_ns,
        size=st.st_size if kind in (EntryType.FILE, EntryType.SYMLINK) else 0,
        nlink=st.st_nlink,
        rdev=st.st_rdev if kind in (EntryType.CHARDEV, EntryType.BLOCKDEV) else 0,
        xattrs=_xattrs(path),
    )
    if kind is EntryType.SYMLINK:
        try:
            entry.target = os.readlink(path)
        except OSError:
            entry.target = b""
    return entry


def _xattrs(path: bytes) -> dict[str, bytes]:
    """Extended attributes, without following a symlink; none where unreadable."""
    if not hasattr(os, "listxattr"):
        return {}
    out: dict[str, bytes] = {}
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in (errno.ENOTSUP, errno.EPERM, errno.EACCES, errno.ENOENT):
            raise CliError(f"cannot read xattrs of {display_path(path)}: {exc}") from exc
        return out
    for attr in names:
        try:
            out[attr] = os.getxattr(path, attr, follow_symlinks=False)
        except OSError:
            continue
    return out


# -- output ----------------------------------------------------------------------------------


def change_doc(change: backup_pb2.BackupChange) -> dict[str, Any]:
    """One change as JSON: kinds by their short names, sizes as numbers, and
    the exact path bytes in base64 beside the readable path."""
    return {
        "path": change.path,
        "raw_path": base64.b64encode(change.raw_path).decode(),
        "kind": KIND_OF_PB[change.kind].value,
        "type": change.type,
        "old_type": change.old_type,
        "changed": list(change.changed),
        "old_size": change.old_size,
        "size": change.size,
    }


def change_line(change: backup_pb2.BackupChange) -> str:
    mark = letter(KIND_OF_PB[change.kind], list(change.changed))
    slash = "/" if change.type == EntryType.DIR and change.path != "/" else ""
    return f"{mark}    {change.path}{slash}"


def summary_doc(summary: backup_pb2.DiffSummary) -> dict[str, Any]:
    return {
        "added": summary.added,
        "removed": summary.removed,
        "modified": summary.modified,
        "bytes_added": summary.bytes_added,
        "bytes_removed": summary.bytes_removed,
        "content_by_metadata": summary.content_by_metadata,
    }


def summary_lines(summary: backup_pb2.DiffSummary) -> Sequence[str]:
    return [
        f"Added:    {summary.added} entries, {fmt_bytes(summary.bytes_added)}",
        f"Removed:  {summary.removed} entries, {fmt_bytes(summary.bytes_removed)}",
        f"Changed:  {summary.modified} entries",
    ]


def _print_change(ctx: Context, change: backup_pb2.BackupChange) -> None:
    if ctx.out.json:
        ctx.out.json_value(change_doc(change), compact=True)
    else:
        ctx.out.message(change_line(change))


def _print_summary(ctx: Context, summary: backup_pb2.DiffSummary) -> None:
    if ctx.out.json:
        ctx.out.json_value({"summary": summary_doc(summary)}, compact=True)
        return
    ctx.out.message("")
    for line in summary_lines(summary):
        ctx.out.message(line)
    if summary.content_by_metadata:
        ctx.out.note("content compared by size and mtime, not read")
