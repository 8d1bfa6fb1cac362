"""Replication over a real ImporterService stream on loopback: a grant per
import, only missing chunks cross, a cut stream resumes with the same token,
and bad tokens, altered chunks and foreign manifests are refused with the
CBR codes, leaving no replica behind."""

from __future__ import annotations

import datetime as dt
import os
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from agent.dataplane import Progress
from agent.dataplane.disk import backup_disk, restore_disk
from agent.importer import (
    ImporterServicer,
    ImportGrant,
    ImportGrants,
    server_options,
    token_digest,
)
from agent.replication import GrpcReplicaTarget, chunk_from_pb, encode_put
from cbr.client import error_from_rpc
from cbr.repo import DiskContent, Manifest, Repository, Resource
from cbr.repo.content.blob import BlobType
from cbr.repo.replicate import (
    ReplicaSource,
    ReplicationStats,
    VaultImporter,
    WireChunk,
    backup_manifests,
    replica_manifests,
    replicate,
)
from cbr.storage.local import LocalBackend
from cbr.v1 import agent_pb2, importer_pb2, importer_pb2_grpc
from tests.support.processes import wait_until

MiB = 1 << 20
SOURCE = ReplicaSource(cloud="cloud-a", region="region-a", project_id="p1")


@dataclass
class Clouds:
    source: Repository
    target_dir: Path
    grants: ImportGrants
    channel: grpc.Channel
    now: list[dt.datetime]


@pytest.fixture
def clouds(tmp_path: Path) -> Iterator[Clouds]:
    source = Repository.init(LocalBackend(tmp_path / "source"), vault_id="vault-a",
                             encrypted=False)
    Repository.init(LocalBackend(tmp_path / "target"), vault_id="vault-b",
                    encrypted=False).close()
    now = [dt.datetime(2026, 1, 1, tzinfo=dt.UTC)]
    grants = ImportGrants(clock=lambda: now[0])
    server = grpc.server(ThreadPoolExecutor(4), options=server_options())
    importer_pb2_grpc.add_ImporterServiceServicer_to_server(ImporterServicer(grants), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Clouds(source, tmp_path / "target", grants, channel, now)
    finally:
        channel.close()
        server.stop(None)
        source.close()


def _grant(c: Clouds, token: str, replica_ids: Sequence[str], *,
           hours: float = 1) -> ImportGrant:
    grant = ImportGrant(
        replication_id=f"rep-{token}", token_sha256=token_digest(token), vault_id="vault-b",
        storage=agent_pb2.StorageAccess(url=str(c.target_dir)),
        replica_ids=frozenset(replica_ids), expires_at=c.now[0] + dt.timedelta(hours=hours))
    c.grants.expect(grant)
    return grant


def _disk_backup(c: Clouds, img: Path, backup_id: str, parent: str | None = None) -> Manifest:
    content = c.source.load_manifest(parent).content if parent else None
    assert content is None or isinstance(content, DiskContent)
    result = backup_disk(c.source, img, parent=content, progress=Progress())
    m = Manifest(backup_id=backup_id, name=backup_id, checkpoint_id="cp", vault_id="vault-a",
                 resource=Resource("d", "d", "disk", img.stat().st_size),
                 created_at=c.now[0], chunk_key_id=c.source.config.chunk_key_id,
                 content=result.content, parent_id=None, incremental=parent is not None)
    c.source.save_manifest(m)
    return m


def _send(c: Clouds, backup_id: str, token: str, replica_id: str,
          wrap: type[GrpcReplicaTarget] = GrpcReplicaTarget) -> ReplicationStats:
    manifests = backup_manifests(c.source, backup_id)
    replicas = replica_manifests(manifests, {backup_id: replica_id}, vault_id="vault-b",
                                 checkpoint_id="target-cp", source=SOURCE)
    with wrap(c.channel, token, timeout_s=60) as target:
        return replicate(c.source, manifests, target, replicas=replicas)


def _code(exc: grpc.RpcError) -> str:
    err = error_from_rpc(exc)
    assert err is not None, exc
    return err.code


def _restored(c: Clouds, replica_id: str, out: Path) -> bytes:
    target = Repository.open(LocalBackend(c.target_dir))
    replica = target.load_manifest(replica_id)
    assert isinstance(replica.content, DiskContent)
    restore_disk(target, replica.content, out, progress=Progress(), key_id=replica.chunk_key_id)
    return out.read_bytes()


def test_a_backup_and_its_incremental_cross_once_and_restore_on_the_target(
        clouds: Clouds, tmp_path: Path) -> None:
    img = tmp_path / "disk.img"
    img.write_bytes(os.urandom(6 * MiB) + b"text " * 300_000)
    _disk_backup(clouds, img, "b1")
    _grant(clouds, "t1", ["r1"])
    first = _send(clouds, "b1", "t1", "r1")
    assert first.chunks_sent == 9  # 8 data blocks and one map segment
    assert _restored(clouds, "r1", tmp_path / "r1.img") == img.read_bytes()
    with open(img, "r+b") as fh:
        fh.seek(3 * MiB)
        fh.write(b"changed")
    _disk_backup(clouds, img, "b2", parent="b1")
    _grant(clouds, "t2", ["r2"])
    second = _send(clouds, "b2", "t2", "r2")
    assert second.chunks_sent == 2 and second.raw_bytes_sent < MiB + 64 * 1024
    assert _restored(clouds, "r2", tmp_path / "r2.img") == img.read_bytes()
    # The grant is spent once committed.
    with pytest.raises(grpc.RpcError) as err:
        _send(clouds, "b2", "t2", "r2")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_unknown_and_expired_tokens_are_refused_as_unauthenticated(
        clouds: Clouds, tmp_path: Path) -> None:
    img = tmp_path / "disk.img"
    img.write_bytes(os.urandom(2 * MiB))
    _disk_backup(clouds, img, "b1")
    with pytest.raises(grpc.RpcError) as err:
        _send(clouds, "b1", "never-granted", "r1")
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert _code(err.value) == "BackupService.0401"
    _grant(clouds, "t1", ["r1"], hours=1)
    clouds.now[0] += dt.timedelta(hours=2)
    with pytest.raises(grpc.RpcError) as err:
        _send(clouds, "b1", "t1", "r1")
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


class _Altering(GrpcReplicaTarget):
    def put(self, key_id: bytes, chunks: Sequence[WireChunk]) -> int:
        return super().put(key_id, [WireChunk(c.type, c.chunk_id, c.raw_length, False,
                                              os.urandom(c.raw_length)) for c in chunks])


def test_an_altered_chunk_is_data_loss_and_leaves_no_replica(
        clouds: Clouds, tmp_path: Path) -> None:
    img = tmp_path / "disk.img"
    img.write_bytes(os.urandom(2 * MiB))
    _disk_backup(clouds, img, "b1")
    _grant(clouds, "t1", ["r1"])
    with pytest.raises(grpc.RpcError) as err:
        _send(clouds, "b1", "t1", "r1", wrap=_Altering)
    assert err.value.code() == grpc.StatusCode.DATA_LOSS
    assert _code(err.value) == "BackupService.0505"
    assert list(Repository.open(LocalBackend(clouds.target_dir)).list_manifests()) == []


def test_a_replica_id_that_was_not_granted_is_refused(clouds: Clouds, tmp_path: Path) -> None:
    img = tmp_path / "disk.img"
    img.write_bytes(os.urandom(2 * MiB))
    _disk_backup(clouds, img, "b1")
    _grant(clouds, "t1", ["r1"])
    with pytest.raises(grpc.RpcError) as err:
        _send(clouds, "b1", "t1", "someone-elses-id")
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert list(Repository.open(LocalBackend(clouds.target_dir)).list_manifests()) == []


def test_a_cut_stream_resumes_with_the_same_token_and_sends_only_the_rest(
        clouds: Clouds, tmp_path: Path) -> None:
    img = tmp_path / "disk.img"
    img.write_bytes(os.urandom(40 * MiB))
    _disk_backup(clouds, img, "b1")
    _grant(clouds, "t1", ["r1"])
    sent: list[int] = []

    class Cut(GrpcReplicaTarget):
        def __init__(self, channel: grpc.Channel, token: str, *, timeout_s: float) -> None:
            # No put in flight: every put before the cut was answered, so the
            # count of chunks that reached storage below is exact.
            super().__init__(channel, token, timeout_s=timeout_s, puts_in_flight=0)

        def put(self, key_id: bytes, chunks: Sequence[WireChunk]) -> int:
            if sum(sent) >= 32:
                self.close()  # the line drops mid-transfer
                raise ConnectionError("cut")
            sent.append(len(chunks))
            return super().put(key_id, chunks)

    with pytest.raises(ConnectionError):
        _send(clouds, "b1", "t1", "r1", wrap=Cut)
    # A source retries after a pause; by then the importer has noticed the cut.
    grant = clouds.grants.get("rep-t1")
    assert grant is not None
    wait_until(lambda: grant.streams == 0, message="the importer ends the cut stream")
    again = _send(clouds, "b1", "t1", "r1")
    # The importer kept the 32 chunks that arrived before the cut.
    assert 0 < again.chunks_sent <= 41 - 32
    assert _restored(clouds, "r1", tmp_path / "r1.img") == img.read_bytes()


def test_batches_received_before_a_break_are_stored_though_not_answered(
        clouds: Clouds, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    img = tmp_path / "disk.img"
    img.write_bytes(os.urandom(20 * MiB))  # five puts of 4 MiB
    _disk_backup(clouds, img, "b1")
    _grant(clouds, "t1", ["r1"])
    broken = threading.Event()
    real_put = VaultImporter.put

    def slow_put(self: VaultImporter, key_id: bytes, chunks: Sequence[WireChunk]) -> int:
        broken.wait(30)  # the importer is busy with the first batch when the line drops
        return real_put(self, key_id, chunks)

    monkeypatch.setattr(VaultImporter, "put", slow_put)
    sent: list[int] = []

    class Break(GrpcReplicaTarget):
        def put(self, key_id: bytes, chunks: Sequence[WireChunk]) -> int:
            if len(sent) == 3:
                # open, query, three puts
                wait_until(lambda: self.requests >= 5, message="three puts on the wire")
                time.sleep(0.5)  # let them arrive
                self._call.cancel()
                broken.set()
                raise ConnectionError("cut")
            sent.append(len(chunks))
            return super().put(key_id, chunks)

    with pytest.raises(ConnectionError):
        manifests = backup_manifests(clouds.source, "b1")
        replicas = replica_manifests(manifests, {"b1": "r1"}, vault_id="vault-b",
                                     checkpoint_id="target-cp", source=SOURCE)
        with Break(clouds.channel, "t1", timeout_s=60, puts_in_flight=8) as target:
            replicate(clouds.source, manifests, target, replicas=replicas)
    grant = clouds.grants.get("rep-t1")
    assert grant is not None
    wait_until(lambda: grant.streams == 0, message="the importer ends the broken stream")
    # None of the three was answered, yet all reached storage: the resumed
    # stream sends only the rest.
    assert grant.stats["chunks_received"] == sum(sent)
    monkeypatch.setattr(VaultImporter, "put", real_put)
    again = _send(clouds, "b1", "t1", "r1")
    assert again.chunks_sent == again.chunks_walked - sum(sent)
    assert _restored(clouds, "r1", tmp_path / "r1.img") == img.read_bytes()


def test_puts_in_flight_are_all_answered_and_counted_before_the_commit(
        clouds: Clouds, tmp_path: Path) -> None:
    img = tmp_path / "disk.img"
    img.write_bytes(os.urandom(24 * MiB))  # six puts of 4 MiB: more than are left in flight
    _disk_backup(clouds, img, "b1")
    grant = _grant(clouds, "t1", ["r1"])
    manifests = backup_manifests(clouds.source, "b1")
    replicas = replica_manifests(manifests, {"b1": "r1"}, vault_id="vault-b",
                                 checkpoint_id="target-cp", source=SOURCE)
    with GrpcReplicaTarget(clouds.channel, "t1", timeout_s=60) as target:
        stats = replicate(clouds.source, manifests, target, replicas=replicas)
        assert target.request_bytes > stats.wire_bytes_sent > 24 * MiB
    assert grant.committed and stats.chunks_sent == grant.stats["chunks_received"]
    assert stats.bytes_stored == grant.stats["bytes_stored"] > 24 * MiB
    assert _restored(clouds, "r1", tmp_path / "r1.img") == img.read_bytes()


@pytest.mark.parametrize("blob_type", list(BlobType))
def test_a_put_encoded_by_hand_is_exactly_what_protobuf_serializes(blob_type: BlobType) -> None:
    chunks = [WireChunk(blob_type, os.urandom(32), 5000, True, os.urandom(300)),
              WireChunk(blob_type, os.urandom(32), 0, False, b""),
              WireChunk(blob_type, os.urandom(32), 300_000, False, os.urandom(300_000)),
              # as the source sends a blob read with its neighbours: a view, not a copy
              WireChunk(blob_type, os.urandom(32), 900, True, memoryview(os.urandom(999))[99:])]
    key_id = os.urandom(16)
    reference = importer_pb2.ImportRequest(chunks=importer_pb2.ChunkBatch(
        chunk_key_id=key_id, chunks=[importer_pb2.WireChunk(
            blob_type=int(c.type), chunk_id=c.chunk_id, raw_length=c.raw_length,
            compressed=c.compressed, body=bytes(c.body)) for c in chunks]))
    assert encode_put(key_id, chunks) == reference.SerializeToString()
    assert [chunk_from_pb(m) for m in importer_pb2.ImportRequest.FromString(
        encode_put(key_id, chunks)).chunks.chunks] == chunks
