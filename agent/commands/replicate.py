"""The ``replicate`` command: one backup's chunks to a target cloud's importer.

The source agent reads the backup from its vault (under a reader lock, so
prune cannot take a pack away), checks the manifests against the digests
the catalog recorded, and runs the format layer's ``replicate`` over an
Import stream to the importer the target chose, trusting only the target's
CA and the importer's certificate name. A stream that breaks (the network,
an importer restart, a target controller restart) is opened again with
backoff; the importer answers which chunks it lacks, so a resumed transfer
sends only what had not arrived.
"""

from __future__ import annotations

import logging
import random
import time

import grpc

from agent.commands import CommandContext, Outcome
from agent.commands.storage import failure, locked_repository
from agent.dataplane import Cancelled
from agent.importer import MAX_MESSAGE_BYTES
from agent.replication import GrpcReplicaTarget, ImportStreamError
from cbr import errors
from cbr.client import error_from_rpc
from cbr.repo import Repository
from cbr.repo.objects.manifest import DiskContent, Manifest, TreeContent
from cbr.repo.replicate import ReplicaSource, ReplicationStats, replica_manifests, replicate
from cbr.v1 import agent_pb2

log = logging.getLogger("cbr.agent")

RETRY_FOR_S = 600.0
"""How long a transfer keeps trying to reach its importer before it fails,
unless the command says (the controller's ``--replication-retry``)."""
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 15.0

# Transport trouble, and an importer that does not know the grant yet (it
# restarted and its controller has not sent the import again).
_RETRY = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED,
          grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNKNOWN,
          grpc.StatusCode.INTERNAL, grpc.StatusCode.ABORTED,
          grpc.StatusCode.UNAUTHENTICATED}


class TransferFailed(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _channel(command: agent_pb2.ReplicateCommand) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(root_certificates=command.ca_certificate_pem.encode())
    options = [("grpc.ssl_target_name_override", command.importer_server_name),
               ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
               ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
    return grpc.secure_channel(command.importer_endpoint, creds, options=options)


def _manifests(repo: Repository, command: agent_pb2.ReplicateCommand) -> list[Manifest]:
    expected = dict(command.manifest_sha256)
    top = repo.load_manifest(command.backup_id, expected_sha256=expected.get(command.backup_id,
                                                                              ""))
    children = [repo.load_manifest(c, expected_sha256=expected.get(c, "")) for c in top.children]
    return [*children, top]


class _Totals:
    """Counters across every attempt, for progress and the result."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.wire_bytes = 0
        self.attempts = 0
        self.last = ReplicationStats()
        self.done = ReplicationStats()
        self.done_walked = 0

    def counters(self) -> dict[str, int]:
        return {"bytes_total": self.size,
                "bytes_sent": self.wire_bytes,
                "chunks_sent": self.done.chunks_sent + self.last.chunks_sent,
                "bytes_new": self.done.bytes_stored + self.last.bytes_stored,
                "attempts": self.attempts}

    def percent(self) -> int:
        """How far the walk is: a resumed attempt walks again from the start,
        so the furthest attempt counts."""
        walked = max(self.done_walked, self.last.raw_bytes_walked)
        return min(99, int(100 * walked / self.size)) if self.size else 0

    def attempt_ended(self) -> None:
        self.done_walked = max(self.done_walked, self.last.raw_bytes_walked)
        for name in ("chunks_walked", "chunks_sent", "raw_bytes_sent", "wire_bytes_sent",
                     "bytes_stored"):
            setattr(self.done, name, getattr(self.done, name) + getattr(self.last, name))
        self.last = ReplicationStats()


def _transfer(repo: Repository, command: agent_pb2.ReplicateCommand, context: CommandContext,
              manifests: list[Manifest], replicas: list[Manifest], totals: _Totals) -> None:
    retry_for = command.retry_seconds or RETRY_FOR_S
    outage_since: float | None = None  # the first failed attempt since data last moved
    delay = BACKOFF_FIRST_S
    while True:
        totals.attempts += 1
        channel = _channel(command)
        target: GrpcReplicaTarget | None = None
        try:
            target = GrpcReplicaTarget(channel, command.import_token)

            def progress(stats: ReplicationStats, target: GrpcReplicaTarget = target) -> None:
                if context.cancelled.is_set():  # the stream closes in finally; no commit
                    raise Cancelled("the replication was cancelled")
                totals.last = stats
                sent = target.request_bytes
                context.progress(totals.percent(), "sending chunks",
                                 {**totals.counters(), "bytes_sent": totals.wire_bytes + sent})

            replicate(repo, manifests, target, replicas=replicas, progress=progress)
            totals.wire_bytes += target.request_bytes
            totals.attempt_ended()
            return
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
            err = error_from_rpc(exc)
            if err is not None and err.code == errors.Conflict.code \
                    and "already committed" in err.message:
                totals.wire_bytes += target.request_bytes if target is not None else 0
                totals.attempt_ended()
                return  # the commit landed; only its answer was lost
            if code not in _RETRY or (err is not None and code != grpc.StatusCode.UNAUTHENTICATED
                                      and code != grpc.StatusCode.UNAVAILABLE):
                raise TransferFailed(err.code if err is not None else errors.InternalError.code,
                                     f"the importer refused the replica: "
                                     f"{err.message if err is not None else exc}") from None
            reason = f"{code.name}: {exc.details() if isinstance(exc, grpc.Call) else exc}"
        except ImportStreamError as exc:
            reason = str(exc)
        finally:
            if target is not None:
                target.close()
            channel.close()
        moved = totals.last.bytes_stored > 0 or totals.last.chunks_sent > 0
        totals.wire_bytes += target.request_bytes if target is not None else 0
        totals.attempt_ended()
        now = time.monotonic()
        if moved or outage_since is None:
            # Data moved since the last failure: a new outage, with a fresh
            # retry window and backoff (a long transfer may meet several).
            outage_since = now
            if moved:
                delay = BACKOFF_FIRST_S
        if now + delay - outage_since > retry_for:
            raise TransferFailed(errors.TargetCloudUnavailable.code,
                                 f"the importer at {command.importer_endpoint} could not be "
                                 f"reached for {retry_for:.0f} s ({reason})")
        log.warning("replication of %s: stream to %s broke (%s); resuming in %.1f s",
                    command.backup_id, command.importer_endpoint, reason, delay)
        context.progress(totals.percent(), f"resuming after: {reason}"[:200],
                         totals.counters())
        if context.cancelled.wait(delay * (0.8 + 0.4 * random.random())):
            raise Cancelled("the replication was cancelled")
        delay = min(BACKOFF_MAX_S, delay * 2)


def run(context: CommandContext, command: agent_pb2.ReplicateCommand) -> Outcome:
    try:
        with locked_repository(command.storage, kind="restore",
                               task_id=context.task_id) as (repo, _lock):
            manifests = _manifests(repo, command)
            replicas = replica_manifests(
                manifests, dict(command.replica_ids), vault_id=command.destination_vault_id,
                checkpoint_id=command.destination_checkpoint_id,
                source=ReplicaSource(cloud=command.source_cloud, region=command.source_region,
                                     project_id=command.source_project_id))
            totals = _Totals(sum(_size(m) for m in manifests))
            _transfer(repo, command, context, manifests, replicas, totals)
    except TransferFailed as exc:
        log.warning("replication of backup %s failed: %s", command.backup_id, exc)
        return Outcome.failed(errors.error_class_for(exc.code)(
            f"replication of backup {command.backup_id}: {exc}"))
    except Exception as exc:
        log.warning("replication of backup %s failed: %s", command.backup_id, exc)
        return failure(exc, f"replication of backup {command.backup_id}")
    done = totals.done
    counters = totals.counters()
    # The final figures replace the last progress report's, which lagged.
    return Outcome.done(agent_pb2.ReplicateResult(
        bytes_total=counters["bytes_total"], wire_bytes=totals.wire_bytes,
        chunks_sent=done.chunks_sent, chunks_walked=done.chunks_walked,
        raw_bytes_sent=done.raw_bytes_sent, bytes_stored=done.bytes_stored,
        attempts=totals.attempts, bytes_new=counters["bytes_new"]))


def _size(manifest: Manifest) -> int:
    """What a manifest holds, in plain bytes: a disk's size, a tree's files."""
    content = manifest.content
    if isinstance(content, DiskContent):
        return content.size
    if isinstance(content, TreeContent):
        return content.size or int(manifest.stats.get("bytes_scanned", 0))
    return 0
