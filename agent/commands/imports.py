"""The ``import`` command, run by importers: accept one replication.

The command registers a grant with the importer's ImporterService and then
waits, for as long as the grant lives, for the source agent to commit the
replica; its result tells the target controller the manifests' digests, and
the controller registers the replica in the same transaction that ends the
task. An importer restarted mid-import gets the command again and takes the
grant up where storage has it: chunks that arrived are not asked for again,
and a replica whose manifests were all written before the restart is
reported committed at once.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import time

from agent.commands import CommandContext, Outcome
from agent.commands.storage import failure, open_storage
from agent.importer import ImportGrant, ImportGrants
from cbr import errors
from cbr.clock import utc_now
from cbr.repo import layout
from cbr.storage import ObjectNotFound
from cbr.v1 import agent_pb2

log = logging.getLogger("cbr.agent.importer")

WAIT_SLICE_S = 5.0
CANCEL_CHECK_S = 0.5
"""How often a waiting import looks whether its task was cancelled."""


def _stored_digests(command: agent_pb2.ImportCommand) -> dict[str, str] | None:
    """The digests of the replica's manifests when every one is in storage."""
    backend = open_storage(command.storage)
    digests = {}
    for replica_id in command.replica_ids:
        try:
            data = backend.get(layout.manifest_name(replica_id))
        except ObjectNotFound:
            return None
        digests[replica_id] = hashlib.sha256(data).hexdigest()
    return digests


def _committed(digests: dict[str, str], stats: dict[str, int]) -> Outcome:
    return Outcome.done(agent_pb2.ImportResult(
        manifest_sha256=digests, bytes_stored=stats.get("bytes_stored", 0),
        chunks_received=stats.get("chunks_received", 0)))


def run(context: CommandContext, command: agent_pb2.ImportCommand) -> Outcome:
    grants: ImportGrants | None = context.grants
    if grants is None:
        return Outcome.failed(errors.NotImplementedYet(
            "This agent is not an importer; run it with --role importer."))
    try:
        done = _stored_digests(command)
    except Exception as exc:
        return failure(exc, f"import {command.import_id}")
    if done is not None:
        log.info("import %s was committed before this process started", command.import_id)
        return _committed(done, {})
    expires = command.expires_at.ToDatetime(tzinfo=dt.UTC)
    grant = ImportGrant(replication_id=command.import_id,
                        token_sha256=bytes(command.token_sha256), vault_id=command.vault_id,
                        storage=command.storage, replica_ids=frozenset(command.replica_ids),
                        expires_at=expires)
    grants.expect(grant)
    log.info("import %s into vault %s allowed until %s", command.import_id, command.vault_id,
             expires.isoformat())
    keys = ("bytes_stored", "chunks_received")
    reported = dict.fromkeys(keys, 0)
    cancelled = False
    next_report = time.monotonic() + WAIT_SLICE_S
    try:
        while not grant.ended.wait(CANCEL_CHECK_S):
            if context.cancelled.is_set():
                # No new stream opens with the grant and the source's ends;
                # what reached storage stays for prune (no manifest names it).
                cancelled = grants.abort(grant.replication_id)
                if cancelled:
                    break
            if utc_now() >= expires:
                break
            if time.monotonic() < next_report:
                continue
            next_report = time.monotonic() + WAIT_SLICE_S
            # What has arrived so far, on the target's task: the importer
            # cannot know how much is still to come, so no percentage.
            counters = {k: int(grant.stats.get(k, 0)) for k in keys}
            if counters != reported:
                context.progress(0, "receiving chunks", counters)
                reported = counters
    finally:
        grants.forget(grant.replication_id)
    if grant.committed:
        return _committed(grant.manifest_sha256, grant.stats)
    if cancelled:
        return Outcome.failed(errors.TaskCancelled(f"import {command.import_id} was cancelled"))
    if grant.aborted:
        return Outcome.failed(errors.Conflict(
            f"import {command.import_id} was aborted by the target cloud"))
    return Outcome.failed(errors.Conflict(
        f"import {command.import_id}: the source did not commit the replica before the "
        f"grant expired at {expires.isoformat()}"))
