"""One fault, one code, in every process (issue 21: an unavailable key was
7002, 9900 or 0505 depending on which process met it)."""

from __future__ import annotations

import pytest

from agent.commands.storage import failure
from agent.importer import _as_cbr
from cbr import errors, faults
from cbr.repo.errors import ChunkNotFound, IntegrityError, KeyUnavailable, RepoError, UnsafeName
from cbr.repo.maintenance.locks import LockConflict
from cbr.storage import StorageFull, StorageUnavailable


@pytest.mark.parametrize("exc, error", [
    (StorageFull("no space"), errors.VaultCapacityExceeded),
    (StorageUnavailable("reset"), errors.StorageUnavailable),
    (KeyUnavailable("cannot unwrap"), errors.KeyNotUsable),
    (LockConflict("another prune holds this vault"), errors.Conflict),
    (UnsafeName("entry '..' could write outside"), errors.UnsafeRestoreTarget),
    (IntegrityError("chunk ab: does not match", chunk_id="ab"), errors.DataIntegrityError),
    (ChunkNotFound("ab"), errors.DataIntegrityError),
    (RepoError("bad manifest"), errors.DataIntegrityError),
    (OSError(5, "Input/output error"), errors.InternalError),
])
def test_every_process_gives_a_fault_the_same_code(exc: Exception,
                                                   error: type[errors.CbrError]) -> None:
    mapped = faults.as_cbr_error(exc, "restore of backup b", backup_id="b")
    assert type(mapped) is error and mapped.metadata.get("backup_id") == "b"
    assert "restore of backup b" in mapped.message
    assert failure(exc, "restore of backup b").error_code == error.code  # the agent
    if error is not errors.InternalError:
        assert _as_cbr(exc).code == error.code  # the importer


def test_an_unexpected_importer_error_tells_the_source_nothing_of_the_host() -> None:
    assert _as_cbr(OSError(2, "No such file", "/var/lib/secret")).message == \
        errors.InternalError().message
