"""A vault's content objects in storage: index files, packs and the
``condemned/`` records (``docs/storage-format.md`` sections 6, 7 and 12).

This module owns reading and writing those objects by name with the vault's
data keys, and holds nothing else: prune and repair rewrite index files and
read condemned packs through it without touching what a writer holds in
memory. The in-memory index and the reads are :mod:`cbr.repo.content.reader`'s,
the write order :mod:`cbr.repo.content.store`'s.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator, Mapping

from cbr.repo import layout
from cbr.repo.config import VaultConfig
from cbr.repo.content.crypto import DataKey
from cbr.repo.content.envelope import INDEX_MAGIC, open_envelope, seal_envelope
from cbr.repo.content.ids import object_id
from cbr.repo.content.index import (
    MAX_BLOBS_PER_INDEX_FILE,
    Location,
    decode_index,
    encode_index,
)
from cbr.repo.content.pack import PackEntry, read_pack_header
from cbr.repo.errors import IntegrityError
from cbr.storage.backend import Backend, ObjectNotFound


class ContentFiles:
    """The index files, packs and condemned records of one vault, by name.

    The bottom layer of :class:`~cbr.repo.content.store.ContentStore`: the
    backend (seen through the vault's sharding), the config and the data
    keys, and no state beyond them.
    """

    def __init__(
        self, backend: Backend, config: VaultConfig, data_keys: dict[bytes, DataKey]
    ) -> None:
        self.backend = layout.sharded(backend)
        self.config = config
        self._data_keys = data_keys
        self._data_key = data_keys[config.data_key_id] if config.data_key_id else None

    @property
    def data_keys(self) -> Mapping[bytes, DataKey]:
        """The vault's data keys by id (to open pack headers read whole)."""
        return self._data_keys

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

    def list_packs(self) -> Iterator[bytes]:
        for info in self.backend.list(layout.DATA):
            pack_id = layout.id_from_name(info.name, layout.DATA)
            if pack_id is not None:
                yield pack_id

    def read_pack_header(self, pack_id: bytes) -> list[PackEntry]:
        _kind, entries, _size = read_pack_header(
            self.backend, layout.pack_name(pack_id), self._data_keys, pack_id
        )
        return entries

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
