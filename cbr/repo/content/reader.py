"""A vault's content found and read: the in-memory index and the verified
reads (``docs/storage-format.md`` sections 4.2, 5, 7 and 11).

This module owns the in-memory index (loaded from the index files, the packs
of a damaged one found from their headers), the chunk-id namespaces, and
every blob read: from its pack in storage, or from memory while its pack is
still on its way there. Those pending blobs are kept here, under the same
lock as the index, because a read must find a blob in one of the two while
its pack moves from the first to the second; :mod:`cbr.repo.content.store`
fills both. It must not write anything.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Sequence

from cbr.repo import layout
from cbr.repo.config import VaultConfig
from cbr.repo.content.blob import (
    FLAG_COMPRESSED,
    BlobBody,
    EncodedBlob,
    decode_blob,
    open_blob,
)
from cbr.repo.content.crypto import DataKey
from cbr.repo.content.files import ContentFiles
from cbr.repo.content.ids import ChunkHasher
from cbr.repo.content.index import Index, Location
from cbr.repo.content.pack import PackEntry
from cbr.repo.errors import ChunkNotFound, FormatError, IntegrityError, KeyUnavailable
from cbr.storage.backend import Backend

log = logging.getLogger("cbr.repo")

READ_GAP = 64 << 10
"""Bytes between two wanted blobs of a pack that :meth:`ContentReader.load_blob_bodies`
reads through rather than ask for in two requests: one request costs more
than that much reading on local disks and object stores alike."""

READ_SPAN = 8 << 20
"""The longest read :meth:`ContentReader.load_blob_bodies` makes: bounds the
memory one read holds (a blob larger than this is still read whole)."""



class ContentReader(ContentFiles):
    """A vault's content as this process sees it: the in-memory index, the
    blobs saved but not yet stored, and the reads over both.

    The middle layer of :class:`~cbr.repo.content.store.ContentStore`; a
    reader's ``_pending`` and ``_unindexed`` stay empty.
    """

    def __init__(
        self,
        backend: Backend,
        config: VaultConfig,
        hashers: dict[bytes, ChunkHasher],
        data_keys: dict[bytes, DataKey],
    ) -> None:
        super().__init__(backend, config, data_keys)
        self._hashers = hashers
        self.index = Index()
        self._lock = threading.RLock()
        # Blobs in packs not yet stored, by (key id, chunk id): found by lookups and reads.
        self._pending: dict[tuple[bytes, bytes], EncodedBlob] = {}
        # Packs stored but in no index file yet: a reloaded index keeps them.
        self._unindexed: list[tuple[bytes, list[PackEntry]]] = []
        # Index files load_index could not use (id -> why), found from headers.
        self.damaged_index_files: dict[bytes, str] = {}

    def hasher(self, key_id: bytes | None = None) -> ChunkHasher:
        """The chunk hasher of a namespace (the vault's own by default)."""
        kid = key_id or self.config.chunk_key_id
        try:
            return self._hashers[kid]
        except KeyError:
            raise KeyUnavailable(f"chunk-id key {kid.hex()} is not in this vault") from None

    def load_index(self) -> None:
        """(Re)loads every index file into a fresh in-memory index.

        A damaged index file is skipped and what it described is found from
        pack headers (section 7): one bad file never takes the vault down.
        ``damaged_index_files`` names them, for verify and prune."""
        index = Index()
        damaged: dict[bytes, str] = {}
        for index_id in self.list_index_files():
            name = layout.index_name(index_id)
            try:
                index.merge_encoded(self._read_index_plain(index_id), name)
            except (IntegrityError, FormatError) as exc:
                damaged[index_id] = str(exc)
        if damaged:
            condemned = self.condemned_packs()
            indexed = index.pack_ids()
            for pack_id in self.list_packs():
                if pack_id in indexed or pack_id in condemned:
                    continue
                with contextlib.suppress(IntegrityError, FormatError):  # verify names it
                    index.add_pack(pack_id, self.read_pack_header(pack_id))
            log.warning("%d damaged index file(s) skipped (%s); their packs were found from "
                        "the pack headers. cbr vault repair rewrites them.", len(damaged),
                        ", ".join(f"{layout.index_name(i)}: {why}" for i, why in damaged.items()))
        index.compact()
        with self._lock:
            self.index = index
            self.damaged_index_files = damaged
            for pack_id, entries in self._unindexed:
                index.add_pack(pack_id, entries)

    def list_unindexed_packs(self) -> list[bytes]:
        """Packs in storage that no loaded index entry points into."""
        indexed = self.index.pack_ids()
        return [p for p in self.list_packs() if p not in indexed]

    def has_blob(self, chunk_id: bytes, key_id: bytes | None = None) -> bool:
        kid = key_id or self.config.chunk_key_id
        with self._lock:
            return (kid, chunk_id) in self._pending or self.index.contains(kid, chunk_id)

    def has_blobs(self, chunk_ids: Sequence[bytes], key_id: bytes | None = None) -> bool:
        """Whether every one of ``chunk_ids`` is stored or being stored: one
        lock for a file's whole chunk list, not one per chunk."""
        kid = key_id or self.config.chunk_key_id
        with self._lock:
            pending, contains = self._pending, self.index.contains
            return all((kid, cid) in pending or contains(kid, cid) for cid in chunk_ids)

    def load_blob(self, chunk_id: bytes, *, key_id: bytes | None = None) -> bytes:
        """The verified plaintext of a blob.

        Raises :class:`ChunkNotFound` when no index has it and
        :class:`IntegrityError` (naming chunk and pack) when its stored bytes
        are missing, short or wrong.
        """
        hasher = self.hasher(key_id)
        with self._lock:
            pending = self._pending.get((hasher.key_id, chunk_id))
            location = self.index.lookup(hasher.key_id, chunk_id)
        if pending is not None:
            return decode_blob(
                pending.stored, blob_type=pending.type, flags=pending.flags,
                raw_length=pending.raw_length, chunk_id=chunk_id, hasher=hasher,
                data_key=self._data_key,
            )
        if location is None:
            raise ChunkNotFound(chunk_id.hex(), hasher.key_id.hex())
        return self.load_blob_at(location, chunk_id, key_id=hasher.key_id)

    def load_blob_bodies(
        self, chunk_ids: Sequence[bytes], *, key_id: bytes | None = None
    ) -> Iterator[tuple[bytes, BlobBody]]:
        """``(chunk id, body)`` of each blob as stored, decrypted but neither
        decompressed nor checked against its id, in storage order: blobs that
        lie close together in a pack are read with one request.

        For a replica's source, whose importer verifies every chunk anyway
        (section 16): the chunk is never decompressed here nor compressed
        again there, and a tree's thousands of small blobs cost a few reads
        instead of one each. Raises :class:`ChunkNotFound` (before yielding
        anything) when no index has one of them, and :class:`IntegrityError`
        when stored bytes are missing, short, or (encrypted vaults) fail
        authentication.
        """
        kid = self.hasher(key_id).key_id
        pending: list[tuple[bytes, EncodedBlob]] = []
        located: list[tuple[Location, bytes]] = []
        with self._lock:
            for cid in chunk_ids:
                blob = self._pending.get((kid, cid))
                location = self.index.lookup(kid, cid)
                if blob is not None:
                    pending.append((cid, blob))
                elif location is not None:
                    located.append((location, cid))
                else:
                    raise ChunkNotFound(cid.hex(), kid.hex())
        for cid, blob in pending:
            body = open_blob(blob.stored, blob_type=blob.type, flags=blob.flags, key_id=kid,
                             chunk_id=cid, data_key=self._data_key)
            yield cid, BlobBody(blob.type, blob.raw_length, bool(blob.flags & FLAG_COMPRESSED),
                                body)
        located.sort(key=lambda item: (item[0].pack_id, item[0].offset))
        run: list[tuple[Location, bytes]] = []
        for item in located:
            if run:
                first, last = run[0][0], run[-1][0]
                end = last.offset + last.stored_length
                if (item[0].pack_id != first.pack_id or item[0].offset - end > READ_GAP
                        or item[0].offset + item[0].stored_length - first.offset > READ_SPAN):
                    yield from self._read_bodies(run, kid)
                    run = []
            run.append(item)
        if run:
            yield from self._read_bodies(run, kid)

    def _read_bodies(self, run: list[tuple[Location, bytes]],
                     key_id: bytes) -> Iterator[tuple[bytes, BlobBody]]:
        """The blobs of one run of neighbours in a pack, read at once."""
        first = run[0][0]
        end = max(loc.offset + loc.stored_length for loc, _cid in run)
        span = Location(first.pack_id, first.type, first.offset, end - first.offset,
                        0, first.flags)
        data = self.read_stored_at(span, run[0][1])
        view = memoryview(data) if len(run) > 1 else None
        for loc, cid in run:
            stored: bytes | memoryview = data
            if view is not None:
                start = loc.offset - first.offset
                stored = view[start:start + loc.stored_length]
            body = open_blob(stored, blob_type=loc.type, flags=loc.flags, key_id=key_id,
                             chunk_id=cid, data_key=self._data_key, pack_id=loc.pack_id)
            yield cid, BlobBody(loc.type, loc.raw_length, bool(loc.flags & FLAG_COMPRESSED), body)

    def load_blob_at(
        self, location: Location, chunk_id: bytes, *, key_id: bytes | None = None
    ) -> bytes:
        """The verified plaintext of a blob at a known location, which need not
        be in the loaded index (prune reads condemned packs by their headers)."""
        return self.decode_stored(self.read_stored_at(location, chunk_id), location, chunk_id,
                                  key_id=key_id)

    def decode_stored(
        self, stored: bytes | memoryview, location: Location, chunk_id: bytes, *,
        key_id: bytes | None = None,
    ) -> bytes:
        """Decrypts, decompresses and verifies stored bytes (section 5)."""
        return decode_blob(
            stored, blob_type=location.type, flags=location.flags,
            raw_length=location.raw_length, chunk_id=chunk_id, hasher=self.hasher(key_id),
            data_key=self._data_key, pack_id=location.pack_id,
        )
