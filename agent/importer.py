"""The importer's side of replication: ``ImporterService`` on an importer agent.

The target controller announces each import it allows as an
:class:`ImportGrant`: the digest of a random bearer token (the token itself
goes to the source side through the credentialed API), the replication
vault, its storage, the replica backup ids the source may write, and an
expiry. A source agent opens an ``Import`` stream with the token; the
importer opens the vault under a backup lock and runs the format layer's
:class:`~cbr.repo.replicate.VaultImporter` step by step. The grant stays
valid until it expires or its replica is committed, so a cut stream resumes
by opening again.

Nothing a stream sends is trusted: the token must match a live grant, every
chunk is checked against its keyed id, and the committed manifests must be
replicas into the granted vault with the granted ids.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc

from agent.commands.storage import TaskKeys, open_storage
from agent.replication import chunk_from_pb
from cbr import errors, faults, limits
from cbr.clock import utc_now
from cbr.listen import NO_PORT_SHARING, bind
from cbr.repo import Manifest, Repository
from cbr.repo.errors import FormatError
from cbr.repo.maintenance.locks import Lock
from cbr.repo.replicate import IMPORT_INDEX_EVERY_PACKS, VaultImporter
from cbr.status import status_of
from cbr.v1 import importer_pb2, importer_pb2_grpc

log = logging.getLogger("cbr.agent.importer")

Clock = Callable[[], dt.datetime]

MAX_MESSAGE_BYTES = limits.IMPORT_MESSAGE_BYTES


READ_AHEAD = 3
"""Requests of a stream received while the importer still works on an
earlier one: with the source's puts in flight, receiving (TLS, parsing) then
overlaps verifying and storing, and each side waits less for the other.
Each may hold a put of ``PUT_BYTES``."""

_END = object()


class _ReadAhead:
    """A stream's requests, received on a thread of its own into a bounded
    queue; ends (or raises what the stream raised) where the stream does."""

    def __init__(self, requests: Iterator[importer_pb2.ImportRequest], depth: int) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._closed = threading.Event()
        self._finished = False
        threading.Thread(target=self._receive, args=(requests,), name="import-read-ahead",
                         daemon=True).start()

    def _receive(self, requests: Iterator[importer_pb2.ImportRequest]) -> None:
        try:
            for request in requests:
                if not self._offer(request):
                    return
            self._offer(_END)
        except BaseException as exc:  # handed to the consumer, which raises it
            self._offer(exc)

    def _offer(self, item: object) -> bool:
        while not self._closed.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> _ReadAhead:
        return self

    def __next__(self) -> importer_pb2.ImportRequest:
        if self._finished:
            raise StopIteration
        item = self._queue.get()
        if item is _END:
            self._finished = True
            raise StopIteration
        if isinstance(item, BaseException):
            self._finished = True
            raise item
        request: importer_pb2.ImportRequest = item
        return request

    def received(self) -> Iterator[importer_pb2.ImportRequest]:
        """The requests already received and not yet read, without waiting
        for more."""
        while not self._finished:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is _END or isinstance(item, BaseException):
                self._finished = True
                return
            yield item

    def close(self) -> None:
        """Lets the receiving thread go once the session no longer reads."""
        self._closed.set()


def server_options() -> list[tuple[str, int]]:
    """gRPC options of a server that hosts ImporterService."""
    return [NO_PORT_SHARING, ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]


def _utcnow() -> dt.datetime:
    return utc_now()


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@dataclass
class ImportGrant:
    """One replication the target controller allows into one vault."""

    replication_id: str
    token_sha256: bytes
    vault_id: str
    storage: Any  # a StorageAccess: url and, for S3, keys (memory only)
    replica_ids: frozenset[str]
    expires_at: dt.datetime
    committed: bool = False
    streams: int = 0
    stats: dict[str, int] = field(default_factory=dict)
    commit_lock: threading.Lock = field(default_factory=threading.Lock)
    # Set when the replica is committed or the import is aborted.
    ended: threading.Event = field(default_factory=threading.Event)
    aborted: bool = False
    manifest_sha256: dict[str, str] = field(default_factory=dict)


class ImportGrants:
    """The grants this importer holds, found by token (compared in constant time)."""

    def __init__(self, clock: Clock = _utcnow) -> None:
        self._lock = threading.Lock()
        self._grants: dict[str, ImportGrant] = {}
        self._clock = clock

    def expect(self, grant: ImportGrant) -> None:
        with self._lock:
            self._grants[grant.replication_id] = grant

    def forget(self, replication_id: str) -> None:
        with self._lock:
            self._grants.pop(replication_id, None)

    def abort(self, replication_id: str) -> bool:
        """Ends a grant that is not committed: no new stream opens with it
        and its import command returns."""
        with self._lock:
            grant = self._grants.get(replication_id)
            if grant is None or grant.committed:
                return False
            grant.aborted = True
        grant.ended.set()
        return True

    def ids(self) -> list[str]:
        with self._lock:
            return list(self._grants)

    def get(self, replication_id: str) -> ImportGrant | None:
        with self._lock:
            return self._grants.get(replication_id)

    @contextlib.contextmanager
    def redeem(self, token: str) -> Iterator[ImportGrant]:
        """The live grant of ``token``, held by this stream until the block ends."""
        digest = token_digest(token)
        now = self._clock()
        with self._lock:
            for grant in list(self._grants.values()):
                if grant.expires_at <= now and not grant.streams:
                    del self._grants[grant.replication_id]
            found = next((g for g in self._grants.values()
                          if hmac.compare_digest(g.token_sha256, digest)), None)
            if found is None or found.expires_at <= now or found.aborted:
                raise errors.Unauthenticated(
                    "The import token is unknown or expired; ask the target cloud for a "
                    "new replication.")
            if found.committed:
                raise errors.Conflict(f"Replication {found.replication_id} is already "
                                      "committed on the target.")
            # A source that lost its stream may open a new one before this side
            # noticed: both may run (what both send is stored once), and only
            # one commit can win (``commit_lock``).
            found.streams += 1
        try:
            yield found
        finally:
            with self._lock:
                found.streams -= 1


def _as_cbr(exc: BaseException) -> errors.CbrError:
    """What the source is told. Malformed replica data is the source's bad
    input; the rest maps as in every process (``cbr.faults``), and an
    unexpected error says nothing of this host's internals."""
    if isinstance(exc, FormatError):
        return errors.InvalidParameter(f"malformed replica data: {exc}")
    err = faults.as_cbr_error(exc, "replication vault")
    return errors.InternalError() if isinstance(err, errors.InternalError) else err


class ImporterServicer(importer_pb2_grpc.ImporterServiceServicer):
    def __init__(self, grants: ImportGrants) -> None:
        self.grants = grants

    def Import(self, request_iterator: Iterator[importer_pb2.ImportRequest],
               context: grpc.ServicerContext) -> Iterator[importer_pb2.ImportResponse]:
        requests = _ReadAhead(request_iterator, READ_AHEAD)
        try:
            yield from self._import(requests)
        except grpc.RpcError:
            log.info("an import stream ended from the source side")  # cut or cancelled
        except Exception as exc:
            err = _as_cbr(exc)
            if isinstance(err, errors.InternalError):
                log.exception("import stream failed", exc_info=exc)
            else:
                log.warning("import stream refused: %s", err.message)
            context.abort_with_status(status_of(err))
        finally:
            requests.close()

    def _import(self, requests: _ReadAhead) -> Iterator[importer_pb2.ImportResponse]:
        first = next(requests, None)
        if first is None:
            return
        if first.WhichOneof("step") != "open":
            raise errors.InvalidParameter("An import stream starts with an open step.")
        with self.grants.redeem(first.open.import_token) as grant:
            backend = open_storage(grant.storage)
            with Lock.acquire(backend, kind="backup", task_id=grant.replication_id):
                repo = Repository.open(backend, index_every_packs=IMPORT_INDEX_EVERY_PACKS,
                                       unwrap=TaskKeys(grant.storage.keys).unwrap,
                                       expect_encrypted=bool(grant.storage.encrypted))
                try:
                    yield from _Session(grant, repo).run(first, requests)
                finally:
                    if not grant.committed:
                        # A cut stream: keep every chunk that arrived, so the
                        # resumed stream does not send it again.
                        with contextlib.suppress(Exception):
                            repo.flush()
                    repo.close()


class _Session:
    def __init__(self, grant: ImportGrant, repo: Repository) -> None:
        self.grant = grant
        self.repo = repo
        self.importer = VaultImporter(repo)

    def run(self, first: importer_pb2.ImportRequest,
            requests: _ReadAhead) -> Iterator[importer_pb2.ImportResponse]:
        try:
            yield from self._run(first, requests)
        except GeneratorExit:
            # gRPC drops a stream's generator when the stream breaks: store the
            # batches that arrived before the break, so the resumed stream
            # need not send them again.
            self._store_received(requests)
            raise

    def _store_received(self, requests: _ReadAhead) -> None:
        for request in requests.received():
            if request.WhichOneof("step") != "chunks":
                return
            try:
                self._put(request.chunks)
            except Exception as exc:  # e.g. a damaged chunk: the resumed stream sends it again
                log.info("a batch received before the stream broke was not stored: %s", exc)
                return

    def _put(self, batch: importer_pb2.ChunkBatch) -> int:
        stored = self.importer.put(bytes(batch.chunk_key_id),
                                   [chunk_from_pb(c) for c in batch.chunks])
        self.grant.stats["bytes_stored"] = self.grant.stats.get("bytes_stored", 0) + stored
        self.grant.stats["chunks_received"] = \
            self.grant.stats.get("chunks_received", 0) + len(batch.chunks)
        return stored

    def _run(self, first: importer_pb2.ImportRequest,
             requests: _ReadAhead) -> Iterator[importer_pb2.ImportResponse]:
        yield self._open(first.open)
        for request in requests:
            step = request.WhichOneof("step")
            if step == "open":
                if not hmac.compare_digest(token_digest(request.open.import_token),
                                           self.grant.token_sha256):
                    raise errors.Unauthenticated("A stream cannot switch import tokens.")
                yield self._open(request.open)
            elif step == "query":
                missing = self.importer.missing(bytes(request.query.chunk_key_id),
                                                [bytes(c) for c in request.query.chunk_ids])
                yield importer_pb2.ImportResponse(
                    missing=importer_pb2.ChunkQueryResult(chunk_ids=missing))
            elif step == "chunks":
                stored = self._put(request.chunks)
                # Each batch goes to storage in packs of its own, each indexed
                # once stored, while the next batch arrives: a killed importer
                # loses at most the packs still uploading (the pool holds two)
                # besides the batches in flight, and waiting here for storage
                # would leave the stream idle for every write.
                self.repo.close_packs()
                yield importer_pb2.ImportResponse(
                    stored=importer_pb2.ChunkBatchStored(stored_bytes=stored))
            elif step == "commit":
                digests = self._commit(request.commit)
                yield importer_pb2.ImportResponse(committed=importer_pb2.ImportCommitted(
                    backup_ids=list(digests), manifest_sha256=digests))
                return
            else:
                raise errors.InvalidParameter("Unknown import step.")

    def _open(self, msg: importer_pb2.ImportOpen) -> importer_pb2.ImportResponse:
        if not msg.source_vault_id:
            raise errors.InvalidParameter("source_vault_id is required.",
                                          field="source_vault_id")
        self.importer.begin(msg.source_vault_id, bytes(msg.chunk_key_id), bytes(msg.chunk_key))
        return importer_pb2.ImportResponse(
            opened=importer_pb2.ImportOpened(target_vault_id=self.grant.vault_id))

    def _commit(self, msg: importer_pb2.ImportCommit) -> dict[str, str]:
        manifests = [Manifest.from_json(bytes(data), "replica manifest")
                     for data in msg.manifests]
        if not manifests:
            raise errors.InvalidParameter("A commit names at least one manifest.")
        for m in manifests:
            if m.vault_id != self.grant.vault_id or m.image_type != "replication":
                raise errors.PermissionDenied(
                    f"Manifest {m.backup_id} is not a replica into vault {self.grant.vault_id}.")
            if m.backup_id not in self.grant.replica_ids:
                raise errors.PermissionDenied(
                    f"Backup id {m.backup_id} was not granted to this replication.")
        with self.grant.commit_lock:
            if self.grant.aborted:
                raise errors.Conflict(f"Replication {self.grant.replication_id} was aborted "
                                      "by the target cloud.")
            if self.grant.committed:
                raise errors.Conflict(f"Replication {self.grant.replication_id} is already "
                                      "committed on the target.")
            if set(self.grant.replica_ids) - {m.backup_id for m in manifests}:
                raise errors.InvalidParameter(
                    "A commit names every replica of the grant: "
                    f"{', '.join(sorted(self.grant.replica_ids))}.")
            digests = self.importer.commit(manifests)
            self.grant.manifest_sha256 = digests
            self.grant.committed = True
        self.grant.ended.set()
        return digests


class ImporterServer:
    """The importer's ImporterService over TLS, with the certificate the
    target controller issued at enrollment (it names the importer by
    ``<agent id>.importer.cbr``, which source agents verify)."""

    def __init__(self, grants: ImportGrants, listen: str, *, key_pem: bytes,
                 certificate_pem: bytes, advertise: str = "") -> None:
        self.grants = grants
        self._listen = listen
        self._advertise = advertise
        self._key_pem = key_pem
        self._cert_pem = certificate_pem
        self._server: grpc.Server | None = None
        self.endpoint = ""

    def start(self) -> str:
        """Starts serving; returns host:port as source agents should dial it."""
        from concurrent import futures

        server = grpc.server(futures.ThreadPoolExecutor(max_workers=16,
                                                        thread_name_prefix="import"),
                             options=server_options())
        importer_pb2_grpc.add_ImporterServiceServicer_to_server(ImporterServicer(self.grants),
                                                                server)
        creds = grpc.ssl_server_credentials([(self._key_pem, self._cert_pem)])
        port = bind(server, self._listen, creds, what="imports")
        server.start()
        self._server = server
        host = self._listen.rpartition(":")[0]
        if host in ("", "0.0.0.0", "[::]", "::"):
            import socket

            host = socket.getfqdn()
        self.endpoint = self._advertise or f"{host}:{port}"
        log.info("importer serving ImporterService on %s (TLS)", self.endpoint)
        return self.endpoint

    def stop(self, grace: float = 2.0) -> None:
        if self._server is not None:
            self._server.stop(grace).wait(grace + 3)
            self._server = None
