"""Storage faults during a backup: a clear error, nothing half-written that looks
usable, and the next backup reuses what was stored before the fault."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest

from agent.commands.storage import failure
from agent.dataplane import Progress
from agent.dataplane.disk import backup_disk, restore_disk
from cbr.repo import Manifest, Repository, Resource
from cbr.storage import StorageFull
from cbr.storage.local import LocalBackend
from tests.support.faulty import Fault, FaultyBackend

MiB = 1 << 20


def _manifest(repo: Repository, backup_id: str, content: object) -> Manifest:
    return Manifest(backup_id=backup_id, name=backup_id, checkpoint_id="cp", vault_id="v1",
                    resource=Resource("r", "d", "disk", 0),
                    created_at=dt.datetime(2026, 11, 25, tzinfo=dt.UTC),
                    chunk_key_id=repo.config.chunk_key_id, content=content)  # type: ignore[arg-type]


def test_storage_full_mid_backup_is_a_clear_6114_and_nothing_is_indexed_after_it(
        tmp_path: Path) -> None:
    Repository.init(LocalBackend(tmp_path / "vault"), vault_id="v1", encrypted=False,
                    pack_size=2 * MiB)
    img = tmp_path / "d.img"
    img.write_bytes(os.urandom(48 * MiB))
    faulty = FaultyBackend(LocalBackend(tmp_path / "vault"))
    # Packs hold two 1 MiB blocks; an index file is written every 16 packs, so
    # the first 32 MiB are indexed before the storage fills up.
    faulty.add("put_stream", Fault(error=StorageFull("data/…", "no space left"), skip=18,
                                   times=None, name_prefix="data/"))
    repo = Repository.open(faulty)
    with pytest.raises(StorageFull) as err:
        backup_disk(repo, img, progress=Progress())
    outcome = failure(err.value, "backup of d")
    assert outcome.error_code == "BackupService.6114" and "full" in outcome.error_message
    with pytest.raises(StorageFull):
        repo.flush()  # sticky: this repository object writes no index or manifest now

    # Space again: the next backup stores only what the failed one did not index.
    again = Repository.open(LocalBackend(tmp_path / "vault"))
    result = backup_disk(again, img, progress=Progress())
    assert result.stats["bytes_new"] <= 16 * MiB
    again.save_manifest(_manifest(again, "b1", result.content))
    out = tmp_path / "out.img"
    restore_disk(again, result.content, out, progress=Progress())
    assert out.read_bytes() == img.read_bytes()


def test_a_transient_upload_error_surfaces_instead_of_being_lost(tmp_path: Path) -> None:
    Repository.init(LocalBackend(tmp_path / "vault"), vault_id="v1", encrypted=False,
                    pack_size=2 * MiB)
    faulty = FaultyBackend(LocalBackend(tmp_path / "vault"))
    faulty.fail_nth("put_stream", 1)
    repo = Repository.open(faulty)
    img = tmp_path / "d.img"
    img.write_bytes(os.urandom(8 * MiB))
    with pytest.raises(Exception) as err:
        backup_disk(repo, img, progress=Progress())
    assert failure(err.value, "backup").error_code == "BackupService.0504"
    assert list((tmp_path / "vault" / "manifests").glob("*")) == []
