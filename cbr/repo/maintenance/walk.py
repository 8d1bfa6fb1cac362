"""Every chunk a backup reaches (``docs/storage-format.md`` sections 8-10).

Prune marks with it, verify checks with it, replication will send with it.
It streams: one disk-map segment or one directory at a time, never a whole
disk's map or a whole tree in memory. The only state that grows is the set
of metadata blobs already walked in one call (or in several calls sharing
``seen``), so a subtree shared by many directories or backups is walked once.

This module must not decide what a missing chunk means: it yields ids and
lets loading errors through; prune and verify judge.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from cbr.repo.content.blob import BlobType
from cbr.repo.content.ids import ID_SIZE
from cbr.repo.errors import ChunkNotFound, ManifestNotFound, RepoError
from cbr.repo.objects.disk_map import decode_segment
from cbr.repo.objects.manifest import DiskContent, Manifest, TreeContent
from cbr.repo.objects.tree import (
    TreeEntry,
    TreeRefs,
    decode_chunk_list,
    decode_tree,
    decode_tree_refs,
)
from cbr.repo.repository import Repository

BlobLoader = Callable[[bytes, bytes], bytes]
"""``load(key_id, chunk_id) -> verified plaintext`` of a metadata blob."""


def iter_reachable(repo: Repository, manifest: Manifest, seen: set[bytes] | None = None, *,
                   load: BlobLoader | None = None, check_trees: bool = True,
                   on_lost: Callable[[bytes], None] | None = None,
                   ) -> Iterator[tuple[BlobType, bytes]]:
    """(blob type, chunk id) of every blob the manifest's content reaches,
    in the manifest's namespace (``manifest.chunk_key_id``).

    Metadata blobs (segments, trees, chunk lists) are yielded *before* they
    are read, so a caller checking existence sees the id even when reading
    it then fails. A metadata id already in ``seen`` is yielded but not
    walked again (its contents were yielded before); pass one set to several
    calls to share that, or none to walk each manifest in full. Data ids may
    repeat. ``load`` replaces :meth:`Repository.load_blob` (prune reads blobs
    from packs no index lists any more). ``check_trees=False`` reads only
    the references of tree entries (:func:`decode_tree_refs`), for walks
    that copy blobs and never restore from what they read. With ``on_lost``,
    a metadata blob found nowhere (:class:`ChunkNotFound`) is passed to it
    and the walk goes on past it; any other error still stops the walk.
    """
    key_id = manifest.chunk_key_id
    walked = seen if seen is not None else set()

    def read(chunk_id: bytes) -> bytes | None:
        try:
            if load is not None:
                return load(key_id, chunk_id)
            return repo.load_blob(chunk_id, key_id=key_id)
        except ChunkNotFound:
            if on_lost is None:
                raise
            on_lost(chunk_id)
            return None

    content = manifest.content
    if isinstance(content, DiskContent):
        for number, segment_id in content.segments:
            yield BlobType.META, segment_id
            if segment_id in walked:
                continue
            walked.add(segment_id)
            if (segment := read(segment_id)) is None:
                continue
            _blocks, ids = decode_segment(segment, number, content.segment_entries,
                                          f"segment {number} ({segment_id.hex()})")
            for i in range(0, len(ids), ID_SIZE):
                yield BlobType.DATA, bytes(ids[i:i + ID_SIZE])
    elif isinstance(content, TreeContent):
        stack = [content.root]
        while stack:
            tree_id = stack.pop()
            yield BlobType.META, tree_id
            if tree_id in walked:
                continue
            walked.add(tree_id)
            label = f"tree {tree_id.hex()}"
            if (tree := read(tree_id)) is None:
                continue
            entries: Sequence[TreeEntry | TreeRefs] = \
                decode_tree(tree, label) if check_trees else decode_tree_refs(tree, label)
            for entry in entries:
                yield from ((BlobType.DATA, cid) for cid in entry.content)
                for list_id in entry.content_list:
                    yield BlobType.META, list_id
                    if list_id in walked:
                        continue
                    walked.add(list_id)
                    if (chunk_list := read(list_id)) is None:
                        continue
                    for cid in decode_chunk_list(chunk_list, f"chunk list {list_id.hex()}"):
                        yield BlobType.DATA, cid
                if entry.subtree is not None:
                    stack.append(entry.subtree)


def complete_manifests(repo: Repository, damaged: dict[str, str] | None = None,
                       ) -> tuple[list[Manifest], list[str]]:
    """Manifests that belong to finished backups, and the ids skipped.

    A disk manifest whose server manifest does not exist is part of an
    unfinished server backup (section 10): it is left out, as if deleted.
    Manifests are small (a 10 TiB disk lists 2,560 segments), so all are held.
    A manifest that cannot be read raises (what it reaches is unknown, which
    stops prune), unless ``damaged`` is given: then it is recorded there (id
    -> why) and the others are still returned, so one damaged manifest costs
    only its own backup to verify and repair.
    """
    manifests: dict[str, Manifest] = {}
    for backup_id in repo.list_manifests():
        try:
            manifests[backup_id] = repo.load_manifest(backup_id)
        except ManifestNotFound:
            continue  # deleted while listing
        except RepoError as exc:
            if damaged is None:
                raise
            damaged[backup_id] = str(exc)
    kept, skipped = [], []
    for m in manifests.values():
        if m.parent_id is not None and m.parent_id not in manifests:
            skipped.append(m.backup_id)
        else:
            kept.append(m)
    kept.sort(key=lambda m: m.backup_id)
    return kept, sorted(skipped)
