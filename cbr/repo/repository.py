"""A vault's repository over a storage backend (``docs/storage-format.md``
sections 2, 3, 7, 10 and 11).

This module owns the write order of a vault: ``init`` (config, keys), blob
saving with deduplication against the index and batching into packs,
``flush`` (packs, then the index file that describes them), verified reads,
and write-once manifests. It must not walk disks or trees (``disk_map`` and
``tree`` encode those; the agent walks) and must not delete anything (prune
does, under its own protocol, section 12).

Thread safety: :meth:`Repository.save_blob` may be called from several
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
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType

from cbr.clock import utc_now
from cbr.repo import layout
from cbr.repo.blob import (
    FLAG_COMPRESSED,
    BlobBody,
    BlobType,
    EncodedBlob,
    decode_blob,
    encode_blob,
    open_blob,
)
from cbr.repo.config import VaultConfig, key_from_json, key_to_json
from cbr.repo.crypto import (
    PURPOSE_CHUNK_ID,
    PURPOSE_DATA,
    DataKey,
    KeyWrapper,
    UnwrapFn,
    new_data_key,
    unwrap_key,
    wrap_key,
)
from cbr.repo.envelope import INDEX_MAGIC, MANIFEST_MAGIC, open_envelope, seal_envelope
from cbr.repo.errors import (
    ChunkNotFound,
    FormatError,
    IntegrityError,
    KeyUnavailable,
    ManifestExists,
    ManifestNotFound,
    RepoError,
    VaultExists,
)
from cbr.repo.ids import KEY_ID_SIZE, ChunkHasher, new_chunk_key, new_key_id, object_id
from cbr.repo.index import (
    MAX_BLOBS_PER_INDEX_FILE,
    Index,
    Location,
    decode_index,
    encode_index,
)
from cbr.repo.manifest import Manifest
from cbr.repo.pack import FinishedPack, PackEntry, PackWriter, read_pack_header
from cbr.storage.backend import Backend, ObjectNotFound

log = logging.getLogger("cbr.repo")

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

READ_GAP = 64 << 10
"""Bytes between two wanted blobs of a pack that :meth:`Repository.load_blob_bodies`
reads through rather than ask for in two requests: one request costs more
than that much reading on local disks and object stores alike."""

READ_SPAN = 8 << 20
"""The longest read :meth:`Repository.load_blob_bodies` makes: bounds the
memory one read holds (a blob larger than this is still read whole)."""


def _now() -> dt.datetime:
    return utc_now()


class Repository:
    """One vault's storage, opened for reading and writing.

    Use :meth:`init` to create a vault and :meth:`open` to open one. Blobs
    saved are visible to other readers only after :meth:`flush`.
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
        self.backend = layout.sharded(backend)
        self.config = config
        self._hashers = hashers
        self._data_keys = data_keys
        self._data_key = data_keys[config.data_key_id] if config.data_key_id else None
        self.index = Index()
        self._lock = threading.RLock()
        self._done = threading.Condition(self._lock)
        self._uploads = 0  # packs closed and not yet stored (or failed)
        self._in_flight = 0  # of those, handed to the pool
        self._index_writes = 0  # index files being written by the pool
        self._max_in_flight = max(1, uploads_in_flight)
        self._pool: ThreadPoolExecutor | None = None
        self._closed = False
        self._upload_error: BaseException | None = None
        self._writers = {t: self._new_writer(t) for t in BlobType}
        self._pending: dict[tuple[bytes, bytes], EncodedBlob] = {}
        self._unindexed: list[tuple[bytes, list[PackEntry]]] = []
        # Index files load_index could not use (id -> why), found from headers.
        self.damaged_index_files: dict[bytes, str] = {}
        self._unindexed_since = 0.0
        self._index_every_seconds = index_every_seconds
        self._index_every_packs = index_every_packs

    # -- creating and opening -----------------------------------------------------------------

    @classmethod
    def init(
        cls,
        backend: Backend,
        *,
        vault_id: str,
        encrypted: bool,
        key_wrapper: KeyWrapper | None = None,
        chunk_key: tuple[bytes, bytes] | None = None,
        pack_size: int | None = None,
        now: dt.datetime | None = None,
    ) -> Repository:
        """Creates a vault: keys first, then ``config`` (written once).

        ``chunk_key`` (key id, key) makes the vault share a lineage's
        namespace (a replication target of that lineage); by default a new
        chunk-id key is made. An encrypted vault needs ``key_wrapper``.
        Raises :class:`VaultExists` if the storage already holds a config.
        """
        if encrypted and key_wrapper is None:
            raise KeyUnavailable("an encrypted vault needs a key service to wrap its data key")
        created = now or _now()
        store = layout.sharded(backend)
        if store.exists(layout.CONFIG):
            raise VaultExists(f"{backend.location or backend!r} already holds a vault")
        chunk_key_id, chunk_key_bytes = chunk_key or (new_key_id(), new_chunk_key())
        wrapper = key_wrapper if encrypted else None
        wrapped = wrap_key(
            chunk_key_bytes, key_id=chunk_key_id, purpose=PURPOSE_CHUNK_ID, vault_id=vault_id,
            wrapper=wrapper,
        )
        store.put_if_absent(layout.key_name(chunk_key_id), key_to_json(wrapped, created))
        data_keys: dict[bytes, DataKey] = {}
        data_key_id: bytes | None = None
        if encrypted:
            data_key_id = new_key_id()
            clear = new_data_key()
            wrapped_data = wrap_key(
                clear, key_id=data_key_id, purpose=PURPOSE_DATA, vault_id=vault_id,
                wrapper=key_wrapper,
            )
            store.put_if_absent(layout.key_name(data_key_id), key_to_json(wrapped_data, created))
            data_keys[data_key_id] = DataKey(data_key_id, clear)
        config = VaultConfig(
            vault_id=vault_id,
            chunk_key_id=chunk_key_id,
            data_key_id=data_key_id,
            created_at=created,
        )
        if pack_size:
            config = dataclasses.replace(config, pack_size=pack_size)
        if not store.put_if_absent(layout.CONFIG, config.to_json()):
            raise VaultExists("another writer created this vault at the same time")
        hashers = {chunk_key_id: ChunkHasher(chunk_key_id, chunk_key_bytes)}
        return cls(backend, config, hashers, data_keys)

    @classmethod
    def open(
        cls,
        backend: Backend,
        *,
        unwrap: UnwrapFn | None = None,
        expect_encrypted: bool | None = None,
        load_index: bool = True,
        index_every_packs: int = INDEX_EVERY_PACKS,
        index_every_seconds: float = INDEX_EVERY_SECONDS,
        uploads_in_flight: int = UPLOADS_IN_FLIGHT,
    ) -> Repository:
        """Opens a vault: reads ``config`` (refusing newer versions), unwraps
        its keys with ``unwrap`` and loads the index.

        ``expect_encrypted`` is what the catalog says; a config that disagrees
        is refused (the config is not authenticated, section 3).
        """
        store = layout.sharded(backend)
        try:
            raw = store.get(layout.CONFIG)
        except ObjectNotFound:
            where = backend.location or repr(backend)
            raise RepoError(f"no vault in {where}: config missing") from None
        config = VaultConfig.from_json(raw)
        if expect_encrypted is not None and expect_encrypted != config.encrypted:
            raise IntegrityError(
                f"vault {config.vault_id}: config says encrypted={config.encrypted}, "
                f"catalog says {expect_encrypted}; refusing"
            )
        hashers: dict[bytes, ChunkHasher] = {}
        data_keys: dict[bytes, DataKey] = {}
        for key_id in _key_ids(store):
            wrapped = key_from_json(store.get(layout.key_name(key_id)), layout.key_name(key_id))
            if wrapped.key_id != key_id:
                raise FormatError(f"{layout.key_name(key_id)}: names key {wrapped.key_id.hex()}")
            if config.encrypted and not wrapped.is_wrapped:
                raise IntegrityError(f"{layout.key_name(key_id)}: unwrapped key in encrypted vault")
            clear = unwrap_key(wrapped, unwrap)
            if wrapped.purpose == PURPOSE_CHUNK_ID:
                hashers[key_id] = ChunkHasher(key_id, clear)
            else:
                data_keys[key_id] = DataKey(key_id, clear)
        if config.chunk_key_id not in hashers:
            raise KeyUnavailable(f"chunk-id key {config.chunk_key_id.hex()} missing from keys/")
        if config.data_key_id is not None and config.data_key_id not in data_keys:
            raise KeyUnavailable(f"data key {config.data_key_id.hex()} missing from keys/")
        repo = cls(backend, config, hashers, data_keys, index_every_packs=index_every_packs,
                   index_every_seconds=index_every_seconds, uploads_in_flight=uploads_in_flight)
        if load_index:
            repo.load_index()
        return repo

    def add_chunk_key(
        self, key_id: bytes, key: bytes, *, source_vault_id: str, wrapper: KeyWrapper | None
    ) -> None:
        """Stores another lineage's chunk-id key (a replica's namespace, section 4.2)."""
        if key_id in self._hashers:
            return
        if self.config.encrypted and wrapper is None:
            raise KeyUnavailable("an encrypted vault stores keys only wrapped")
        wrapped = wrap_key(
            key, key_id=key_id, purpose=PURPOSE_CHUNK_ID, vault_id=source_vault_id,
            wrapper=wrapper if self.config.encrypted else None,
        )
        self.backend.put_if_absent(layout.key_name(key_id), key_to_json(wrapped, _now()))
        self._hashers[key_id] = ChunkHasher(key_id, key)

    @property
    def data_keys(self) -> Mapping[bytes, DataKey]:
        """The vault's data keys by id (to open pack headers read whole)."""
        return self._data_keys

    def hasher(self, key_id: bytes | None = None) -> ChunkHasher:
        """The chunk hasher of a namespace (the vault's own by default)."""
        kid = key_id or self.config.chunk_key_id
        try:
            return self._hashers[kid]
        except KeyError:
            raise KeyUnavailable(f"chunk-id key {kid.hex()} is not in this vault") from None

    # -- index --------------------------------------------------------------------------------

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

    def condemned_packs(self) -> set[bytes]:
        """Packs a ``condemned/`` record names (section 12): not to be used."""
        packs: set[bytes] = set()
        for info in self.backend.list(layout.CONDEMNED):
            try:
                record = json.loads(self.backend.get(info.name))
            except (ObjectNotFound, ValueError):
                continue
            if isinstance(record, dict):
                for pack_hex in record.get("packs", []) if isinstance(record.get("packs"),
                                                                          list) else []:
                    with contextlib.suppress(ValueError, TypeError):
                        packs.add(bytes.fromhex(pack_hex))
        return packs

    def list_index_files(self) -> list[bytes]:
        ids = []
        for info in self.backend.list(layout.INDEX):
            index_id = layout.id_from_name(info.name, layout.INDEX)
            if index_id is not None:
                ids.append(index_id)
        return ids

    def read_index_file(self, index_id: bytes) -> list[tuple[bytes, list[PackEntry]]]:
        """The packs an index file describes, checked against its name."""
        return decode_index(self._read_index_plain(index_id), layout.index_name(index_id))

    def _read_index_plain(self, index_id: bytes) -> bytes:
        """An index file's plaintext, checked against its name and opened."""
        name = layout.index_name(index_id)
        data = self.backend.get(name)
        if object_id(data) != index_id:
            raise IntegrityError(f"{name}: content does not match its name")
        return open_envelope(
            INDEX_MAGIC, data, self._data_keys, label=name,
            require_encryption=self.config.encrypted,
        )

    def write_index_files(self, packs: Iterable[tuple[bytes, list[PackEntry]]]) -> list[bytes]:
        """Writes index files describing ``packs`` (at most
        :data:`MAX_BLOBS_PER_INDEX_FILE` blobs each); returns their ids.

        Only for packs already stored: an index is written after the packs it
        describes (section 11). Touches no in-memory state, so prune can use
        it to rewrite and resurrect.
        """
        written = []
        batch: list[tuple[bytes, list[PackEntry]]] = []
        blobs = 0
        for item in packs:
            if batch and blobs + len(item[1]) > MAX_BLOBS_PER_INDEX_FILE:
                written.append(self._put_index(batch))
                batch, blobs = [], 0
            batch.append(item)
            blobs += len(item[1])
        if batch:
            written.append(self._put_index(batch))
        return written

    def _put_index(self, batch: list[tuple[bytes, list[PackEntry]]]) -> bytes:
        data = seal_envelope(INDEX_MAGIC, encode_index(batch), self._data_key)
        index_id = object_id(data)
        self.backend.put(layout.index_name(index_id), data)
        return index_id

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

    def list_packs(self) -> Iterator[bytes]:
        for info in self.backend.list(layout.DATA):
            pack_id = layout.id_from_name(info.name, layout.DATA)
            if pack_id is not None:
                yield pack_id

    def list_unindexed_packs(self) -> list[bytes]:
        """Packs in storage that no loaded index entry points into."""
        indexed = self.index.pack_ids()
        return [p for p in self.list_packs() if p not in indexed]

    def read_pack_header(self, pack_id: bytes) -> list[PackEntry]:
        _kind, entries, _size = read_pack_header(
            self.backend, layout.pack_name(pack_id), self._data_keys, pack_id
        )
        return entries

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

    # -- blobs --------------------------------------------------------------------------------

    def _new_writer(self, blob_type: BlobType) -> PackWriter:
        return PackWriter(blob_type, self._data_key, self.config.pack_size)

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

    def read_stored_at(self, location: Location, chunk_id: bytes) -> bytes:
        """The stored (encoded) bytes of a blob at ``location``, length-checked."""
        name = layout.pack_name(location.pack_id)
        try:
            stored = self.backend.get(name, location.offset, location.stored_length)
        except ObjectNotFound:
            raise IntegrityError(
                f"chunk {chunk_id.hex()}: pack {location.pack_id.hex()} is missing",
                chunk_id=chunk_id.hex(), pack_id=location.pack_id.hex(),
            ) from None
        if len(stored) != location.stored_length:
            raise IntegrityError(
                f"chunk {chunk_id.hex()}: pack {location.pack_id.hex()} is truncated",
                chunk_id=chunk_id.hex(), pack_id=location.pack_id.hex(),
            )
        return stored

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

    def __enter__(self) -> Repository:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- manifests ----------------------------------------------------------------------------

    def save_manifest(self, manifest: Manifest) -> str:
        """Flushes, then writes ``manifests/<backup_id>`` once; returns the hex
        SHA-256 of the object written, for the catalog to record (section 10).

        Raises :class:`ManifestExists` if that backup id is already stored;
        the stored manifest is left untouched.
        """
        name = layout.manifest_name(manifest.backup_id)
        self.flush()
        data = seal_envelope(MANIFEST_MAGIC, manifest.to_json(), self._data_key, name.encode())
        if not self.backend.put_if_absent(name, data):
            raise ManifestExists(f"backup {manifest.backup_id} already has a manifest")
        return hashlib.sha256(data).hexdigest()

    def load_manifest(self, backup_id: str, *, expected_sha256: str = "") -> Manifest:
        """The manifest of a backup. With ``expected_sha256`` (the catalog's
        record), a stored object that differs is refused: replaced or
        replayed, even if it is a valid manifest of this vault."""
        name = layout.manifest_name(backup_id)
        try:
            data = self.backend.get(name)
        except ObjectNotFound:
            raise ManifestNotFound(f"no manifest for backup {backup_id}") from None
        if expected_sha256 and hashlib.sha256(data).hexdigest() != expected_sha256:
            raise IntegrityError(f"{name}: differs from the manifest the catalog recorded "
                                 "for this backup (replaced or replayed); refusing it")
        plain = open_envelope(
            MANIFEST_MAGIC, data, self._data_keys, label=name, binding=name.encode(),
            require_encryption=self.config.encrypted,
        )
        manifest = Manifest.from_json(plain, name)
        if manifest.backup_id != backup_id:
            raise IntegrityError(f"{name}: holds backup {manifest.backup_id}")
        return manifest

    def list_manifests(self) -> Iterator[str]:
        """Backup ids of every stored manifest (unordered)."""
        for info in self.backend.list(layout.MANIFESTS):
            yield info.name[len(layout.MANIFESTS) :]


def _key_ids(store: Backend) -> list[bytes]:
    ids = []
    for info in store.list(layout.KEYS):
        key_id = layout.id_from_name(info.name, layout.KEYS, KEY_ID_SIZE)
        if key_id is not None:
            ids.append(key_id)
    return ids

