"""Every chunk a backup reaches (``docs/storage-format.md`` sections 8-10).

Prune marks with it, verify checks with it, replication will send with it.
It streams: one disk-map segment or one directory at a time, never a whole
disk's map or a whole tree in memory (the set of subtrees already walked in
one call is kept, so a tree shared by many directories is walked once).
"""

from __future__ import annotations

from collections.abc import Iterator

from cbr.repo.blob import BlobType
from cbr.repo.disk_map import decode_segment
from cbr.repo.ids import ID_SIZE
from cbr.repo.manifest import DiskContent, Manifest, TreeContent
from cbr.repo.repository import Repository
from cbr.repo.tree import decode_chunk_list, decode_tree


def iter_reachable(repo: Repository, manifest: Manifest,
                   seen_trees: set[bytes] | None = None) -> Iterator[tuple[BlobType, bytes]]:
    """(blob type, chunk id) of every blob the manifest's content reaches,
    in the manifest's namespace. Metadata blobs are yielded before they are
    read, so a caller checking existence sees the id even if reading fails."""
    key_id = manifest.chunk_key_id
    content = manifest.content
    if isinstance(content, DiskContent):
        for number, segment_id in content.segments:
            yield BlobType.META, segment_id
            data = repo.load_blob(segment_id, key_id=key_id)
            _blocks, ids = decode_segment(data, number, content.segment_entries,
                                          f"segment {number} ({segment_id.hex()})")
            for i in range(0, len(ids), ID_SIZE):
                yield BlobType.DATA, ids[i:i + ID_SIZE]
    elif isinstance(content, TreeContent):
        seen = seen_trees if seen_trees is not None else set()
        stack = [content.root]
        while stack:
            tree_id = stack.pop()
            if tree_id in seen:
                continue
            seen.add(tree_id)
            yield BlobType.META, tree_id
            for entry in decode_tree(repo.load_blob(tree_id, key_id=key_id),
                                     f"tree {tree_id.hex()}"):
                for cid in entry.content:
                    yield BlobType.DATA, cid
                for list_id in entry.content_list:
                    yield BlobType.META, list_id
                    for cid in decode_chunk_list(repo.load_blob(list_id, key_id=key_id)):
                        yield BlobType.DATA, cid
                if entry.subtree is not None:
                    stack.append(entry.subtree)


def complete_manifests(repo: Repository) -> tuple[list[Manifest], list[str]]:
    """Manifests that belong to finished backups, and the ids skipped.

    A disk manifest whose server manifest does not exist is part of an
    unfinished server backup (section 10): it is left out.
    """
    manifests = {}
    for backup_id in repo.list_manifests():
        manifests[backup_id] = repo.load_manifest(backup_id)
    kept, skipped = [], []
    for m in manifests.values():
        if m.parent_id is not None and m.parent_id not in manifests:
            skipped.append(m.backup_id)
        else:
            kept.append(m)
    return kept, skipped
