"""Replicating backups between two vaults with the format layer's engine:
only missing chunks cross, chunks are checked on arrival, a cut transfer
resumes, and a replica exists only when complete and restores identical."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from agent.dataplane import Progress
from agent.dataplane.disk import backup_disk, restore_disk
from agent.dataplane.tree_backup import backup_tree
from agent.dataplane.tree_restore import restore_tree
from cbr.repo import (
    DiskContent,
    IntegrityError,
    Manifest,
    Repository,
    Resource,
    TreeContent,
    layout,
)
from cbr.repo import replicate as replicate_module
from cbr.repo.content import blob
from cbr.repo.content.blob import FLAG_COMPRESSED, BlobType
from cbr.repo.content.crypto import AesKeyWrapper, new_data_key
from cbr.repo.maintenance.walk import iter_reachable
from cbr.repo.objects.manifest import Content
from cbr.repo.replicate import (
    IMPORT_INDEX_EVERY_PACKS,
    ReplicaSource,
    VaultImporter,
    WireChunk,
    backup_manifests,
    replica_manifests,
    replicate,
)
from cbr.storage.local import LocalBackend

MiB = 1 << 20
SOURCE = ReplicaSource(cloud="cloud-a", region="region-a", project_id="p1")


def _vault(path: Path, vault_id: str) -> Repository:
    return Repository.init(LocalBackend(path), vault_id=vault_id, encrypted=False)


def _target(path: Path) -> Repository:
    return Repository.open(LocalBackend(path), index_every_packs=IMPORT_INDEX_EVERY_PACKS)


def _manifest(repo: Repository, backup_id: str, content: Content, *,
              parent: str | None = None, children: Sequence[str] = ()) -> Manifest:
    kind = "disk" if isinstance(content, DiskContent) else "turbo" if content else "server"
    m = Manifest(backup_id=backup_id, name=backup_id, checkpoint_id="cp",
                 vault_id=repo.config.vault_id, resource=Resource("r", "r", kind, 0),
                 created_at=dt.datetime.now(dt.UTC), chunk_key_id=repo.config.chunk_key_id,
                 content=content, parent_id=parent, children=list(children),
                 incremental=parent is not None)
    repo.save_manifest(m)
    return m


def _replicate(source: Repository, backup_id: str, target_path: Path,
               replica_id: str) -> tuple[dict[str, int], Repository]:
    target = _target(target_path)
    manifests = backup_manifests(source, backup_id)
    ids = {m.backup_id: f"{replica_id}-{i}" for i, m in enumerate(manifests)}
    ids[backup_id] = replica_id
    replicas = replica_manifests(manifests, ids, vault_id=target.config.vault_id,
                                 checkpoint_id="target-cp", source=SOURCE)
    stats = replicate(source, manifests, VaultImporter(target), replicas=replicas)
    return vars(stats), target


def _image(path: Path) -> Path:
    with open(path, "wb") as fh:
        fh.truncate(24 * MiB)
        fh.write(os.urandom(5 * MiB))
        fh.seek(10 * MiB)
        fh.write(b"text " * 400_000)
    return path


def _disk_vaults(tmp_path: Path) -> tuple[Repository, Path]:
    """A source vault holding backup b1 of a disk image, and an empty target."""
    source = _vault(tmp_path / "source", "vault-a")
    _vault(tmp_path / "target", "vault-b").close()
    img = _image(tmp_path / "disk.img")
    _manifest(source, "b1", backup_disk(source, img, progress=Progress()).content)
    return source, img


def _same_file(a: Path, b: Path) -> bool:
    return a.read_bytes() == b.read_bytes()


def _restores_as(target: Repository, replica_id: str, out: Path, img: Path) -> bool:
    """Whether a disk replica restores to ``out`` identical to ``img``."""
    replica = target.load_manifest(replica_id)
    assert isinstance(replica.content, DiskContent)
    restore_disk(target, replica.content, out, progress=Progress(), key_id=replica.chunk_key_id)
    return _same_file(out, img)


def test_disk_and_tree_replicas_restore_identical_and_say_where_they_came_from(
        tmp_path: Path) -> None:
    source = _vault(tmp_path / "source", "vault-a")
    _vault(tmp_path / "target", "vault-b").close()
    img = _image(tmp_path / "disk.img")
    disk = backup_disk(source, img, progress=Progress())
    _manifest(source, "disk-1", disk.content)
    tree_src = tmp_path / "tree"
    (tree_src / "d").mkdir(parents=True)
    (tree_src / "d" / "f.bin").write_bytes(os.urandom(3 * MiB))
    (tree_src / "small").write_text("hello")
    tree = backup_tree(source, tree_src, progress=Progress())
    _manifest(source, "tree-1", tree.content)

    stats, target = _replicate(source, "disk-1", tmp_path / "target", "replica-disk")
    assert stats["chunks_sent"] > 0 and stats["wire_bytes_sent"] < stats["raw_bytes_sent"]
    stats, target = _replicate(source, "tree-1", tmp_path / "target", "replica-tree")

    replica = target.load_manifest("replica-disk")
    assert replica.image_type == "replication" and replica.vault_id == "vault-b"
    assert replica.source == {"backup_id": "disk-1", "vault_id": "vault-a", **{
        "cloud": "cloud-a", "region": "region-a", "project_id": "p1"}}
    assert replica.chunk_key_id == source.config.chunk_key_id != target.config.chunk_key_id
    assert isinstance(replica.content, DiskContent)
    restore_disk(target, replica.content, tmp_path / "out.img", progress=Progress(),
                 key_id=replica.chunk_key_id)
    assert _same_file(tmp_path / "out.img", img)
    tree_replica = target.load_manifest("replica-tree")
    assert isinstance(tree_replica.content, TreeContent)
    restore_tree(target, tree_replica.content, tmp_path / "out", progress=Progress(),
                 key_id=tree_replica.chunk_key_id)
    assert _same_file(tmp_path / "out" / "d" / "f.bin", tree_src / "d" / "f.bin")
    assert (tmp_path / "out" / "small").read_text() == "hello"
    # A fresh open reads the replica's namespace key from the target's keys/.
    reopened = Repository.open(LocalBackend(tmp_path / "target"))
    assert reopened.has_blob(disk.content.segments[0][1], source.config.chunk_key_id)


def test_a_chunk_met_again_while_the_previous_batch_is_in_flight_crosses_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Batches of three, each question asked before the previous batch's
    # chunks are stored: files with the same content in neighbouring batches
    # must not make their chunk cross twice.
    monkeypatch.setattr(replicate_module, "QUERY_BATCH", 3)
    source = _vault(tmp_path / "source", "vault-a")
    _vault(tmp_path / "target", "vault-b").close()
    tree_src = tmp_path / "tree"
    tree_src.mkdir()
    same = os.urandom(64 * 1024)
    for i in range(12):
        (tree_src / f"f{i:02}").write_bytes(same if i % 2 else os.urandom(64 * 1024))
    tree = backup_tree(source, tree_src, progress=Progress())
    manifest = _manifest(source, "tree-1", tree.content)
    distinct = {cid for _type, cid in iter_reachable(source, manifest)}
    stats, target = _replicate(source, "tree-1", tmp_path / "target", "replica")
    assert stats["chunks_sent"] == len(distinct) < stats["chunks_walked"]
    replica = target.load_manifest("replica")
    assert isinstance(replica.content, TreeContent)
    restore_tree(target, replica.content, tmp_path / "out", progress=Progress(),
                 key_id=replica.chunk_key_id)
    assert all(_same_file(tmp_path / "out" / f.name, f) for f in tree_src.iterdir())


def test_an_incremental_replica_sends_only_the_chunks_the_target_lacks(tmp_path: Path) -> None:
    source = _vault(tmp_path / "source", "vault-a")
    _vault(tmp_path / "target", "vault-b").close()
    img = _image(tmp_path / "disk.img")
    first = backup_disk(source, img, progress=Progress())
    _manifest(source, "b1", first.content)
    full, _target_repo = _replicate(source, "b1", tmp_path / "target", "r1")
    with open(img, "r+b") as fh:
        fh.seek(2 * MiB + 5)
        fh.write(os.urandom(1000))
    second = backup_disk(source, img, parent=first.content, progress=Progress())
    _manifest(source, "b2", second.content, parent="b1")
    again, target = _replicate(source, "b2", tmp_path / "target", "r2")
    # One changed data block and the map segment that lists it.
    assert again["chunks_sent"] == 2
    assert again["raw_bytes_sent"] < MiB + 64 * 1024 < full["raw_bytes_sent"]
    replica = target.load_manifest("r2")
    assert isinstance(replica.content, DiskContent)
    restore_disk(target, replica.content, tmp_path / "out.img", progress=Progress(),
                 key_id=replica.chunk_key_id)
    assert _same_file(tmp_path / "out.img", img)


def test_a_server_replica_keeps_its_disks_and_is_written_parent_last(tmp_path: Path) -> None:
    source = _vault(tmp_path / "source", "vault-a")
    _vault(tmp_path / "target", "vault-b").close()
    sys_img = _image(tmp_path / "sys.img")
    data_img = _image(tmp_path / "data.img")
    sys_b = backup_disk(source, sys_img, progress=Progress())
    data_b = backup_disk(source, data_img, progress=Progress())
    _manifest(source, "s-sys", sys_b.content, parent="server")
    _manifest(source, "s-data", data_b.content, parent="server")
    _manifest(source, "server", None, children=["s-sys", "s-data"])
    _stats, target = _replicate(source, "server", tmp_path / "target", "rs")
    server = target.load_manifest("rs")
    assert len(server.children) == 2
    for child_id, img in zip(server.children, (sys_img, data_img), strict=True):
        child = target.load_manifest(child_id)
        assert child.parent_id == "rs"
        assert isinstance(child.content, DiskContent)
        out = tmp_path / f"{child_id}.img"
        restore_disk(target, child.content, out, progress=Progress(),
                     key_id=child.chunk_key_id)
        assert _same_file(out, img)


class _CutAfter(VaultImporter):
    """An importer whose connection drops after ``limit`` chunks."""

    def __init__(self, repo: Repository, limit: int) -> None:
        super().__init__(repo)
        self.limit = limit
        self.taken = 0

    def put(self, key_id: bytes, chunks: Sequence[WireChunk]) -> int:
        stored = 0
        for chunk in chunks:
            if self.taken >= self.limit:
                raise ConnectionError("connection cut")
            stored += super().put(key_id, [chunk])
            self.taken += 1
        return stored


def test_a_cut_transfer_resumes_without_sending_what_reached_storage(tmp_path: Path) -> None:
    source = _vault(tmp_path / "source", "vault-a")
    _vault(tmp_path / "target", "vault-b").close()
    img = tmp_path / "disk.img"
    img.write_bytes(os.urandom(48 * MiB))
    disk = backup_disk(source, img, progress=Progress())
    _manifest(source, "b1", disk.content)
    manifests = backup_manifests(source, "b1")
    replicas = replica_manifests(manifests, {"b1": "r1"}, vault_id="vault-b",
                                 checkpoint_id="cp", source=SOURCE)
    # 40 of 49 chunks arrive, then the line drops and the importer dies
    # without flushing (its open pack is lost, stored packs were indexed).
    dying = _target(tmp_path / "target")
    with pytest.raises(ConnectionError):
        replicate(source, manifests, _CutAfter(dying, 40), replicas=replicas)
    dying.close()
    assert not list(Repository.open(LocalBackend(tmp_path / "target")).list_manifests())
    target = _target(tmp_path / "target")
    stats = replicate(source, manifests, VaultImporter(target), replicas=replicas)
    # 16 MiB packs of incompressible 1 MiB blocks: two full packs (30 blocks)
    # were stored and indexed before the cut; only the rest crosses again.
    assert stats.chunks_sent <= 49 - 30
    assert _restores_as(target, "r1", tmp_path / "out.img", img)


def test_a_chunk_that_does_not_match_its_id_is_refused_and_nothing_is_committed(
        tmp_path: Path) -> None:
    source = _vault(tmp_path / "source", "vault-a")
    _vault(tmp_path / "target", "vault-b").close()
    img = _image(tmp_path / "disk.img")
    disk = backup_disk(source, img, progress=Progress())
    _manifest(source, "b1", disk.content)
    manifests = backup_manifests(source, "b1")
    replicas = replica_manifests(manifests, {"b1": "r1"}, vault_id="vault-b",
                                 checkpoint_id="cp", source=SOURCE)

    class Tampering(VaultImporter):
        def put(self, key_id: bytes, chunks: Sequence[WireChunk]) -> int:
            bad = [WireChunk(c.type, c.chunk_id, c.raw_length, False,
                             b"\0" * c.raw_length) for c in chunks]
            return super().put(key_id, bad)

    target = _target(tmp_path / "target")
    with pytest.raises(IntegrityError, match="does not match its id"):
        replicate(source, manifests, Tampering(target), replicas=replicas)
    target.flush()
    assert list(target.list_manifests()) == []
    assert not target.has_blob(disk.content.segments[0][1], source.config.chunk_key_id)


def test_a_replica_with_a_chunk_missing_is_not_committed(tmp_path: Path) -> None:
    source = _vault(tmp_path / "source", "vault-a")
    _vault(tmp_path / "target", "vault-b").close()
    img = _image(tmp_path / "disk.img")
    disk = backup_disk(source, img, progress=Progress())
    _manifest(source, "b1", disk.content)
    manifests = backup_manifests(source, "b1")
    replicas = replica_manifests(manifests, {"b1": "r1"}, vault_id="vault-b",
                                 checkpoint_id="cp", source=SOURCE)

    class Forgetful(VaultImporter):
        def put(self, key_id: bytes, chunks: Sequence[WireChunk]) -> int:
            return super().put(key_id, chunks[1:])  # drops one chunk silently

    target = _target(tmp_path / "target")
    with pytest.raises(IntegrityError, match="incomplete"):
        replicate(source, manifests, Forgetful(target), replicas=replicas)
    assert list(target.list_manifests()) == []


@pytest.mark.parametrize("compressed", [True, False], ids=["zstd-frame", "raw"])
def test_a_blob_damaged_in_the_source_fails_the_transfer_and_leaves_no_replica(
        tmp_path: Path, compressed: bool) -> None:
    # The source sends stored bodies without decompressing or hashing them;
    # the importer's check is what stands between a flipped bit and a replica.
    source, _img = _disk_vaults(tmp_path)
    key_id = source.config.chunk_key_id
    victim, loc = next((cid, loc) for cid, loc in (
        (cid, source.index.lookup(key_id, cid))
        for _t, cid in iter_reachable(source, source.load_manifest("b1")))
        if loc is not None and loc.type == BlobType.DATA
        and bool(loc.flags & FLAG_COMPRESSED) == compressed)
    name = layout.pack_name(loc.pack_id)
    pack = bytearray(source.backend.get(name))
    pack[loc.offset + loc.stored_length // 2] ^= 0x40
    source.backend.put(name, bytes(pack))
    manifests = backup_manifests(source, "b1")
    replicas = replica_manifests(manifests, {"b1": "r1"}, vault_id="vault-b",
                                 checkpoint_id="cp", source=SOURCE)

    target = _target(tmp_path / "target")
    with pytest.raises(IntegrityError, match=victim.hex()):
        replicate(source, manifests, VaultImporter(target), replicas=replicas)
    target.flush()
    assert list(target.list_manifests()) == []
    assert not target.has_blob(victim, key_id)


def test_chunks_cross_and_are_stored_as_the_source_stores_them_never_compressed_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source, img = _disk_vaults(tmp_path)
    key_id = source.config.chunk_key_id
    stored = {cid: source.index.lookup(key_id, cid)
              for _t, cid in iter_reachable(source, source.load_manifest("b1"))}
    assert {bool(loc.flags & FLAG_COMPRESSED) for loc in stored.values() if loc} == {True, False}
    compressions: list[int] = []
    real = blob.compress

    def counting(data: bytes | bytearray | memoryview, level: int = 1) -> bytes:
        compressions.append(len(data))
        return real(data, level)

    monkeypatch.setattr(blob, "compress", counting)
    stats, target = _replicate(source, "b1", tmp_path / "target", "r1")
    # Neither side compresses: a frame crosses and is stored as it is, and a
    # chunk its source stored raw (compressing did not pay) is stored raw.
    assert compressions == []
    assert stats["wire_bytes_sent"] == sum(
        loc.stored_length for loc in stored.values() if loc is not None)
    target.flush()
    for cid, loc in stored.items():
        assert loc is not None
        there = target.index.lookup(key_id, cid)
        assert there is not None and there.flags == loc.flags
        assert target.read_stored_at(there, cid) == source.read_stored_at(loc, cid)
    assert _restores_as(target, "r1", tmp_path / "out.img", img)


def test_an_encrypted_source_sends_its_blobs_decrypted_and_an_encrypted_target_seals_them(
        tmp_path: Path) -> None:
    kek = AesKeyWrapper("kek-test", new_data_key())
    source = Repository.init(LocalBackend(tmp_path / "source"), vault_id="vault-a",
                             encrypted=True, key_wrapper=kek)
    Repository.init(LocalBackend(tmp_path / "target"), vault_id="vault-b", encrypted=True,
                    key_wrapper=kek).close()
    img = _image(tmp_path / "disk.img")
    disk = backup_disk(source, img, progress=Progress())
    _manifest(source, "b1", disk.content)
    target = Repository.open(LocalBackend(tmp_path / "target"), unwrap=kek.unwrap,
                             index_every_packs=IMPORT_INDEX_EVERY_PACKS)
    manifests = backup_manifests(source, "b1")
    replicas = replica_manifests(manifests, {"b1": "r1"}, vault_id="vault-b",
                                 checkpoint_id="cp", source=SOURCE)
    stats = replicate(source, manifests, VaultImporter(target, wrapper=kek), replicas=replicas)
    assert 0 < stats.wire_bytes_sent < stats.raw_bytes_sent
    assert _restores_as(target, "r1", tmp_path / "out.img", img)
