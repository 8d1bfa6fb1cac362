"""A backup's directory tree as the vault holds it (``docs/storage-format.md``
section 9): finding a path in it, the sizes it records, where a file had
its names.

These only read stored trees, and every side needs them: the command layer
lists a backup and sizes a restore, the backup reads its parent's trees,
the restore finds what it restores. The two directions live apart, as
restic's ``archiver`` and ``restorer`` do: the backup in ``tree_backup``
(the walk), ``tree_files`` (file contents) and ``tree_entries`` (what each
name records); the restore in ``tree_restore``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from agent.dataplane import DataplaneError
from cbr import errors
from cbr.repo import Repository, TreeContent
from cbr.repo.objects.tree import (
    EntryType,
    TreeEntry,
    decode_tree,
    doc_name,
    tree_docs,
    validate_name,
)

SMALL_FILE = 256 << 10  # below the chunker's minimum: one chunk, no CDC


class PathNotInBackup(DataplaneError):
    """The path named is not in the backup."""

    code = errors.PathNotInBackup.code


def walk_to(repo: Repository, content: TreeContent, path: Sequence[bytes],
            key_id: bytes | None = None) -> tuple[list[TreeEntry], TreeEntry | None]:
    """(entries of the directory at ``path``, None) or ([], the entry) for a non-directory."""
    entries = decode_tree(repo.load_blob(content.root, key_id=key_id))
    for i, name in enumerate(path):
        validate_name(name)
        entry = next((e for e in entries if e.name == name), None)
        where = "/" + "/".join(os.fsdecode(p) for p in path[:i + 1])
        if entry is None:
            raise PathNotInBackup(f"{where} is not in the backup")
        if entry.type != EntryType.DIR or entry.subtree is None:
            if i == len(path) - 1:
                return [], entry
            raise PathNotInBackup(f"{where} is not a directory")
        entries = decode_tree(repo.load_blob(entry.subtree, key_id=key_id))
    return entries, None


def restore_size(repo: Repository, content: TreeContent, path: Sequence[bytes] = (),
                 key_id: bytes | None = None) -> int | None:
    """The bytes a restore of the tree, or of what is at ``path``, writes
    (its progress total); None for a whole tree backed up before backups
    recorded it."""
    if not path:
        return content.size
    parent_entries, _ = walk_to(repo, content, path[:-1], key_id)
    entry = next((e for e in parent_entries if e.name == path[-1]), None)
    if entry is None:
        raise PathNotInBackup(f"/{'/'.join(os.fsdecode(p) for p in path)} is not in the backup")
    if entry.type == EntryType.FILE:
        return entry.size
    if entry.type == EntryType.DIR and entry.subtree is not None:
        if entry.tree_size is not None:
            return entry.tree_size
        return stored_tree_size(repo, entry.subtree, {}, key_id)
    return 0


def list_tree(repo: Repository, content: TreeContent,
              path: Sequence[bytes] = (), key_id: bytes | None = None) -> list[TreeEntry]:
    """The entries at ``path``; ``key_id`` is the backup's namespace (its
    manifest's ``chunk_key_id``; the vault's own when None)."""
    entries, single = walk_to(repo, content, path, key_id)
    return [single] if single is not None else entries


def size_of(entries: list[TreeEntry], kept: list[tuple[bytes, dict[str, Any]]]) -> int:
    """A directory's ``tree_size`` (section 9): its files' sizes and its
    subdirectories' tree sizes; hard links add nothing."""
    total = 0
    for e in entries:
        if e.type == EntryType.FILE:
            total += e.size
        elif e.type == EntryType.DIR:
            total += e.tree_size or 0
    for _name, doc in kept:
        kind = doc.get("type")
        if kind == "file":
            total += int(doc.get("size", 0))
        elif kind == "dir":
            total += int(doc.get("tree_size", 0))
    return total


def stored_tree_size(repo: Repository, tree_id: bytes, memo: dict[bytes, int],
                     key_id: bytes | None = None) -> int:
    """The bytes of every file below a stored tree, from its blobs (using
    the ``tree_size`` of directories that have one)."""
    if tree_id in memo:
        return memo[tree_id]
    total = 0
    for doc in tree_docs(repo.load_blob(tree_id, key_id=key_id)):
        kind = doc.get("type")
        if kind == "file":
            total += int(doc.get("size", 0))
        elif kind == "dir":
            if "tree_size" in doc:
                total += int(doc["tree_size"])
            else:
                subtree = subtree_of(doc)
                if subtree is not None:
                    total += stored_tree_size(repo, subtree, memo, key_id)
    memo[tree_id] = total
    return total


def subtree_of(doc: dict[str, Any] | None) -> bytes | None:
    """The parent backup's subtree id of a directory document, if it has one."""
    if doc is None or doc.get("type") != EntryType.DIR.value:
        return None
    try:
        subtree = bytes.fromhex(doc["subtree"])
    except (KeyError, TypeError, ValueError):
        return None
    return subtree if len(subtree) == 32 else None


def names_of(repo: Repository, tree_id: bytes, inodes: frozenset[tuple[int, int]]
             ) -> list[tuple[tuple[bytes, ...], bytes]]:
    """Where the parent backup had names of these files (device, inode):
    the change journal's files whose link count changed and whose names
    the kernel cannot tell. Reads the parent's tree blobs, not the file
    system."""
    found: list[tuple[tuple[bytes, ...], bytes]] = []
    stack: list[tuple[tuple[bytes, ...], bytes]] = [((), tree_id)]
    while stack:
        rel, tid = stack.pop()
        for doc in tree_docs(repo.load_blob(tid)):
            name = doc_name(doc)
            if name is None:
                continue
            if (doc.get("dev", 0), doc.get("inode", 0)) in inodes:
                found.append((rel, name))
            subtree = subtree_of(doc)
            if subtree is not None:
                stack.append(((*rel, name), subtree))
    return found
