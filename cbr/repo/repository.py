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
code that releases the GIL), pack bookkeeping and uploads inside it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
import uuid
from collections.abc import Iterator

from cbr.repo import layout
from cbr.repo.blob import BlobType, EncodedBlob, decode_blob, encode_blob
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
from cbr.repo.index import MAX_BLOBS_PER_INDEX_FILE, Index, decode_index, encode_index
from cbr.repo.manifest import Manifest
from cbr.repo.pack import FinishedPack, PackEntry, PackWriter, read_pack_header
from cbr.storage.backend import Backend, ObjectNotFound

UPLOADS_IN_FLIGHT = 2
"""Packs stored at once; each holds up to ``pack_size`` bytes of memory."""

INDEX_EVERY_PACKS = 16
"""An index file is written after this many packs even before ``flush`` (section 7)."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


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
    ) -> None:
        self.backend = layout.sharded(backend)
        self.config = config
        self._hashers = hashers
        self._data_keys = data_keys
        self._data_key = data_keys[config.data_key_id] if config.data_key_id else None
        self.index = Index()
        self._lock = threading.RLock()
        self._done = threading.Condition(self._lock)
        self._uploads = 0
        self._upload_slots = threading.BoundedSemaphore(UPLOADS_IN_FLIGHT)
        self._upload_error: BaseException | None = None
        self._writers = {t: self._new_writer(t) for t in BlobType}
        self._pending: dict[tuple[bytes, bytes], EncodedBlob] = {}
        self._unindexed: list[tuple[bytes, list[PackEntry]]] = []
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
        repo = cls(backend, config, hashers, data_keys)
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

    def hasher(self, key_id: bytes | None = None) -> ChunkHasher:
        """The chunk hasher of a namespace (the vault's own by default)."""
        kid = key_id or self.config.chunk_key_id
        try:
            return self._hashers[kid]
        except KeyError:
            raise KeyUnavailable(f"chunk-id key {kid.hex()} is not in this vault") from None

    # -- index --------------------------------------------------------------------------------

    def load_index(self) -> None:
        """(Re)loads every index file into a fresh in-memory index."""
        index = Index()
        for index_id in self.list_index_files():
            index.merge_file(self._read_index_file(index_id))
        index.compact()
        with self._lock:
            self.index = index
            for pack_id, entries in self._unindexed:
                index.add_pack(pack_id, entries)

    def list_index_files(self) -> list[bytes]:
        ids = []
        for info in self.backend.list(layout.INDEX):
            index_id = layout.id_from_name(info.name, layout.INDEX)
            if index_id is not None:
                ids.append(index_id)
        return ids

    def _read_index_file(self, index_id: bytes) -> list[tuple[bytes, list[PackEntry]]]:
        name = layout.index_name(index_id)
        data = self.backend.get(name)
        if object_id(data) != index_id:
            raise IntegrityError(f"{name}: content does not match its name")
        plain = open_envelope(
            INDEX_MAGIC, data, self._data_keys, label=name,
            require_encryption=self.config.encrypted,
        )
        return decode_index(plain, name)

    def _write_index(self) -> None:
        """Writes index files for the packs uploaded since the last one."""
        while self._unindexed:
            batch: list[tuple[bytes, list[PackEntry]]] = []
            blobs = 0
            while self._unindexed and (not batch or blobs + len(self._unindexed[0][1])
                                       <= MAX_BLOBS_PER_INDEX_FILE):
                item = self._unindexed.pop(0)
                batch.append(item)
                blobs += len(item[1])
            data = seal_envelope(INDEX_MAGIC, encode_index(batch), self._data_key)
            try:
                self.backend.put(layout.index_name(object_id(data)), data)
            except BaseException:
                self._unindexed[:0] = batch
                raise

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
        for pack_id in self.list_unindexed_packs():
            entries = self.read_pack_header(pack_id)
            with self._lock:
                self.index.add_pack(pack_id, entries)
                self._unindexed.append((pack_id, entries))
            recovered.append(pack_id)
        with self._lock:
            self._write_index()
        return recovered

    # -- blobs --------------------------------------------------------------------------------

    def _new_writer(self, blob_type: BlobType) -> PackWriter:
        return PackWriter(blob_type, self._data_key, self.config.pack_size)

    def has_blob(self, chunk_id: bytes, key_id: bytes | None = None) -> bool:
        kid = key_id or self.config.chunk_key_id
        with self._lock:
            return (kid, chunk_id) in self._pending or self.index.contains(kid, chunk_id)

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
    ) -> tuple[bytes, int]:
        """Like :meth:`save_blob`; also returns the stored bytes this call added
        (0 when the vault already had the chunk), for progress and usage."""
        if self._upload_error is not None:
            raise self._upload_error
        hasher = self.hasher(key_id)
        cid = chunk_id if chunk_id is not None else hasher.chunk_id(data)
        if self.has_blob(cid, hasher.key_id):
            return cid, 0
        blob = encode_blob(
            bytes(data) if not isinstance(data, bytes) else data, blob_type=blob_type,
            hasher=hasher, data_key=self._data_key, level=self.config.compression_level,
            chunk_id=cid,
        )
        closed: list[tuple[FinishedPack, set[tuple[bytes, bytes]]]] = []
        with self._lock:
            if (hasher.key_id, cid) in self._pending or self.index.contains(hasher.key_id, cid):
                return cid, 0
            writer = self._writers[blob_type]
            if not writer.fits(len(blob.stored)):
                closed.append(self._close_pack(blob_type))
                writer = self._writers[blob_type]
            writer.add(blob)
            self._pending[(hasher.key_id, cid)] = blob
            if writer.size >= writer.target_size:
                closed.append(self._close_pack(blob_type))
        for pack, keys in closed:
            self._upload(pack, keys)
        return cid, len(blob.stored)

    def _close_pack(self, blob_type: BlobType) -> tuple[FinishedPack, set[tuple[bytes, bytes]]]:
        """Under the lock: closes the open pack; its blobs stay pending (visible
        to lookups and reads) until :meth:`_upload` has stored and indexed it."""
        writer = self._writers[blob_type]
        pack: FinishedPack = writer.finish()
        self._writers[blob_type] = self._new_writer(blob_type)
        self._uploads += 1
        return pack, writer.chunk_ids

    def _upload(self, pack: FinishedPack, keys: set[tuple[bytes, bytes]]) -> None:
        """Stores a closed pack outside the lock, so other threads keep encoding
        and filling the next pack while this one travels (several uploads run
        at once, one per thread that closed a pack)."""
        try:
            with self._upload_slots:
                self.backend.put_stream(layout.pack_name(pack.pack_id), pack.parts)
        except BaseException as exc:
            with self._done:
                self._upload_error = self._upload_error or exc
                self._uploads -= 1
                self._done.notify_all()
            raise
        with self._done:
            self.index.add_pack(pack.pack_id, pack.entries)
            for key in keys:
                self._pending.pop(key, None)
            self._unindexed.append((pack.pack_id, pack.entries))
            self._uploads -= 1
            self._done.notify_all()
            if len(self._unindexed) >= self._index_every_packs:
                self._write_index()

    def _finish_pack(self, blob_type: BlobType) -> None:
        """Closes and uploads the open pack of a type now (the caller holds no lock)."""
        with self._lock:
            if self._writers[blob_type].count == 0:
                return
            closed = self._close_pack(blob_type)
        self._upload(*closed)

    def flush(self) -> None:
        """Uploads the open packs, waits for every upload other threads started,
        then writes the index file describing every pack uploaded since the last
        one (section 11, step 3). An upload that failed fails the flush, so no
        manifest is written over a missing pack."""
        for blob_type in BlobType:
            self._finish_pack(blob_type)
        with self._done:
            while self._uploads:
                self._done.wait()
            if self._upload_error is not None:
                # Sticky: blobs of the lost pack look stored to this repository
                # object, so nothing written through it may be trusted again.
                raise self._upload_error
            self._write_index()

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
        return decode_blob(
            stored, blob_type=location.type, flags=location.flags,
            raw_length=location.raw_length, chunk_id=chunk_id, hasher=hasher,
            data_key=self._data_key, pack_id=location.pack_id,
        )

    def close(self) -> None:
        """Releases what the repository holds (nothing to flush: callers flush)."""

    # -- manifests ----------------------------------------------------------------------------

    def save_manifest(self, manifest: Manifest) -> None:
        """Flushes, then writes ``manifests/<backup_id>`` once.

        Raises :class:`ManifestExists` if that backup id is already stored;
        the stored manifest is left untouched.
        """
        name = layout.manifest_name(manifest.backup_id)
        self.flush()
        data = seal_envelope(MANIFEST_MAGIC, manifest.to_json(), self._data_key, name.encode())
        if not self.backend.put_if_absent(name, data):
            raise ManifestExists(f"backup {manifest.backup_id} already has a manifest")

    def load_manifest(self, backup_id: str) -> Manifest:
        name = layout.manifest_name(backup_id)
        try:
            data = self.backend.get(name)
        except ObjectNotFound:
            raise ManifestNotFound(f"no manifest for backup {backup_id}") from None
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


def new_backup_id() -> str:
    """A fresh backup id usable as a manifest name (the catalog may supply its own)."""
    return str(uuid.uuid4())
