"""The one mapping from the lower layers' exceptions to CBR errors.

Storage backends (:mod:`cbr.storage`) and the vault format (:mod:`cbr.repo`)
raise their own exceptions, which know nothing of CBR codes. Every process
that reports them (the controller's API and maintenance, the agent's
commands, the importer) turns them into a :class:`cbr.errors.CbrError` here,
so one fault has one code wherever it happens: a key that cannot be
unwrapped is 7002 in every process, a full storage 6114, a damaged chunk
0505.
"""

from __future__ import annotations

from cbr import errors
from cbr.repo.errors import ChunkNotFound, IntegrityError, KeyUnavailable, RepoError, UnsafeName
from cbr.repo.maintenance.locks import LockConflict
from cbr.storage import StorageError, StorageFull


def as_cbr_error(exc: BaseException, what: str = "", **metadata: str) -> errors.CbrError:
    """``exc`` as the CBR error a person is told; ``what`` says what was
    being done ("restore of backup X", "vault storage /srv/v"), ``metadata``
    goes with the error's details."""
    if isinstance(exc, errors.CbrError):
        return exc
    err = _mapped(exc, f"{what}: " if what else "")
    err.metadata.update({k: str(v) for k, v in metadata.items() if v})
    return err


def _mapped(exc: BaseException, where: str) -> errors.CbrError:
    if isinstance(exc, StorageFull):
        return errors.VaultCapacityExceeded(f"{where}the vault storage is full: {exc}")
    if isinstance(exc, StorageError):
        return errors.StorageUnavailable(f"{where}vault storage error: {exc}")
    if isinstance(exc, KeyUnavailable):
        return errors.KeyNotUsable(f"{where}vault key unavailable: {exc}")
    if isinstance(exc, LockConflict):
        return errors.Conflict(f"{where}{exc}")
    if isinstance(exc, UnsafeName):
        return errors.UnsafeRestoreTarget(f"{where}the backup holds an unsafe entry: {exc}")
    if isinstance(exc, IntegrityError | ChunkNotFound):
        return errors.DataIntegrityError(f"{where}damaged vault data: {exc}",
                                         chunk_id=getattr(exc, "chunk_id", "") or "")
    if isinstance(exc, RepoError):
        return errors.DataIntegrityError(f"{where}{exc}")
    if isinstance(exc, OSError):
        return errors.InternalError(f"{where}{exc}")
    return errors.InternalError(f"{where}{type(exc).__name__}: {exc}")
