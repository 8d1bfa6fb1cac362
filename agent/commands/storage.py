"""What the backup and restore commands share: opening the vault, the writer
lock, progress reports, and turning failures into CBR codes.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from agent.commands import CommandContext, Outcome
from agent.dataplane import Cancelled, DataplaneError, Progress, TargetTooSmall
from agent.dataplane.tree import PathNotInBackup
from cbr import errors, faults
from cbr.repo import Repository
from cbr.repo.content.crypto import key_context
from cbr.repo.errors import ChunkNotFound, IntegrityError, KeyUnavailable
from cbr.storage import Backend, StorageError, open_backend
from cbr.v1 import agent_pb2, key_pb2

log = logging.getLogger("cbr.agent")

PROGRESS_EVERY_S = 1.0


class TaskKeys:
    """The vault keys the controller unwrapped for this task, as the format
    layer's unwrap callback.

    A key is given out only for the exact context (vault, key id, purpose)
    its key file names, so a key file swapped in storage finds nothing.
    The keys live in this object only: never written, never logged (the
    repr names key ids alone).
    """

    def __init__(self, task_keys: Iterable[key_pb2.TaskKey]) -> None:
        self._keys = {key_context(k.vault_id, bytes.fromhex(k.key_id), k.purpose): bytes(k.key)
                      for k in task_keys}

    def unwrap(self, kek_id: str, wrapped: bytes, context: bytes) -> bytes:
        try:
            return self._keys[context]
        except KeyError:
            raise KeyUnavailable("the controller sent no key for "
                                 f"{context.decode(errors='replace')}") from None

    def __repr__(self) -> str:
        return f"TaskKeys({len(self._keys)} keys)"


def open_storage(access: agent_pb2.StorageAccess) -> Backend:
    """The vault's backend from a StorageAccess (credentials only in memory)."""
    options: dict[str, Any] = {}
    if access.url.startswith("s3://") and access.access_key:
        options = {"access_key": access.access_key, "secret_key": access.secret_key}
    return open_backend(access.url, **options)


@contextlib.contextmanager
def locked_repository(access: agent_pb2.StorageAccess, *, kind: str,
                      task_id: str) -> Iterator[tuple[Repository, Any]]:
    """Opens the vault under a lock of ``kind``, written before the index is
    loaded (storage format section 11, step 1), and removes the lock after."""
    from cbr.repo.maintenance.locks import Lock

    backend = open_storage(access)
    with Lock.acquire(backend, kind=kind, task_id=task_id) as lock:
        repo = Repository.open(backend, unwrap=TaskKeys(access.keys).unwrap,
                               expect_encrypted=bool(access.encrypted))
        try:
            yield repo, lock
        finally:
            repo.close()


@contextlib.contextmanager
def reporting(context: CommandContext, progress: Progress) -> Iterator[None]:
    """Sends the progress counters every second while the block runs."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(PROGRESS_EVERY_S):
            try:
                context.progress(progress.percent(), "", progress.snapshot())
            except Exception:  # a lost stream must not kill the backup
                log.debug("progress report failed", exc_info=True)

    thread = threading.Thread(target=loop, name="progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(2)


@contextlib.contextmanager
def keeping_uploads(repo: Repository) -> Iterator[None]:
    """On a cancel, indexes the packs the backup uploaded before leaving
    (storage format section 11): no manifest is written, so they reach
    nothing, but the next backup finds their chunks and stores less. Other
    failures keep the usual rule (a failed upload already indexed what
    was stored; a failure of the source is not worth another write)."""
    try:
        yield
    except Cancelled:
        try:
            repo.flush()
        except Exception as exc:
            log.warning("cancelled backup: indexing its uploaded packs failed: %s", exc)
        raise


_WARNING_KINDS = ("changed while read", "vanished", "unreadable", "mount point not crossed")


def reported_warnings(repo: Repository, warnings: list[str], where: str) -> list[str]:
    """The warnings a task may carry to the controller: as they are for a
    plain vault; for an encrypted one without the paths, which its storage
    keeps only encrypted (in the manifest, for a backup) and the controller
    must not hold in clear (database, journal, ``cbr task show``). The host,
    which has the files anyway, logs them whole."""
    if not repo.config.encrypted or not warnings:
        return list(warnings)
    out = []
    for i, warning in enumerate(warnings, 1):
        log.warning("%s, warning %d: %s", where, i, warning)
        kind = next((k for k in _WARNING_KINDS if warning.startswith(k)), "a file not handled "
                    "as usual")
        out.append(f"{kind}: warning {i} of {len(warnings)} (the path stays encrypted: in the "
                   "backup's manifest, and in the agent's log on the host)")
    return out


def failure(exc: BaseException, what: str, *, encrypted: bool = False) -> Outcome:
    """The task error for an exception, with the CBR code a person can act on.

    For an encrypted vault a message that may name a file inside the backup
    (a tree entry, a file read or written) reaches the controller without
    it; the caller, on the host that has the files anyway, logs it whole."""
    outcome = _failure(exc, what)
    if encrypted and not isinstance(exc, _PATHLESS):
        return Outcome.failed(errors.error_class_for(outcome.error_code)(
            f"{what}: {_KINDS.get(outcome.error_code, 'failed')} (the details name a file of "
            "an encrypted backup, so only the agent's log on the host has them)"))
    return outcome


# Errors whose messages name storage objects, chunk ids, keys or what the
# request itself named, never a file inside a backup.
_PATHLESS = (StorageError, KeyUnavailable, IntegrityError, ChunkNotFound, TargetTooSmall,
             PathNotInBackup, Cancelled)
_KINDS = {errors.UnsafeRestoreTarget.code: "the backup holds an entry that would write "
          "outside the restore target, or the target holds a link",
          errors.DataIntegrityError.code: "the vault data is damaged or not in the expected format",
          errors.InternalError.code: "a file could not be read or written"}


def _failure(exc: BaseException, what: str) -> Outcome:
    if isinstance(exc, DataplaneError):
        return Outcome.failed(errors.error_class_for(exc.code)(f"{what}: {exc}"))
    return Outcome.failed(faults.as_cbr_error(exc, what))
