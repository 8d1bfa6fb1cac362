"""The source agent's side of a replication stream to an importer.

:class:`GrpcReplicaTarget` is the format layer's ``ReplicaTarget`` over one
``ImporterService.Import`` stream: each call sends one step and waits for its
answer, so the engine (``cbr.repo.replicate``) drives the wire exactly as it
drives an importer in the same process. The converters between wire chunks
and their messages live here for both sides.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator, Sequence
from typing import Any

import grpc

from cbr.repo.blob import parse_blob_type
from cbr.repo.errors import RepoError
from cbr.repo.manifest import Manifest
from cbr.repo.replicate import WireChunk
from cbr.v1 import importer_pb2, importer_pb2_grpc

_END = object()


def chunk_to_pb(chunk: WireChunk) -> importer_pb2.WireChunk:
    return importer_pb2.WireChunk(blob_type=int(chunk.type), chunk_id=chunk.chunk_id,
                                  raw_length=chunk.raw_length, compressed=chunk.compressed,
                                  body=chunk.body)


def chunk_from_pb(msg: importer_pb2.WireChunk) -> WireChunk:
    return WireChunk(parse_blob_type(msg.blob_type), bytes(msg.chunk_id), msg.raw_length,
                     msg.compressed, bytes(msg.body))


class ImportStreamError(RepoError):
    """The importer ended the stream, or answered out of step."""


class GrpcReplicaTarget:
    """One Import stream; close it (or use ``with``) when done or failed."""

    def __init__(self, channel: grpc.Channel, import_token: str, *,
                 timeout_s: float | None = None) -> None:
        self._token = import_token
        self._requests: queue.Queue[Any] = queue.Queue()
        stub = importer_pb2_grpc.ImporterServiceStub(channel)
        self._call = stub.Import(self._feed(), timeout=timeout_s)
        self._responses: Iterator[importer_pb2.ImportResponse] = iter(self._call)
        self.target_vault_id = ""
        # Serialized bytes of every step sent: what crossed, resends included.
        self.bytes_sent = 0

    def _feed(self) -> Iterator[importer_pb2.ImportRequest]:
        while True:
            item = self._requests.get()
            if item is _END:
                return
            yield item

    def _step(self, request: importer_pb2.ImportRequest, want: str) -> Any:
        self.bytes_sent += request.ByteSize()
        self._requests.put(request)
        try:
            response = next(self._responses)
        except StopIteration:
            raise ImportStreamError("the importer closed the stream") from None
        if response.WhichOneof("step") != want:
            raise ImportStreamError(f"the importer answered {response.WhichOneof('step')!r} "
                                    f"to a {request.WhichOneof('step')!r} step")
        return getattr(response, want)

    # -- ReplicaTarget ---------------------------------------------------------------------

    def begin(self, source_vault_id: str, key_id: bytes, chunk_key: bytes) -> None:
        opened = self._step(importer_pb2.ImportRequest(open=importer_pb2.ImportOpen(
            import_token=self._token, source_vault_id=source_vault_id,
            chunk_key_id=key_id, chunk_key=chunk_key)), "opened")
        self.target_vault_id = opened.target_vault_id

    def missing(self, key_id: bytes, chunk_ids: Sequence[bytes]) -> list[bytes]:
        result = self._step(importer_pb2.ImportRequest(query=importer_pb2.ChunkQuery(
            chunk_key_id=key_id, chunk_ids=list(chunk_ids))), "missing")
        return [bytes(c) for c in result.chunk_ids]

    def put(self, key_id: bytes, chunks: Sequence[WireChunk]) -> int:
        stored = self._step(importer_pb2.ImportRequest(chunks=importer_pb2.ChunkBatch(
            chunk_key_id=key_id, chunks=[chunk_to_pb(c) for c in chunks])), "stored")
        return int(stored.stored_bytes)

    def commit(self, manifests: Sequence[Manifest]) -> dict[str, str]:
        committed = self._step(importer_pb2.ImportRequest(commit=importer_pb2.ImportCommit(
            manifests=[m.to_json() for m in manifests])), "committed")
        return dict(committed.manifest_sha256)

    def close(self) -> None:
        self._requests.put(_END)
        self._call.cancel()

    def __enter__(self) -> GrpcReplicaTarget:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
