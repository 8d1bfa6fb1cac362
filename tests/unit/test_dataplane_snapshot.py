"""Snapshots and changed-block tracking.

The reflink tests loop-mount an XFS image with reflink=1 (root and xfsprogs
needed); where mounting is impossible they skip and say why. The extent
comparison and the hooks are tested everywhere.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.dataplane import Progress
from agent.dataplane.disk import backup_disk, restore_disk
from agent.dataplane.snapshot import (
    FIEMAP_EXTENT_DELALLOC,
    LIVE,
    REFLINK,
    HookFailed,
    changed_ranges,
    take_snapshots,
)
from cbr.repo import Repository
from cbr.storage.local import LocalBackend

MiB = 1 << 20


@pytest.fixture
def xfs(tmp_path: Path) -> Iterator[Path]:
    """A mounted XFS with reflink, or a skip saying why there is none."""
    if os.geteuid() != 0:
        pytest.skip("loop-mounting XFS needs root")
    if shutil.which("mkfs.xfs") is None:
        pytest.skip("mkfs.xfs (xfsprogs) is not installed")
    image = tmp_path / "xfs.img"
    with open(image, "wb") as fh:
        fh.truncate(512 * MiB)
    made = subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", str(image)],
                          capture_output=True, text=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"mkfs.xfs failed: {made.stderr.strip()}")
    mount = tmp_path / "mnt"
    mount.mkdir()
    done = subprocess.run(["mount", "-o", "loop", str(image), str(mount)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot loop-mount XFS here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _write(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(data)
        os.fsync(fh.fileno())


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_reflink_cbt_reads_exactly_the_scattered_blocks_written(
        xfs: Path, tmp_path: Path) -> None:
    disk = xfs / "disk.img"
    with open(disk, "wb") as fh:
        fh.truncate(128 * MiB)
    for i in range(0, 100, 3):
        _write(disk, i * MiB, os.urandom(MiB))
    repo = Repository.init(LocalBackend(tmp_path / "vault"), vault_id="v", encrypted=False)
    with take_snapshots([("d", disk)]) as snaps:
        assert snaps.kind("d") == REFLINK
        assert snaps.changed_ranges("d", "none") is None  # nothing kept yet
        first = backup_disk(repo, snaps.source("d"), progress=Progress())
        snaps.commit("d", "b1")
    writes = [5 * MiB + 4096, 33 * MiB + 100, 90 * MiB + MiB - 10, 120 * MiB]
    for offset in writes:
        _write(disk, offset, b"w" * 20)
    expected = sorted({(o // MiB) * MiB for o in writes} | {((o + 19) // MiB) * MiB
                                                           for o in writes})
    with take_snapshots([("d", disk)]) as snaps:
        changed = snaps.changed_ranges("d", "b1")
        assert changed is not None
        log: list[tuple[int, int]] = []
        second = backup_disk(repo, snaps.source("d"), parent=first.content, changed=changed,
                             progress=Progress(), read_log=log)
        snaps.commit("d", "b2")
    read_blocks = sorted(b for a, z in log for b in range(a, z, MiB))
    assert read_blocks == expected
    out = tmp_path / "out.img"
    restore_disk(repo, second.content, out, progress=Progress())
    assert _sha(out) == _sha(disk)
    kept = list((xfs / ".cbr-snapshots").iterdir())
    assert len(kept) == 1 and kept[0].name.endswith(".kept-b2")


def test_a_failed_backup_keeps_the_previous_snapshot(xfs: Path) -> None:
    disk = xfs / "disk.img"
    disk.write_bytes(os.urandom(4 * MiB))
    with take_snapshots([("d", disk)]) as snaps:
        snaps.commit("d", "b1")
    with pytest.raises(RuntimeError), take_snapshots([("d", disk)]):
        raise RuntimeError("the backup failed")
    names = sorted(p.name for p in (xfs / ".cbr-snapshots").iterdir())
    assert len(names) == 1 and names[0].endswith(".kept-b1")


def test_without_reflink_the_live_disk_is_read_and_the_thaw_waits(tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"x" * MiB)
    log = tmp_path / "hooks.log"
    with take_snapshots([("d", disk)],
                        pre_hook=["sh", "-c", f"echo freeze >> {log}"],
                        post_hook=["sh", "-c", f"echo thaw >> {log}"]) as snaps:
        if snaps.kind("d") == REFLINK:
            pytest.skip("this tmp dir has reflink; the live case cannot be shown here")
        assert snaps.kind("d") == LIVE and snaps.source("d") == disk
        assert log.read_text() == "freeze\n"
        snaps.release()
        assert log.read_text() == "freeze\nthaw\n"
    assert log.read_text() == "freeze\nthaw\n"  # the thaw runs once


def test_a_failing_pre_hook_fails_the_snapshot_and_freezes_nothing(tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"x")
    with pytest.raises(HookFailed) as err:
        take_snapshots([("d", disk)], pre_hook=["sh", "-c", "echo nope >&2; exit 3"],
                       post_hook=["true"])
    assert "exited 3" in str(err.value) and "nope" in str(err.value)


def test_extent_comparison_finds_moved_new_and_punched_ranges() -> None:
    old = [(0, 4 * MiB, 100 * MiB, 0), (8 * MiB, 2 * MiB, 200 * MiB, 0)]
    new = [(0, MiB, 100 * MiB, 0),                      # shared
           (MiB, MiB, 500 * MiB, 0),                    # rewritten elsewhere
           (2 * MiB, 2 * MiB, 102 * MiB, 0),            # shared
           (12 * MiB, MiB, 600 * MiB, 0),               # new data
           (8 * MiB, MiB, 200 * MiB, FIEMAP_EXTENT_DELALLOC)]  # unreliable
    new.sort()
    got = changed_ranges(old, new, 16 * MiB)
    assert got == [(MiB, 2 * MiB), (8 * MiB, 10 * MiB), (12 * MiB, 13 * MiB)]
