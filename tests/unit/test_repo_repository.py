"""The repository over a real local backend: write order, dedup, verification,
unindexed packs, write-once manifests, config versions."""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import pytest

from cbr.repo import layout
from cbr.repo.content import blob
from cbr.repo.content.blob import BlobType
from cbr.repo.content.crypto import AesKeyWrapper, new_data_key
from cbr.repo.errors import (
    ChunkNotFound,
    IntegrityError,
    KeyUnavailable,
    ManifestExists,
    ManifestNotFound,
    RepoError,
    UnsupportedVersion,
    VaultExists,
)
from cbr.repo.objects.manifest import DiskContent, Manifest, Resource, TreeContent
from cbr.repo.repository import Repository
from cbr.storage import Backend, StorageError
from cbr.storage.backend import BackendWrapper
from cbr.storage.local import LocalBackend
from tests.support.faulty import Fault, FaultyBackend

WRAPPER = AesKeyWrapper("kek-test", new_data_key())
NOW = dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


def _init(root: Path, encrypted: bool, **kw: object) -> Repository:
    return Repository.init(
        LocalBackend(root), vault_id="vault-1", encrypted=encrypted,
        key_wrapper=WRAPPER if encrypted else None, **kw,  # type: ignore[arg-type]
    )


def _open(root: Path, **kw: object) -> Repository:
    return Repository.open(LocalBackend(root), unwrap=WRAPPER.unwrap, **kw)  # type: ignore[arg-type]


def _files(root: Path, prefix: str) -> list[Path]:
    return sorted(p for p in (root / prefix).rglob("*") if p.is_file())


def _manifest(repo: Repository, backup_id: str, content: object = None) -> Manifest:
    return Manifest(
        backup_id=backup_id, name="manualbk_0001", checkpoint_id="cp-1", vault_id="vault-1",
        resource=Resource("res-1", "web-1", "OS::Cinder::Volume", 10 << 30),
        created_at=NOW, protected_at=NOW, chunk_key_id=repo.config.chunk_key_id,
        content=content, incremental=True, parent_id=None, children=[],
        extend_info={"system_disk": True}, description="d",  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("encrypted", [False, True])
def test_blobs_round_trip_through_a_reopened_vault(tmp_path: Path, encrypted: bool) -> None:
    repo = _init(tmp_path, encrypted)
    payloads = {
        BlobType.DATA: [os.urandom(300_000), b"compress me " * 50_000, b""],
        BlobType.META: [b'{"v":1,"entries":[]}', os.urandom(100)],
    }
    ids = {(t, repo.save_blob(t, p)): p for t, ps in payloads.items() for p in ps}
    assert repo.load_blob(next(iter(ids))[1])  # readable before flush (open pack)
    repo.flush()
    again = _open(tmp_path, expect_encrypted=encrypted)
    for (_t, cid), payload in ids.items():
        assert again.load_blob(cid) == payload
    assert len(_files(tmp_path, "data")) == 2  # one data pack, one meta pack
    assert len(_files(tmp_path, "index")) == 1


def test_data_is_encrypted_at_rest_and_keys_are_wrapped(tmp_path: Path) -> None:
    repo = _init(tmp_path, True)
    secret = b"top secret payload " * 1000
    repo.save_blob(BlobType.DATA, secret)
    repo.flush()
    for path in _files(tmp_path, "data") + _files(tmp_path, "index"):
        assert b"top secret" not in path.read_bytes()
    for path in _files(tmp_path, "keys"):
        doc = json.loads(path.read_text())
        assert doc["wrapping"] == {"scheme": "key-service", "kek_id": "kek-test"}
    with pytest.raises(KeyUnavailable):
        Repository.open(LocalBackend(tmp_path))  # no key service
    with pytest.raises(IntegrityError):
        _open(tmp_path, expect_encrypted=False)


def test_unencrypted_vault_stores_its_chunk_key_unwrapped(tmp_path: Path) -> None:
    _init(tmp_path, False)
    (key_file,) = _files(tmp_path, "keys")
    assert json.loads(key_file.read_text())["wrapping"] == {"scheme": "none"}
    assert Repository.open(LocalBackend(tmp_path)).config.encrypted is False


def test_same_chunk_saved_twice_is_stored_once(tmp_path: Path) -> None:
    repo = _init(tmp_path, False)
    block = os.urandom(1 << 20)
    first = repo.save_blob(BlobType.DATA, block)
    assert repo.save_blob(BlobType.DATA, block) == first
    repo.flush()
    size = sum(p.stat().st_size for p in _files(tmp_path, "data"))
    again = _open(tmp_path)
    assert again.save_blob(BlobType.DATA, block) == first  # dedup against stored index
    again.flush()
    assert sum(p.stat().st_size for p in _files(tmp_path, "data")) == size
    assert len(again.index) == 1


def test_packs_close_at_the_target_size(tmp_path: Path) -> None:
    repo = _init(tmp_path, False, pack_size=1 << 20)
    for _ in range(10):
        repo.save_blob(BlobType.DATA, os.urandom(300_000))
    repo.flush()
    packs = _files(tmp_path, "data")
    assert len(packs) == 4  # 3 + 3 + 3 + 1 blobs
    assert all(p.stat().st_size <= (1 << 20) + 4096 for p in packs)
    assert all(p.parent.name == p.name[:2] for p in packs)  # data/<2 hex>/<pack id>


@pytest.mark.parametrize("encrypted", [False, True])
def test_a_corrupted_byte_in_a_pack_fails_the_read_naming_chunk_and_pack(
    tmp_path: Path, encrypted: bool
) -> None:
    repo = _init(tmp_path, encrypted)
    good = repo.save_blob(BlobType.DATA, os.urandom(5000))
    bad = repo.save_blob(BlobType.DATA, os.urandom(5000))
    repo.flush()
    (pack_path,) = _files(tmp_path, "data")
    loc = repo.index.lookup(repo.config.chunk_key_id, bad)
    assert loc is not None
    raw = bytearray(pack_path.read_bytes())
    raw[loc.offset + 100] ^= 0x01
    pack_path.write_bytes(bytes(raw))
    again = _open(tmp_path)
    assert len(again.load_blob(good)) == 5000
    with pytest.raises(IntegrityError) as err:
        again.load_blob(bad)
    assert err.value.chunk_id == bad.hex()
    assert err.value.pack_id == pack_path.name
    assert bad.hex() in str(err.value) and pack_path.name in str(err.value)


def test_a_truncated_or_missing_pack_fails_the_read(tmp_path: Path) -> None:
    repo = _init(tmp_path, False)
    cid = repo.save_blob(BlobType.DATA, os.urandom(5000))
    repo.flush()
    (pack_path,) = _files(tmp_path, "data")
    pack_path.write_bytes(pack_path.read_bytes()[:1000])
    with pytest.raises(IntegrityError, match="truncated"):
        _open(tmp_path).load_blob(cid)
    pack_path.unlink()
    with pytest.raises(IntegrityError, match="missing"):
        _open(tmp_path).load_blob(cid)
    with pytest.raises(ChunkNotFound):
        _open(tmp_path).load_blob(b"\0" * 32)


def test_a_pack_without_its_index_is_invisible_until_recovered(tmp_path: Path) -> None:
    # encrypted: random nonces make the re-stored pack differ from the orphan
    crashed = _init(tmp_path, True, pack_size=1 << 16)
    payload = os.urandom(100_000)
    cid = crashed.save_blob(BlobType.DATA, payload)  # closes a pack at once (> target)
    crashed.content._wait_uploads()  # stored in the background
    assert len(_files(tmp_path, "data")) == 1 and not _files(tmp_path, "index")
    # the writer "crashes" here: no flush, no index file
    reader = _open(tmp_path)
    with pytest.raises(ChunkNotFound):
        reader.load_blob(cid)
    assert [p.hex() for p in reader.list_unindexed_packs()] == [
        _files(tmp_path, "data")[0].name]
    # ignored safely: a new backup stores the chunk again and everything reads
    writer = _open(tmp_path)
    assert writer.save_blob(BlobType.DATA, payload) == cid
    writer.flush()
    assert _open(tmp_path).load_blob(cid) == payload
    # and recovery (maintenance, under the prune lock) indexes the orphan pack
    maintenance = _open(tmp_path)
    assert len(maintenance.recover_unindexed()) == 1
    assert _open(tmp_path).list_unindexed_packs() == []


def test_index_files_are_written_every_n_packs_before_flush(tmp_path: Path) -> None:
    repo = _init(tmp_path, False, pack_size=1 << 16)
    repo.content._index_every_packs = 2
    repo.content._max_in_flight = 1  # one upload thread: packs are stored in order
    for _ in range(5):
        repo.save_blob(BlobType.DATA, os.urandom(70_000))
    repo.content._wait_uploads()
    assert len(_files(tmp_path, "index")) == 2
    assert len(_open(tmp_path).index) == 4


def test_an_index_file_is_written_once_the_oldest_unindexed_pack_is_old_enough(
        tmp_path: Path) -> None:
    """Issue 19: a backup killed before 16 packs reused nothing."""
    repo = _init(tmp_path, False, pack_size=1 << 16)
    repo.content._max_in_flight = 1
    repo.content._index_every_seconds = 0.5
    repo.save_blob(BlobType.DATA, os.urandom(70_000))  # closes one pack
    repo.content._wait_uploads()
    assert _files(tmp_path, "index") == []  # one pack, just stored: not yet
    time.sleep(0.6)
    repo.save_blob(BlobType.DATA, os.urandom(70_000))  # the next pack stored is the cue
    repo.content._wait_uploads()
    assert len(_files(tmp_path, "index")) == 1
    assert len(_open(tmp_path).index) == 2  # both packs' blobs, without flush


@pytest.mark.parametrize("encrypted", [False, True])
def test_manifests_are_write_once_and_listed(tmp_path: Path, encrypted: bool) -> None:
    repo = _init(tmp_path, encrypted)
    seg = repo.save_blob(BlobType.META, b"segment")
    disk = _manifest(repo, "b-1", DiskContent(10 << 30, 1 << 20, 4096, [(0, seg)]))
    repo.save_manifest(disk)  # flushes first: the segment is indexed before the manifest
    assert _files(tmp_path, "index")
    with pytest.raises(ManifestExists):
        repo.save_manifest(_manifest(repo, "b-1", TreeContent(seg)))
    repo.save_manifest(_manifest(repo, "b-2", TreeContent(seg)))
    again = _open(tmp_path)
    assert sorted(again.list_manifests()) == ["b-1", "b-2"]
    assert again.load_manifest("b-1") == disk
    with pytest.raises(ManifestNotFound):
        again.load_manifest("b-3")


def test_an_encrypted_manifest_moved_to_another_backup_id_is_refused(tmp_path: Path) -> None:
    repo = _init(tmp_path, True)
    repo.save_manifest(_manifest(repo, "b-1"))
    (tmp_path / "manifests" / "b-1").rename(tmp_path / "manifests" / "b-9")
    with pytest.raises(IntegrityError):
        _open(tmp_path).load_manifest("b-9")


def test_a_newer_format_version_is_refused(tmp_path: Path) -> None:
    _init(tmp_path, False)
    config = tmp_path / "config"
    doc = json.loads(config.read_text())
    doc["version"] = 2
    config.write_text(json.dumps(doc))
    with pytest.raises(UnsupportedVersion, match="newer"):
        _open(tmp_path)


def test_init_refuses_an_existing_vault(tmp_path: Path) -> None:
    _init(tmp_path, False)
    with pytest.raises(VaultExists):
        _init(tmp_path, False)


def test_replica_vault_shares_its_source_chunk_ids(tmp_path: Path) -> None:
    source = _init(tmp_path / "a", False)
    key_id = source.config.chunk_key_id
    key = source.hasher()._key
    replica = Repository.init(
        LocalBackend(tmp_path / "b"), vault_id="vault-2", encrypted=True, key_wrapper=WRAPPER,
        chunk_key=(key_id, key),
    )
    data = os.urandom(4096)
    assert source.save_blob(BlobType.DATA, data) == replica.save_blob(BlobType.DATA, data)
    other = Repository.init(LocalBackend(tmp_path / "c"), vault_id="v3", encrypted=False)
    other.add_chunk_key(key_id, key, source_vault_id="vault-1", wrapper=None)
    cid = other.save_blob(BlobType.DATA, data, key_id=key_id)
    other.flush()
    reopened = Repository.open(LocalBackend(tmp_path / "c"))
    assert reopened.load_blob(cid, key_id=key_id) == data
    with pytest.raises(ChunkNotFound):
        reopened.load_blob(cid)  # not in the vault's own namespace


def test_layout_names_are_the_documented_ones() -> None:
    assert layout.pack_name(b"\xab" * 32) == "data/" + "ab" * 32
    with pytest.raises(ValueError):
        layout.manifest_name("../x")


# -- pipelined uploads ---------------------------------------------------------------------------


class _GatedBackend(BackendWrapper):
    """Holds every pack upload until ``gate`` is set; records what completed, in order."""

    def __init__(self, inner: Backend) -> None:
        super().__init__(inner)
        self.gate = threading.Event()
        self.done: list[str] = []
        self._lock = threading.Lock()

    def put_stream(self, name: str, chunks: Iterable[bytes | memoryview]) -> int:
        assert self.gate.wait(10)
        size = self.inner.put_stream(name, chunks)
        with self._lock:
            self.done.append(name)
        return size

    def put(self, name: str, data: bytes) -> None:
        self.inner.put(name, data)
        with self._lock:
            self.done.append(name)


def test_packs_upload_in_the_background_and_flush_waits_for_them(tmp_path: Path) -> None:
    _init(tmp_path, False, pack_size=1 << 16)
    gated = _GatedBackend(LocalBackend(tmp_path))
    repo = Repository.open(gated)
    payloads = [os.urandom(70_000) for _ in range(2)]
    ids = [repo.save_blob(BlobType.DATA, p) for p in payloads]  # each closes a pack
    # save_blob returned while the uploads wait: the blobs are pending, readable.
    assert repo.has_blob(ids[0]) and repo.load_blob(ids[1]) == payloads[1]
    assert not _files(tmp_path, "data") and not _files(tmp_path, "index")
    flushing = threading.Thread(target=repo.flush)
    flushing.start()
    time.sleep(0.1)
    assert flushing.is_alive() and not _files(tmp_path, "index")  # flush waits
    gated.gate.set()
    flushing.join(10)
    assert not flushing.is_alive()
    again = _open(tmp_path)
    assert [again.load_blob(c) for c in ids] == payloads
    repo.close()


def test_an_index_file_describes_only_packs_already_stored(tmp_path: Path) -> None:
    _init(tmp_path, False, pack_size=1 << 16)
    gated = _GatedBackend(LocalBackend(tmp_path))
    gated.gate.set()
    with Repository.open(gated, index_every_packs=2) as repo:
        for _ in range(7):
            repo.save_blob(BlobType.DATA, os.urandom(70_000))
        repo.flush()
        for position, name in enumerate(gated.done):
            if name.startswith("index/"):
                index_id = bytes.fromhex(name[len("index/"):])
                for pack_id, _entries in repo.read_index_file(index_id):
                    stored = f"data/{pack_id.hex()[:2]}/{pack_id.hex()}"  # sharded below
                    assert stored in gated.done[:position]


def test_an_upload_error_surfaces_on_the_next_save_and_flush_and_is_never_indexed(
        tmp_path: Path) -> None:
    _init(tmp_path, False, pack_size=1 << 16)
    faulty = FaultyBackend(LocalBackend(tmp_path))
    faulty.add("put_stream", Fault(error=StorageError("disk on fire"), skip=1))
    repo = Repository.open(faulty)
    repo.content._max_in_flight = 1
    repo.save_blob(BlobType.DATA, os.urandom(70_000))  # stored
    lost = repo.save_blob(BlobType.DATA, os.urandom(70_000))  # fails in the background
    repo.content._wait_uploads()
    with pytest.raises(StorageError, match="fire"):
        repo.save_blob(BlobType.DATA, os.urandom(10))
    with pytest.raises(StorageError, match="fire"):
        repo.flush()
    with pytest.raises(StorageError, match="fire"):
        repo.save_manifest(_manifest(repo, "b1"))
    assert not _files(tmp_path, "manifests")
    again = _open(tmp_path)  # the stored pack was indexed; the lost one never
    assert len(again.index) == 1 and not again.has_blob(lost)
    repo.close()


def test_concurrent_savers_store_each_chunk_once(tmp_path: Path) -> None:
    repo = _init(tmp_path, True, pack_size=1 << 18)
    payloads = [os.urandom(20_000) for _ in range(200)]
    errors: list[BaseException] = []

    def save(offset: int) -> None:
        try:
            for i in range(len(payloads)):
                repo.save_blob(BlobType.DATA, payloads[(i + offset) % len(payloads)])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=save, args=(k * 25,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    repo.flush()
    again = _open(tmp_path)
    assert len(again.index) == len(payloads)
    stored = sum(len(again.read_pack_header(p)) for p in again.list_packs())
    assert stored == len(payloads)  # no chunk stored twice
    assert all(again.load_blob(again.hasher().chunk_id(p)) == p for p in payloads)
    repo.close()


def test_close_stops_the_upload_threads(tmp_path: Path) -> None:
    before = set(threading.enumerate())
    with _init(tmp_path, False, pack_size=1 << 16) as repo:
        repo.save_blob(BlobType.DATA, os.urandom(70_000))
        repo.flush()
        started = set(threading.enumerate()) - before
        assert any(t.name.startswith("pack-upload") for t in started)
    assert not any(t.is_alive() for t in started)
    with pytest.raises(RepoError, match="closed"):
        repo.save_blob(BlobType.DATA, os.urandom(70_000))


class _CountingReads(BackendWrapper):
    def __init__(self, inner: Backend) -> None:
        super().__init__(inner)
        self.reads = 0

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        self.reads += name.startswith(layout.DATA)
        return self.inner.get(name, offset, length)


@pytest.mark.parametrize("encrypted", [False, True])
def test_blob_bodies_come_as_stored_and_neighbours_in_a_pack_are_read_at_once(
        tmp_path: Path, encrypted: bool) -> None:
    repo = _init(tmp_path, encrypted)
    texts = {repo.save_blob(BlobType.DATA, b"line %d\n" % n * 400): b"line %d\n" % n * 400
             for n in range(50)}
    noise = {repo.save_blob(BlobType.DATA, os.urandom(3000)) for _ in range(5)}
    pending = repo.save_blob(BlobType.DATA, b"not flushed yet " * 100)
    repo.flush()
    late = repo.save_blob(BlobType.DATA, b"still pending " * 100)
    counting = _CountingReads(LocalBackend(tmp_path))
    repo.backend = layout.sharded(counting)
    wanted = [*texts, *noise, pending, late]
    got = dict(repo.load_blob_bodies(wanted))
    assert set(got) == set(wanted)
    assert counting.reads == 1  # 56 blobs of one pack, one read; the pending one from memory
    for cid, text in texts.items():
        body = got[cid]
        assert body.compressed and body.raw_length == len(text)
        assert blob.decompress(body.body, body.raw_length) == text
    assert all(not got[cid].compressed for cid in noise)
    assert got[late].compressed
    with pytest.raises(ChunkNotFound):
        list(repo.load_blob_bodies([*texts, b"\x01" * 32]))
    repo.close()


def test_has_blobs_is_true_only_when_every_chunk_is_stored_or_being_stored(
        tmp_path: Path) -> None:
    repo = _init(tmp_path, False)
    stored = repo.save_blob(BlobType.DATA, b"indexed")
    repo.flush()
    pending = repo.save_blob(BlobType.DATA, b"in an open pack")
    missing = repo.hasher().chunk_id(b"never stored")
    assert repo.has_blobs([stored, pending])
    assert repo.has_blobs([])
    assert not repo.has_blobs([stored, missing, pending])
    # another namespace does not hold this vault's chunks
    assert not repo.has_blobs([stored], key_id=b"\x01" * len(repo.config.chunk_key_id))
