"""A vault's repository over a storage backend (``docs/storage-format.md``
sections 2, 3, 4.3, 10 and 11): the one object every caller opens.

This module owns what a vault is made of beyond its content: ``init``
(keys, then ``config``, written once), ``open`` (the config checked, the keys
unwrapped), another lineage's chunk-id key, and the write-once manifests,
written only after the content they name is flushed. The content itself (the
index, packs, blob saving and verified reads) is
:class:`~cbr.repo.content.store.ContentStore`'s; :class:`Repository` composes
one and offers its methods unchanged, so callers see a single object. It must
not walk disks or trees (``cbr.repo.objects`` encodes those; the agent walks)
and must not delete anything (prune does, under its own protocol, section 12).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from types import TracebackType

from cbr.clock import utc_now
from cbr.repo import layout
from cbr.repo.config import VaultConfig, key_from_json, key_to_json
from cbr.repo.content.blob import BlobBody, BlobType, EncodedBlob
from cbr.repo.content.crypto import (
    PURPOSE_CHUNK_ID,
    PURPOSE_DATA,
    DataKey,
    KeyWrapper,
    UnwrapFn,
    new_data_key,
    unwrap_key,
    wrap_key,
)
from cbr.repo.content.envelope import MANIFEST_MAGIC, open_envelope, seal_envelope
from cbr.repo.content.ids import KEY_ID_SIZE, ChunkHasher, new_chunk_key, new_key_id
from cbr.repo.content.index import Index, Location
from cbr.repo.content.pack import PackEntry
from cbr.repo.content.store import (
    INDEX_EVERY_PACKS,
    INDEX_EVERY_SECONDS,
    UPLOADS_IN_FLIGHT,
    ContentStore,
)
from cbr.repo.errors import (
    FormatError,
    IntegrityError,
    KeyUnavailable,
    ManifestExists,
    ManifestNotFound,
    RepoError,
    VaultExists,
)
from cbr.repo.objects.manifest import Manifest
from cbr.storage.backend import Backend, ObjectNotFound


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
        # The content store is handed the same key dicts: a chunk-id key
        # added here (add_chunk_key) is a namespace it reads and writes in.
        self.content = ContentStore(
            backend, config, hashers, data_keys, index_every_packs=index_every_packs,
            index_every_seconds=index_every_seconds, uploads_in_flight=uploads_in_flight,
        )
        self._hashers = hashers
        self._data_keys = data_keys
        self._data_key = data_keys[config.data_key_id] if config.data_key_id else None

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
        return self.content.data_keys

    def hasher(self, key_id: bytes | None = None) -> ChunkHasher:
        """The chunk hasher of a namespace (the vault's own by default)."""
        return self.content.hasher(key_id)

    # -- the content store's state, read and replaced through the repository -----------------

    @property
    def backend(self) -> Backend:
        """The vault's storage, seen through its sharding."""
        return self.content.backend

    @backend.setter
    def backend(self, backend: Backend) -> None:
        self.content.backend = backend

    @property
    def config(self) -> VaultConfig:
        return self.content.config

    @config.setter
    def config(self, config: VaultConfig) -> None:
        self.content.config = config

    @property
    def index(self) -> Index:
        """The in-memory index; prune and repair install one they built."""
        return self.content.index

    @index.setter
    def index(self, index: Index) -> None:
        self.content.index = index

    @property
    def damaged_index_files(self) -> dict[bytes, str]:
        """Index files load_index could not use (id -> why), found from headers."""
        return self.content.damaged_index_files

    @damaged_index_files.setter
    def damaged_index_files(self, damaged: dict[bytes, str]) -> None:
        self.content.damaged_index_files = damaged

    # -- content: each the content store's method of the same name ----------------------------

    def load_index(self) -> None:
        self.content.load_index()

    def condemned_packs(self) -> set[bytes]:
        return self.content.condemned_packs()

    def list_index_files(self) -> list[bytes]:
        return self.content.list_index_files()

    def read_index_file(self, index_id: bytes) -> list[tuple[bytes, list[PackEntry]]]:
        return self.content.read_index_file(index_id)

    def write_index_files(self, packs: Iterable[tuple[bytes, list[PackEntry]]]) -> list[bytes]:
        return self.content.write_index_files(packs)

    def list_packs(self) -> Iterator[bytes]:
        return self.content.list_packs()

    def list_unindexed_packs(self) -> list[bytes]:
        return self.content.list_unindexed_packs()

    def read_pack_header(self, pack_id: bytes) -> list[PackEntry]:
        return self.content.read_pack_header(pack_id)

    def recover_unindexed(self) -> list[bytes]:
        return self.content.recover_unindexed()

    def index_packs(self, packs: Iterable[tuple[bytes, list[PackEntry]]]) -> list[bytes]:
        return self.content.index_packs(packs)

    def has_blob(self, chunk_id: bytes, key_id: bytes | None = None) -> bool:
        return self.content.has_blob(chunk_id, key_id)

    def has_blobs(self, chunk_ids: Sequence[bytes], key_id: bytes | None = None) -> bool:
        return self.content.has_blobs(chunk_ids, key_id)

    def save_blob(
        self, blob_type: BlobType, data: bytes, *, key_id: bytes | None = None,
        chunk_id: bytes | None = None,
    ) -> bytes:
        return self.content.save_blob(blob_type, data, key_id=key_id, chunk_id=chunk_id)

    def store_blob(
        self, blob_type: BlobType, data: bytes | bytearray | memoryview, *,
        key_id: bytes | None = None, chunk_id: bytes | None = None,
        packed: bytes | memoryview | None = None, compress: bool = True,
    ) -> tuple[bytes, int]:
        return self.content.store_blob(blob_type, data, key_id=key_id, chunk_id=chunk_id,
                                       packed=packed, compress=compress)

    def repack_blob(self, blob: EncodedBlob) -> None:
        self.content.repack_blob(blob)

    def close_packs(self) -> None:
        self.content.close_packs()

    def flush(self) -> None:
        self.content.flush()

    def load_blob(self, chunk_id: bytes, *, key_id: bytes | None = None) -> bytes:
        return self.content.load_blob(chunk_id, key_id=key_id)

    def load_blob_bodies(
        self, chunk_ids: Sequence[bytes], *, key_id: bytes | None = None
    ) -> Iterator[tuple[bytes, BlobBody]]:
        return self.content.load_blob_bodies(chunk_ids, key_id=key_id)

    def read_stored_at(self, location: Location, chunk_id: bytes) -> bytes:
        return self.content.read_stored_at(location, chunk_id)

    def load_blob_at(
        self, location: Location, chunk_id: bytes, *, key_id: bytes | None = None
    ) -> bytes:
        return self.content.load_blob_at(location, chunk_id, key_id=key_id)

    def decode_stored(
        self, stored: bytes | memoryview, location: Location, chunk_id: bytes, *,
        key_id: bytes | None = None,
    ) -> bytes:
        return self.content.decode_stored(stored, location, chunk_id, key_id=key_id)

    def close(self) -> None:
        self.content.close()

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

