"""The source agent's side of a replication stream to an importer.

:class:`GrpcReplicaTarget` is the format layer's ``ReplicaTarget`` over one
``ImporterService.Import`` stream, so the engine (``cbr.repo.replicate``)
drives the wire exactly as it drives an importer in the same process. Every
step but a put waits for its answer. Puts do not, up to
:data:`PUTS_IN_FLIGHT` of them: the importer verifies and stores one batch
while the source reads and sends the next, where waiting would leave each
side idle half the time. Answers come back in order, so the next step that
waits also collects the puts' answers, and the first error ends the stream
as before. The converters between wire chunks and their messages live here
for both sides.
"""

from __future__ import annotations

import queue
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grpc

from cbr.repo.content.blob import parse_blob_type
from cbr.repo.errors import RepoError
from cbr.repo.objects.manifest import Manifest
from cbr.repo.replicate import WireChunk
from cbr.v1 import importer_pb2

_END = object()

PUTS_IN_FLIGHT = 3
"""Puts left unanswered when :meth:`GrpcReplicaTarget.put` returns (0: each
waits for its answer). Each holds up to ``PUT_BYTES`` (4 MiB) on
both sides; two already keep the importer busy while the source reads the
next batch, the third absorbs the jitter of storage writes on the target."""

IMPORT_METHOD = "/cbr.v1.ImporterService/Import"


_LENGTH_DELIMITED, _VARINT = 2, 0


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _key(message: Any, field: str, wire_type: int) -> bytes:
    """A field's tag, its number taken from the generated descriptor."""
    return _varint(message.DESCRIPTOR.fields_by_name[field].number << 3 | wire_type)


_REQUEST_CHUNKS = _key(importer_pb2.ImportRequest, "chunks", _LENGTH_DELIMITED)
_BATCH_KEY_ID = _key(importer_pb2.ChunkBatch, "chunk_key_id", _LENGTH_DELIMITED)
_BATCH_CHUNK = _key(importer_pb2.ChunkBatch, "chunks", _LENGTH_DELIMITED)
_CHUNK_TYPE = _key(importer_pb2.WireChunk, "blob_type", _VARINT)
_CHUNK_ID = _key(importer_pb2.WireChunk, "chunk_id", _LENGTH_DELIMITED)
_CHUNK_RAW_LENGTH = _key(importer_pb2.WireChunk, "raw_length", _VARINT)
_CHUNK_COMPRESSED = _key(importer_pb2.WireChunk, "compressed", _VARINT)
_CHUNK_BODY = _key(importer_pb2.WireChunk, "body", _LENGTH_DELIMITED)


def encode_put(key_id: bytes, chunks: Sequence[WireChunk]) -> bytes:
    """The serialized ``ImportRequest`` of a put: what
    ``ImportRequest(chunks=ChunkBatch(...)).SerializeToString()`` gives, made
    with a single copy of each body (protobuf's way copies each one into its
    message, then into the output, under the GIL the source's reading needs)."""
    parts: list[bytes | memoryview] = [_BATCH_KEY_ID, _varint(len(key_id)), key_id]
    for c in chunks:
        head = b"".join((
            _CHUNK_TYPE + _varint(int(c.type)) if c.type else b"",
            _CHUNK_ID, _varint(len(c.chunk_id)), c.chunk_id,
            _CHUNK_RAW_LENGTH + _varint(c.raw_length) if c.raw_length else b"",
            _CHUNK_COMPRESSED + b"\x01" if c.compressed else b"",
            _CHUNK_BODY + _varint(len(c.body)) if c.body else b""))
        parts += (_BATCH_CHUNK, _varint(len(head) + len(c.body)), head, c.body)
    size = sum(map(len, parts))
    return b"".join((_REQUEST_CHUNKS, _varint(size), *parts))


def chunk_from_pb(msg: importer_pb2.WireChunk) -> WireChunk:
    return WireChunk(parse_blob_type(msg.blob_type), bytes(msg.chunk_id), msg.raw_length,
                     msg.compressed, bytes(msg.body))


class ImportStreamError(RepoError):
    """The importer ended the stream, or answered out of step."""


class GrpcReplicaTarget:
    """One Import stream; close it (or use ``with``) when done or failed.

    ``request_bytes`` counts what the stream sent: every request's serialized
    size, as the serializer handed it to gRPC (no framing)."""

    def __init__(self, channel: grpc.Channel, import_token: str, *,
                 timeout_s: float | None = None,
                 puts_in_flight: int = PUTS_IN_FLIGHT) -> None:
        self._token = import_token
        self._requests: queue.Queue[Any] = queue.Queue()
        # (step sent, answer wanted, where the answer goes) of each request
        # not yet answered, oldest first
        self._awaiting: deque[tuple[str, str, list[Any] | None]] = deque()
        self._puts_in_flight = max(0, puts_in_flight)
        self._stored = 0  # bytes answered by puts and not yet returned
        self.request_bytes = 0
        self.requests = 0
        call = channel.stream_stream(IMPORT_METHOD, request_serializer=self._serialize,
                                     response_deserializer=importer_pb2.ImportResponse.FromString)
        self._call = call(self._feed(), timeout=timeout_s)
        self._responses: Iterator[importer_pb2.ImportResponse] = iter(self._call)
        self.target_vault_id = ""

    def _serialize(self, request: importer_pb2.ImportRequest | bytes) -> bytes:
        data = request if isinstance(request, bytes) else request.SerializeToString()
        self.request_bytes += len(data)
        self.requests += 1
        return data

    def _feed(self) -> Iterator[importer_pb2.ImportRequest | bytes]:
        while True:
            item = self._requests.get()
            if item is _END:
                return
            yield item

    def _send(self, request: importer_pb2.ImportRequest | bytes, want: str,
              slot: list[Any] | None = None) -> None:
        """Queues a request (a message, or a put already serialized) for the
        stream; its answer goes into ``slot`` when it comes."""
        step = "chunks" if isinstance(request, bytes) else request.WhichOneof("step") or ""
        self._awaiting.append((step, want, slot))
        self._requests.put(request)

    def _receive(self) -> Any:
        """The answer to the oldest step still waiting for one."""
        sent, want, slot = self._awaiting.popleft()
        try:
            response = next(self._responses)
        except StopIteration:
            raise ImportStreamError("the importer closed the stream") from None
        if response.WhichOneof("step") != want:
            raise ImportStreamError(f"the importer answered {response.WhichOneof('step')!r} "
                                    f"to a {sent!r} step")
        answer = getattr(response, want)
        if want == "stored":
            self._stored += int(answer.stored_bytes)
        if slot is not None:
            slot.append(answer)
        return answer

    def _step(self, request: importer_pb2.ImportRequest, want: str) -> Any:
        self._send(request, want)
        while True:
            answer = self._receive()
            if not self._awaiting:
                return answer

    # -- ReplicaTarget ---------------------------------------------------------------------

    def begin(self, source_vault_id: str, key_id: bytes, chunk_key: bytes) -> None:
        opened = self._step(importer_pb2.ImportRequest(open=importer_pb2.ImportOpen(
            import_token=self._token, source_vault_id=source_vault_id,
            chunk_key_id=key_id, chunk_key=chunk_key)), "opened")
        self.target_vault_id = opened.target_vault_id

    def missing(self, key_id: bytes, chunk_ids: Sequence[bytes]) -> list[bytes]:
        return self.ask(key_id, chunk_ids)()

    def ask(self, key_id: bytes, chunk_ids: Sequence[bytes]) -> Callable[[], list[bytes]]:
        """Sends a query without waiting; what the returned function waits for."""
        slot: list[Any] = []
        self._send(importer_pb2.ImportRequest(query=importer_pb2.ChunkQuery(
            chunk_key_id=key_id, chunk_ids=list(chunk_ids))), "missing", slot)

        def answer() -> list[bytes]:
            while not slot:
                self._receive()
            return [bytes(c) for c in slot[0].chunk_ids]
        return answer

    def put(self, key_id: bytes, chunks: Sequence[WireChunk]) -> int:
        """Sends the chunks without waiting for their answer unless
        :data:`PUTS_IN_FLIGHT` puts already wait; returns the bytes stored by
        the puts answered since the last return (see :meth:`drain`)."""
        self._send(encode_put(key_id, chunks), "stored")
        while len(self._awaiting) > self._puts_in_flight:
            self._receive()
        stored, self._stored = self._stored, 0
        return stored

    def drain(self) -> int:
        """Waits for the answers of every put sent; the bytes they stored that
        :meth:`put` has not returned yet."""
        while self._awaiting:
            self._receive()
        stored, self._stored = self._stored, 0
        return stored

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
