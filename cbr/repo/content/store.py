"""Writing a vault's content: blobs into packs, packs into storage, then the
index files that describe them (``docs/storage-format.md`` sections 6, 7
and 11).

This module owns the write order of content: blob saving with deduplication
against the index and batching into packs, ``flush`` (packs, then the index
file that describes them), and the index files maintenance writes for packs
it did not write. It must not delete anything (prune does, under its own
protocol, section 12).

Thread safety: :meth:`ContentStore.save_blob` may be called from several
threads; hashing, compression and encryption run outside the lock (in native
code that releases the GIL), only pack bookkeeping inside it. Closed packs
are uploaded by a small pool of background threads, so a backup keeps
reading and encoding while packs travel; the blobs of a pack in flight stay
*pending* (found by :meth:`has_blob` and :meth:`load_blob`) until the pack
is stored and in the in-memory index. An upload error is sticky: it is
raised by the next ``save_blob``/``flush`` and by every one after, so no
index file or manifest is ever written over a pack that failed.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from cbr.repo import layout
from cbr.repo.config import VaultConfig
from cbr.repo.content.blob import BlobType, EncodedBlob, encode_blob
from cbr.repo.content.crypto import DataKey
from cbr.repo.content.ids import ChunkHasher
from cbr.repo.content.pack import FinishedPack, PackEntry, PackWriter
from cbr.repo.content.reader import ContentReader
from cbr.repo.errors import RepoError
from cbr.storage.backend import Backend

UPLOADS_IN_FLIGHT = 2
"""Packs uploaded at once by the background pool. Each holds up to
``pack_size`` bytes of memory until stored, and a thread that closes one more
waits (holding that pack) for a free slot, so a writer holds at most the open
packs (one per type), these, and one closed pack per saving thread. Two hide
the upload latency of a single-threaded backup (one pack travels while the
next fills); more only help when the storage is slower per request than the
reader is per pack."""

INDEX_EVERY_PACKS = 16
"""An index file is written after this many packs even before ``flush`` (section 7)."""
INDEX_EVERY_SECONDS = 10.0
"""...or once the oldest pack not yet indexed was stored this long ago, so a
backup killed early reuses what it uploaded (section 7)."""


class ContentStore(ContentReader):
    """A vault's content, opened for reading and writing: what
    :class:`~cbr.repo.repository.Repository` composes with the vault's keys
    and manifests. Blobs saved are visible to other readers only after
    :meth:`flush`.
    """

    def __init__(
        self,
        backend: Backend,
        config: VaultConfig,
        hashers: dict[bytes, ChunkHasher],
        data_keys: dict[bytes, DataKey],
        *,
        index_every_packs: int = INDEX_EVERY_PACKS,
        index_every_seconds: float = INDEX_EVERY_SECONDS,
        uploads_in_flight: int = UPLOADS_IN_FLIGHT,
    ) -> None:
        super().__init__(backend, config, hashers, data_keys)
        self._done = threading.Condition(self._lock)
        self._uploads = 0  # packs closed and not yet stored (or failed)
        self._in_flight = 0  # of those, handed to the pool
        self._index_writes = 0  # index files being written by the pool
        self._max_in_flight = max(1, uploads_in_flight)
        self._pool: ThreadPoolExecutor | None = None
        self._closed = False
        self._upload_error: BaseException | None = None
        self._writers = {t: self._new_writer(t) for t in BlobType}
        self._unindexed_since = 0.0
        self._index_every_seconds = index_every_seconds
        self._index_every_packs = index_every_packs

    def _new_writer(self, blob_type: BlobType) -> PackWriter:
        return PackWriter(blob_type, self._data_key, self.config.pack_size)

    def save_blob(
        self,
        blob_type: BlobType,
        data: bytes,
        *,
        key_id: bytes | None = None,
        chunk_id: bytes | None = None,
    ) -> bytes:
        """Stores ``data`` unless a blob with its id is already known; returns the chunk id.

        The blob is durable and visible to others only after :meth:`flush`.
        """
        return self.store_blob(blob_type, data, key_id=key_id, chunk_id=chunk_id)[0]

    def store_blob(
        self,
        blob_type: BlobType,
        data: bytes | bytearray | memoryview,
        *,
        key_id: bytes | None = None,
        chunk_id: bytes | None = None,
        packed: bytes | memoryview | None = None,
        compress: bool = True,
    ) -> tuple[bytes, int]:
        """Like :meth:`save_blob`; also returns the stored bytes this call added
        (0 when the vault already had the chunk), for progress and usage.

        For an importer (section 16), which must not compress a chunk again:
        ``packed`` is a zstd frame of ``data`` the caller has already checked
        by decompressing it, stored as it is when it pays, and ``compress``
        false stores ``data`` raw without trying."""
        self._raise_upload_error()
        hasher = self.hasher(key_id)
        cid = chunk_id if chunk_id is not None else hasher.chunk_id(data)
        if self.has_blob(cid, hasher.key_id):
            return cid, 0
        blob = encode_blob(
            data, blob_type=blob_type,
            hasher=hasher, data_key=self._data_key, level=self.config.compression_level,
            chunk_id=cid, packed=packed, compress_data=compress,
        )
        if not self._add_encoded(blob, dedup=True):
            return cid, 0
        return cid, len(blob.stored)

    def repack_blob(self, blob: EncodedBlob) -> None:
        """Adds an already encoded blob to a new pack even though the index
        has it elsewhere (prune copies live blobs out of mostly-dead packs);
        a blob copied once by this object is not copied again."""
        self._raise_upload_error()
        self._add_encoded(blob, dedup=False)

    def _add_encoded(self, blob: EncodedBlob, *, dedup: bool) -> bool:
        key = (blob.key_id, blob.chunk_id)
        closed: list[tuple[FinishedPack, set[tuple[bytes, bytes]]]] = []
        with self._lock:
            if key in self._pending or (dedup and self.index.contains(*key)):
                return False
            writer = self._writers[blob.type]
            if not writer.fits(len(blob.stored)):
                closed.append(self._close_pack(blob.type))
                writer = self._writers[blob.type]
            self._pending[key] = writer.add(blob)
            if writer.size >= writer.target_size:
                closed.append(self._close_pack(blob.type))
        for pack, keys in closed:
            self._submit(pack, keys)
        return True

    def _raise_upload_error(self) -> None:
        if self._upload_error is not None:
            # Sticky: blobs of the lost pack look stored to this object, so
            # nothing written through it may be trusted again.
            raise self._upload_error

    def _close_pack(self, blob_type: BlobType) -> tuple[FinishedPack, set[tuple[bytes, bytes]]]:
        """Under the lock: closes the open pack; its blobs stay pending (visible
        to lookups and reads) until :meth:`_upload` has stored and indexed it.
        Counted at once, so a :meth:`flush` racing the hand-over waits for it."""
        writer = self._writers[blob_type]
        pack: FinishedPack = writer.finish()
        self._writers[blob_type] = self._new_writer(blob_type)
        self._uploads += 1
        return pack, writer.chunk_ids

    def _submit(self, pack: FinishedPack, keys: set[tuple[bytes, bytes]]) -> None:
        """Hands a closed pack to the pool, first waiting for a free slot: the
        wait is the back-pressure that bounds memory when storage is slower
        than reading."""
        with self._done:
            while self._in_flight >= self._max_in_flight and self._upload_error is None:
                self._done.wait()
            if self._upload_error is not None or self._closed:
                self._uploads -= 1
                self._done.notify_all()
                self._raise_upload_error()
                raise RepoError("repository is closed")
            self._in_flight += 1
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._max_in_flight,
                                                thread_name_prefix="pack-upload")
            pool = self._pool
        pool.submit(self._upload, pack, keys)

    def _upload(self, pack: FinishedPack, keys: set[tuple[bytes, bytes]]) -> None:
        """Pool thread: stores one pack, then makes it visible in memory. Never
        raises: an error is kept for the writer's next call."""
        try:
            self.backend.put_stream(layout.pack_name(pack.pack_id), pack.parts)
        except BaseException as exc:
            with self._done:
                self._upload_error = self._upload_error or exc
                self._uploads -= 1
                self._in_flight -= 1
                self._done.notify_all()
            return
        with self._done:
            self.index.add_pack(pack.pack_id, pack.entries)
            for key in keys:
                self._pending.pop(key, None)
            if not self._unindexed:
                self._unindexed_since = time.monotonic()
            self._unindexed.append((pack.pack_id, pack.entries))
            self._uploads -= 1
            self._in_flight -= 1
            self._done.notify_all()
            due = self._upload_error is None and (
                len(self._unindexed) >= self._index_every_packs
                or time.monotonic() - self._unindexed_since >= self._index_every_seconds)
        if due:
            # On failure the packs stay queued; flush writes them or raises.
            with contextlib.suppress(Exception):
                self._write_index()

    def _finish_pack(self, blob_type: BlobType) -> None:
        """Closes the open pack of a type and hands it to the pool."""
        with self._lock:
            if self._writers[blob_type].count == 0:
                return
            closed = self._close_pack(blob_type)
        self._submit(*closed)

    def close_packs(self) -> None:
        """Closes the open packs and hands them to the upload pool without
        waiting for them (beyond the pool's back-pressure): a writer that wants
        what it has saved to reach storage soon, yet keep working meanwhile.
        With ``index_every_packs=1`` each is indexed as soon as it is stored."""
        self._finish_packs()
        if self._upload_error is not None:
            self._raise_upload_error()

    def _finish_packs(self) -> None:
        """Hands every open pack to the pool, unless an upload already failed."""
        for blob_type in BlobType:
            if self._upload_error is None:
                self._finish_pack(blob_type)

    def flush(self) -> None:
        """Closes the open packs, waits until every pack closed so far is
        stored, then writes the index file describing every pack stored since
        the last one (section 11, step 3). An upload that failed fails the
        flush, so no manifest is written over a missing pack; the packs that
        were stored are still indexed first (best effort), so the next backup
        reuses them."""
        self._finish_packs()
        self._wait_uploads()
        if self._upload_error is not None:
            with contextlib.suppress(Exception):  # the upload error is the one to report
                self._write_index()
            self._raise_upload_error()
        self._write_index()

    def _wait_uploads(self) -> None:
        with self._done:
            while self._uploads or self._index_writes:
                self._done.wait()

    def close(self) -> None:
        """Waits for the uploads in flight and stops the upload threads.

        Does not flush: open packs are dropped and stored packs stay unindexed
        unless the caller flushed (a closed repository writes nothing more).
        """
        with self._done:
            self._closed = True
        self._wait_uploads()
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    # -- index files ----------------------------------------------------------------------------

    def _write_index(self) -> None:
        """Writes index files for the packs stored since the last one.

        The batch is taken under the lock and written outside it (other
        threads keep saving); on failure it goes back, so the next attempt
        (at the latest :meth:`flush`) describes it. ``_index_writes`` lets
        :meth:`flush` wait for a pool thread's write in progress.
        """
        with self._lock:
            batch, self._unindexed = self._unindexed, []
            self._index_writes += 1
        try:
            self.write_index_files(batch)
        except BaseException:
            with self._lock:
                self._unindexed[:0] = batch
            raise
        finally:
            with self._done:
                self._index_writes -= 1
                self._done.notify_all()

    def recover_unindexed(self) -> list[bytes]:
        """Indexes packs that have no index entry from their headers.

        Maintenance only: run it under the prune lock (section 11), never
        from a backup, since an unindexed pack may be condemned.
        """
        recovered = []
        found: list[tuple[bytes, list[PackEntry]]] = []
        for pack_id in self.list_unindexed_packs():
            found.append((pack_id, self.read_pack_header(pack_id)))
            recovered.append(pack_id)
        self.index_packs(found)
        return recovered

    def index_packs(self, packs: Iterable[tuple[bytes, list[PackEntry]]]) -> list[bytes]:
        """Writes index files for stored packs this object did not write and
        adds them to the in-memory index; returns the index file ids.

        Maintenance only (prune's re-indexing and resurrection, under the
        prune lock): a writer never indexes packs it did not write (section 11).
        """
        items = list(packs)
        written = self.write_index_files(items)
        with self._lock:
            for pack_id, entries in items:
                self.index.add_pack(pack_id, entries)
        return written
