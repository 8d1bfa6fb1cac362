"""Copying backups into another vault (``docs/storage-format.md`` section 16).

The source side walks a backup and sends the chunks the target lacks; the
target side (:class:`VaultImporter`, run by an importer agent) checks and
stores them and writes the replica's manifests only once everything they
reach is indexed. The two talk through :class:`ReplicaTarget`, so the same
steps run in one process (tests, tools) or across clouds over gRPC.

This module must not know about controllers, credentials or the network.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import zstandard

from cbr.repo import layout
from cbr.repo.content.blob import BlobType, decompress
from cbr.repo.content.crypto import KeyWrapper
from cbr.repo.errors import IntegrityError, KeyUnavailable, ManifestExists, RepoError
from cbr.repo.maintenance.walk import iter_reachable
from cbr.repo.objects.manifest import Manifest
from cbr.repo.repository import Repository

QUERY_BATCH = 512
"""Ids asked about at once: one round trip per batch, bounded memory."""

PUT_BYTES = 4 << 20
"""Wire bytes of chunks after which a put is sent: big enough to amortize a
round trip, small enough to bound the memory of both sides. A put then holds
less than this plus one maximal chunk (8 MiB with the default chunker)."""

IMPORT_INDEX_EVERY_PACKS = 1
"""The importer indexes every pack it stores, so a cut transfer resumes
without sending what reached storage (section 16, step 4)."""


@dataclass(frozen=True, slots=True)
class WireChunk:
    """One chunk as it crosses to the target: its plaintext or zstd frame, as
    the source vault stores it, never encrypted with a source key."""

    type: BlobType
    chunk_id: bytes
    raw_length: int
    compressed: bool
    body: bytes | memoryview  # a view into what the source read (no copy), or received bytes

    @property
    def wire_length(self) -> int:
        return len(self.body)


@dataclass(frozen=True, slots=True)
class ReplicaSource:
    """What a replica's manifests say about where they came from."""

    cloud: str = ""
    region: str = ""
    project_id: str = ""

    def doc(self, manifest: Manifest) -> dict[str, Any]:
        return {"backup_id": manifest.backup_id, "vault_id": manifest.vault_id,
                "cloud": self.cloud, "region": self.region, "project_id": self.project_id}


class ReplicaTarget(Protocol):
    """The importer's side of a replication, as the source sees it."""

    def begin(self, source_vault_id: str, key_id: bytes, chunk_key: bytes) -> None:
        """Makes the source's namespace known to the target vault."""

    def missing(self, key_id: bytes, chunk_ids: Sequence[bytes]) -> list[bytes]:
        """The ids of ``chunk_ids`` the target vault lacks."""

    def ask(self, key_id: bytes, chunk_ids: Sequence[bytes]) -> Callable[[], list[bytes]]:
        """Asks :meth:`missing` now and returns what waits for the answer:
        the answer reflects the puts made before the question, not those
        made while it was on its way."""

    def put(self, key_id: bytes, chunks: Sequence[WireChunk]) -> int:
        """Checks and stores chunks; the bytes added to storage. A target
        may answer later than it returns (a stream with puts in flight): it
        then returns what earlier puts added, and raises their errors from a
        later call."""

    def drain(self) -> int:
        """Waits until every put so far is stored; the bytes they added that
        ``put`` has not returned yet."""

    def commit(self, manifests: Sequence[Manifest]) -> dict[str, str]:
        """Writes the replica's manifests once all they reach is stored;
        their SHA-256 by backup id."""


@dataclass
class ReplicationStats:
    chunks_walked: int = 0
    raw_bytes_walked: int = 0
    """Plain bytes of the data chunks walked, sent or not: the progress."""
    chunks_sent: int = 0
    raw_bytes_sent: int = 0
    wire_bytes_sent: int = 0
    bytes_stored: int = 0
    manifest_sha256: dict[str, str] = dataclasses.field(default_factory=dict)


def export_chunks(repo: Repository, key_id: bytes,
                  chunks: dict[bytes, BlobType]) -> Iterator[WireChunk]:
    """Chunks of ``repo`` for the wire in their stored form (section 16,
    step 3), in the order they lie in storage (neighbours read at once).

    Not verified here: the importer decompresses and checks every chunk
    against its keyed id before storing it, so checking on this side too
    would only double the work (a damaged blob fails the transfer there).
    An encrypted vault still authenticates each blob as it decrypts it.
    """
    for chunk_id, opened in repo.load_blob_bodies(list(chunks), key_id=key_id):
        yield WireChunk(chunks[chunk_id], chunk_id, opened.raw_length, opened.compressed,
                        opened.body)


def backup_manifests(repo: Repository, backup_id: str) -> list[Manifest]:
    """A backup's manifests in the order a replica is written: a server's
    disks before the server."""
    top = repo.load_manifest(backup_id)
    children = [repo.load_manifest(child) for child in top.children]
    return [*children, top]


def replica_manifests(manifests: Sequence[Manifest], ids: dict[str, str], *,
                      vault_id: str, checkpoint_id: str,
                      source: ReplicaSource) -> list[Manifest]:
    """The replica's manifests: new ids (``ids`` maps every source backup id
    of the set), the target vault, and where they came from."""
    missing = {x for m in manifests for x in (m.backup_id, *m.children)} - ids.keys()
    if missing:
        raise ValueError(f"no replica id for source backup(s) {sorted(missing)}")
    out = []
    for m in manifests:
        out.append(dataclasses.replace(
            m, backup_id=ids[m.backup_id], vault_id=vault_id, checkpoint_id=checkpoint_id,
            parent_id=ids.get(m.parent_id) if m.parent_id is not None else None,
            children=[ids[c] for c in m.children], image_type="replication",
            source=source.doc(m)))
    return out


def _batches(repo: Repository, manifests: Sequence[Manifest],
             stats: ReplicationStats) -> Iterator[tuple[bytes, dict[bytes, BlobType]]]:
    """The chunks the manifests reach, in batches of :data:`QUERY_BATCH`
    under one chunk-id key.

    No set of ids sent so far: it would grow with the disk. A chunk met
    again in a later batch is asked about again, and the target, which sees
    chunks it has not indexed yet, says it has it."""
    seen: set[bytes] = set()
    for manifest in manifests:
        batch: dict[bytes, BlobType] = {}
        key_id = manifest.chunk_key_id
        for blob_type, chunk_id in iter_reachable(repo, manifest, seen, check_trees=False):
            stats.chunks_walked += 1
            if blob_type is BlobType.DATA and (loc := repo.index.lookup(key_id, chunk_id)):
                stats.raw_bytes_walked += loc.raw_length
            if chunk_id in batch:
                continue
            batch[chunk_id] = blob_type
            if len(batch) >= QUERY_BATCH:
                yield manifest.chunk_key_id, batch
                batch = {}
        if batch:
            yield manifest.chunk_key_id, batch


def _same_key(sent: tuple[bytes, set[bytes]], key_id: bytes) -> set[bytes]:
    return sent[1] if sent[0] == key_id else set()  # ids of another key never collide


def replicate(repo: Repository, manifests: Sequence[Manifest], target: ReplicaTarget, *,
              replicas: Sequence[Manifest],
              progress: Callable[[ReplicationStats], None] | None = None) -> ReplicationStats:
    """Sends every chunk ``manifests`` reach that ``target`` lacks, then
    commits ``replicas`` (their rewritten manifests, same order).

    Safe to call again after any failure: what reached the target's storage
    is not sent again, and no replica manifest exists until the commit.
    """
    if len(manifests) != len(replicas):
        raise ValueError("one replica manifest per source manifest")
    key_ids = {m.chunk_key_id for m in manifests}
    stats = ReplicationStats()
    for key_id in sorted(key_ids):
        target.begin(repo.config.vault_id, key_id, repo.hasher(key_id).key)

    def send(key_id: bytes, batch: dict[bytes, BlobType], answer: Callable[[], list[bytes]],
             in_flight: set[bytes]) -> set[bytes]:
        """Sends what the target lacks of a batch; the ids sent."""
        wanted = answer()
        for chunk_id in wanted:
            if chunk_id not in batch:
                raise RepoError(f"the target asked for chunk {chunk_id.hex()}, "
                                "which was not offered")
        # The answer did not see the previous batch's puts (they were sent
        # after the question): what they carry is not sent again.
        wanted = [cid for cid in wanted if cid not in in_flight]
        chunks: list[WireChunk] = []
        size = 0
        for chunk in export_chunks(repo, key_id, {cid: batch[cid] for cid in wanted}):
            chunks.append(chunk)
            size += chunk.wire_length
            stats.chunks_sent += 1
            stats.raw_bytes_sent += chunk.raw_length
            stats.wire_bytes_sent += chunk.wire_length
            if size >= PUT_BYTES:
                stats.bytes_stored += target.put(key_id, chunks)
                chunks, size = [], 0
                if progress is not None:
                    progress(stats)
        if chunks:
            stats.bytes_stored += target.put(key_id, chunks)
        if progress is not None:
            progress(stats)
        return set(wanted)

    # Each batch's question goes out before the previous batch's chunks, so
    # its answer is on its way while they are sent: neither side waits for
    # the other between batches.
    pending: tuple[bytes, dict[bytes, BlobType], Callable[[], list[bytes]]] | None = None
    previous: tuple[bytes, set[bytes]] = (b"", set())  # the last batch sent: its key, its ids
    for key_id, batch in _batches(repo, manifests, stats):
        answer = target.ask(key_id, list(batch))
        if pending is not None:
            previous = (pending[0], send(*pending, in_flight=_same_key(previous, pending[0])))
        pending = (key_id, batch, answer)
    if pending is not None:
        send(*pending, in_flight=_same_key(previous, pending[0]))
    stats.bytes_stored += target.drain()
    stats.manifest_sha256 = target.commit(replicas)
    return stats


class VaultImporter:
    """The target side over a vault the importer has opened (with
    ``index_every_packs=IMPORT_INDEX_EVERY_PACKS``, under a backup lock)."""

    def __init__(self, repo: Repository, *, wrapper: KeyWrapper | None = None) -> None:
        self.repo = repo
        self.wrapper = wrapper

    def begin(self, source_vault_id: str, key_id: bytes, chunk_key: bytes) -> None:
        try:
            known = self.repo.hasher(key_id)
        except KeyUnavailable:
            self.repo.add_chunk_key(key_id, chunk_key, source_vault_id=source_vault_id,
                                    wrapper=self.wrapper)
            return
        if known.key != chunk_key:
            raise IntegrityError(f"chunk-id key {key_id.hex()} differs from the one the "
                                 "target vault holds under that id; refusing to mix them")

    def missing(self, key_id: bytes, chunk_ids: Sequence[bytes]) -> list[bytes]:
        self.repo.hasher(key_id)  # an unknown namespace is an error, not "all missing"
        return [cid for cid in chunk_ids if not self.repo.has_blob(cid, key_id)]

    def ask(self, key_id: bytes, chunk_ids: Sequence[bytes]) -> Callable[[], list[bytes]]:
        answer = self.missing(key_id, chunk_ids)
        return lambda: answer

    def drain(self) -> int:
        return 0  # every put stored before it returned

    def put(self, key_id: bytes, chunks: Sequence[WireChunk]) -> int:
        hasher = self.repo.hasher(key_id)
        stored = 0
        for chunk in chunks:
            packed: bytes | memoryview | None = None
            plain: bytes | memoryview
            if chunk.compressed:
                try:
                    plain = decompress(chunk.body, chunk.raw_length)
                except zstandard.ZstdError as exc:
                    raise IntegrityError(f"chunk {chunk.chunk_id.hex()}: cannot decompress "
                                         f"({exc})", chunk_id=chunk.chunk_id.hex()) from None
                packed = chunk.body
            else:
                plain = chunk.body
            if len(plain) != chunk.raw_length or hasher.chunk_id(plain) != chunk.chunk_id:
                raise IntegrityError(f"chunk {chunk.chunk_id.hex()} does not match its id; "
                                     "refused", chunk_id=chunk.chunk_id.hex())
            # Not compressed again (section 16, step 3): a frame is kept as it
            # came, and the source found compressing a raw chunk does not pay.
            _cid, added = self.repo.store_blob(chunk.type, plain, key_id=key_id,
                                               chunk_id=chunk.chunk_id, packed=packed,
                                               compress=chunk.compressed)
            stored += added
        return stored

    def commit(self, manifests: Sequence[Manifest]) -> dict[str, str]:
        """Writes the manifests once all they reach is stored; returns each
        one's SHA-256 for the catalog. Committing again (a commit whose
        answer was lost, or cut half-way) finds the same manifests and
        returns their digests; a different manifest under a replica's id is
        refused."""
        self.repo.flush()
        for manifest in manifests:
            key_id = manifest.chunk_key_id
            for _type, chunk_id in iter_reachable(self.repo, manifest, check_trees=False):
                if not self.repo.index.contains(key_id, chunk_id):
                    raise IntegrityError(
                        f"replica {manifest.backup_id} is incomplete: chunk {chunk_id.hex()} "
                        "is not in the target vault; nothing was committed",
                        chunk_id=chunk_id.hex())
        digests: dict[str, str] = {}
        for manifest in manifests:
            try:
                digests[manifest.backup_id] = self.repo.save_manifest(manifest)
            except ManifestExists:
                digests[manifest.backup_id] = self._same_manifest(manifest)
        return digests

    def _same_manifest(self, manifest: Manifest) -> str:
        name = layout.manifest_name(manifest.backup_id)
        stored = self.repo.load_manifest(manifest.backup_id)
        if stored.to_json() != manifest.to_json():
            raise IntegrityError(f"{name}: a different manifest is stored under replica id "
                                 f"{manifest.backup_id}; refusing to replace it")
        return hashlib.sha256(self.repo.backend.get(name)).hexdigest()
