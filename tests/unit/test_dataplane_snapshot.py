"""Snapshots, hooks and changed-block tracking by reflink and FIEMAP.

The reflink tests loop-mount an XFS image with reflink=1 (``tests/support/xfs.py``:
root and xfsprogs needed); where mounting is impossible they skip and say why.
The extent comparison, the live kind and the hooks are tested everywhere.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.dataplane import Progress
from agent.dataplane.blocks import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE
from agent.dataplane.disk import backup_disk, restore_disk
from agent.dataplane.snapshot import (
    FIEMAP_EXTENT_DELALLOC,
    FIEMAP_EXTENT_ENCODED,
    FIEMAP_EXTENT_UNWRITTEN,
    LIVE,
    REFLINK,
    SNAPSHOT_DIR,
    HookFailed,
    changed_ranges,
    fiemap,
    take_snapshots,
)
from cbr.repo import Repository
from cbr.storage.local import LocalBackend
from tests.support.environment import unavailable
from tests.support.xfs import mounted_xfs

MiB = 1 << 20


@pytest.fixture
def xfs(tmp_path: Path) -> Iterator[Path]:
    with mounted_xfs(tmp_path) as mount:
        yield mount


def _image(path: Path, size: int) -> Path:
    with open(path, "wb") as fh:
        fh.truncate(size)
    return path


def _write(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as fh:  # no fsync: FIEMAP_FLAG_SYNC must see it anyway
        fh.seek(offset)
        fh.write(data)


def _punch(path: Path, offset: int, length: int) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fd = os.open(path, os.O_WRONLY)
    try:
        assert libc.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset,
                              length) == 0
    finally:
        os.close(fd)


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(MiB):
            h.update(chunk)
    return h.hexdigest()


def _repo(tmp_path: Path) -> Repository:
    return Repository.init(LocalBackend(tmp_path / "vault"), vault_id="v", encrypted=False)


def _snapshot_files(xfs: Path) -> list[str]:
    """Snapshot file names without the disk's stem (none if no directory)."""
    directory = xfs / SNAPSHOT_DIR
    if not directory.exists():
        return []
    return sorted(p.name.split(".", 1)[1] for p in directory.iterdir())


# -- reflink and FIEMAP on a real XFS -----------------------------------------------------------

def test_reflink_cbt_reads_exactly_the_blocks_written_and_restores_identically(
        xfs: Path, tmp_path: Path) -> None:
    disk = _image(xfs / "disk.img", 128 * MiB + 4096 + 77)  # odd last block
    for i in range(0, 100, 3):
        _write(disk, i * MiB, os.urandom(MiB))
    _write(disk, 128 * MiB, os.urandom(4096 + 77))
    repo = _repo(tmp_path)
    with take_snapshots([("d", disk)]) as snaps:
        assert snaps.kind("d") == REFLINK and snaps.source("d") != disk
        assert snaps.changed_ranges("d", "b0") is None  # nothing kept yet
        first = backup_disk(repo, snaps.source("d"), progress=Progress())
        snaps.commit("d", "b1")
        assert snaps.kind("d") == REFLINK
    writes = [(5 * MiB + 4096, 20),             # inside a data block
              (33 * MiB + 100, 20),             # into a hole
              (91 * MiB - 10, 20),              # across a block boundary (90 | 91)
              (120 * MiB, 4096),                # a hole, block aligned
              (128 * MiB + 4000, 10)]           # the short last block
    for offset, n in writes:
        _write(disk, offset, os.urandom(n))
    _punch(disk, 63 * MiB, MiB)                 # data that became a hole
    expected = sorted({o // MiB for o, _ in writes} | {(o + n - 1) // MiB for o, n in writes}
                      | {63})
    assert expected == [5, 33, 63, 90, 91, 120, 128]
    with take_snapshots([("d", disk)]) as snaps:
        assert snaps.kept_backup_id("d") == "b1"
        changed = snaps.changed_ranges("d", "b1")
        assert changed is not None
        log: list[tuple[int, int]] = []
        second = backup_disk(repo, snaps.source("d"), parent=first.content, changed=changed,
                             progress=Progress(), read_log=log)
        snaps.commit("d", "b2")
    read = sorted({b for a, z in log for b in range(a // MiB, -(-z // MiB))})
    assert read == expected
    assert second.stats["blocks_read"] == len(expected)
    out = tmp_path / "out.img"
    restore_disk(repo, second.content, out, progress=Progress())
    assert _sha(out) == _sha(disk)
    assert _snapshot_files(xfs) == ["kept-b2"]


def test_nothing_written_means_nothing_changed_and_nothing_read(
        xfs: Path, tmp_path: Path) -> None:
    disk = xfs / "disk.img"
    disk.write_bytes(os.urandom(8 * MiB))
    repo = _repo(tmp_path)
    with take_snapshots([("d", disk)]) as snaps:
        first = backup_disk(repo, snaps.source("d"), progress=Progress())
        snaps.commit("d", "b1")
    with take_snapshots([("d", disk)]) as snaps:
        assert snaps.changed_ranges("d", "b1") == []
        log: list[tuple[int, int]] = []
        second = backup_disk(repo, snaps.source("d"), parent=first.content, changed=[],
                             progress=Progress(), read_log=log)
    assert log == [] and second.content == first.content


def test_a_rewrite_with_the_same_bytes_is_still_reported_changed(xfs: Path) -> None:
    disk = xfs / "disk.img"
    data = os.urandom(4 * MiB)
    disk.write_bytes(data)
    with take_snapshots([("d", disk)]) as snaps:
        snaps.commit("d", "b1")
    _write(disk, 2 * MiB, data[2 * MiB:3 * MiB])
    with take_snapshots([("d", disk)]) as snaps:
        assert snaps.changed_ranges("d", "b1") == [(2 * MiB, 3 * MiB)]


def test_changed_ranges_need_the_kept_snapshot_of_that_parent(xfs: Path) -> None:
    disk = xfs / "disk.img"
    disk.write_bytes(os.urandom(MiB))
    with take_snapshots([("d", disk)]) as snaps:
        snaps.commit("d", "b1")
    with take_snapshots([("d", disk)]) as snaps:
        assert snaps.changed_ranges("d", "b0") is None  # the kept one is b1's
        assert snaps.changed_ranges("d", "") is None
        assert snaps.changed_ranges("d", "b1") == []


def test_a_failed_backup_keeps_the_previous_snapshot(xfs: Path) -> None:
    disk = xfs / "disk.img"
    disk.write_bytes(os.urandom(4 * MiB))
    with take_snapshots([("d", disk)]) as snaps:
        snaps.commit("d", "b1")
    with pytest.raises(RuntimeError), take_snapshots([("d", disk)]) as snaps:
        assert len(_snapshot_files(xfs)) == 2  # kept + new
        raise RuntimeError("the backup failed")
    assert _snapshot_files(xfs) == ["kept-b1"]


def test_all_disks_of_a_server_are_copied_between_pre_and_post_hooks(
        xfs: Path, tmp_path: Path) -> None:
    disks = [xfs / "a.img", xfs / "b.img"]
    for d in disks:
        d.write_bytes(os.urandom(MiB))
    log = tmp_path / "hooks.log"
    pre = ["sh", "-c", f'echo pre >> {log}; ls {xfs / SNAPSHOT_DIR} | wc -l >> {log}']
    post = ["sh", "-c", f'echo post >> {log}; ls {xfs / SNAPSHOT_DIR} | wc -l >> {log}']
    with take_snapshots([("a", disks[0]), ("b", disks[1])], pre_hook=pre,
                        post_hook=post) as snaps:
        # Both copies exist when the post hook runs, none when the pre hook
        # ran, and the thaw happened before take_snapshots returned.
        assert log.read_text().split() == ["pre", "0", "post", "2"]
        assert snaps.kind("a") == snaps.kind("b") == REFLINK
        assert 0 <= snaps.freeze_seconds < 5
        _write(disks[0], 0, b"after the snapshot")
        assert snaps.source("a").read_bytes()[:18] != b"after the snapshot"
        snaps.release()
    assert log.read_text().split() == ["pre", "0", "post", "2"]  # the post hook ran once


def test_a_failing_post_hook_after_reflink_fails_and_leaves_no_new_snapshot(
        xfs: Path) -> None:
    disk = xfs / "disk.img"
    disk.write_bytes(b"x" * MiB)
    with pytest.raises(HookFailed, match="post-snapshot"):
        take_snapshots([("d", disk)], pre_hook=["true"], post_hook=["false"])
    assert _snapshot_files(xfs) == []


def test_fiemap_sees_unsynced_writes(xfs: Path) -> None:
    disk = _image(xfs / "disk.img", 8 * MiB)
    _write(disk, 3 * MiB, b"y" * 4096)  # still delayed allocation in the page cache
    extents = list(fiemap(disk))
    assert [(e.logical, e.length) for e in extents] == [(3 * MiB, 4096)]
    assert not extents[0].flags & FIEMAP_EXTENT_DELALLOC


# -- everywhere ---------------------------------------------------------------------------------

def test_without_reflink_the_live_disk_is_read_and_the_thaw_waits(tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"x" * MiB)
    log = tmp_path / "hooks.log"
    with take_snapshots([("d", disk)],
                        pre_hook=["sh", "-c", f"echo freeze >> {log}"],
                        post_hook=["sh", "-c", f"echo thaw >> {log}"]) as snaps:
        if snaps.kind("d") == REFLINK:
            unavailable("this tmp dir has reflink; the live case cannot be shown here")
        assert snaps.kind("d") == LIVE and snaps.source("d") == disk
        assert snaps.changed_ranges("d", "b1") is None
        assert log.read_text() == "freeze\n"
        snaps.commit("d", "b1")  # nothing to keep
        snaps.release()
        assert log.read_text() == "freeze\nthaw\n"
        assert snaps.freeze_seconds > 0
    assert log.read_text() == "freeze\nthaw\n"  # the thaw runs once
    assert not (tmp_path / SNAPSHOT_DIR).exists()  # no empty directory left behind


def test_leaving_the_block_runs_a_pending_post_hook_even_on_failure(tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"x")
    log = tmp_path / "hooks.log"
    with pytest.raises(RuntimeError, match="read failed"), take_snapshots(
            [("d", disk)], pre_hook=["sh", "-c", f"echo pre >> {log}"],
            post_hook=["sh", "-c", f"echo post >> {log}; exit 1"]):
        raise RuntimeError("read failed")  # not masked by the failing post hook
    assert log.read_text().split() == ["pre", "post"]


def test_a_failing_pre_hook_fails_the_snapshot_and_still_runs_the_post_hook(
        tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"x")
    log = tmp_path / "hooks.log"
    with pytest.raises(HookFailed) as err:
        take_snapshots([("d", disk)], pre_hook=["sh", "-c", "echo nope >&2; exit 3"],
                       post_hook=["sh", "-c", f"echo post >> {log}"])
    assert "pre-snapshot" in str(err.value) and "exited 3" in str(err.value)
    assert "nope" in str(err.value)
    assert log.read_text() == "post\n"
    assert not list(tmp_path.glob(f"{SNAPSHOT_DIR}/*"))


def test_a_hook_that_hangs_is_killed_with_its_children(tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"x")
    pidfile = tmp_path / "child.pid"
    hang = ["sh", "-c", f"sleep 60 & echo $! > {pidfile}; wait"]
    with pytest.raises(HookFailed, match=r"did not finish within 0\.5 s"):
        take_snapshots([("d", disk)], pre_hook=hang, post_hook=["true"], hook_timeout=0.5)
    child = int(pidfile.read_text())
    # The grandchild got SIGKILL with its group (it may linger as a zombie of init).
    status = Path(f"/proc/{child}/status")
    assert not status.exists() or "zombie" in status.read_text()


def test_a_missing_hook_program_is_a_hook_failure(tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"x")
    with pytest.raises(HookFailed, match="could not start"):
        take_snapshots([("d", disk)], pre_hook=["/nonexistent/freeze"], post_hook=None)


def test_stale_new_snapshots_of_dead_agents_are_removed(tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"x")
    snapdir = tmp_path / SNAPSHOT_DIR
    snapdir.mkdir()
    with take_snapshots([("d", disk)]) as snaps:
        pass
    stem = next(iter(snaps._dirs.values()))[1]
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (snapdir / f"{stem}.new-{dead}-abcd").write_bytes(b"old")
    (snapdir / f"{stem}.new-{os.getpid()}-abcd").write_bytes(b"a concurrent backup's")
    (snapdir / f"{stem}.kept-b1").write_bytes(b"kept")
    with take_snapshots([("d", disk)]):
        pass
    assert sorted(p.name.split(".", 1)[1] for p in snapdir.iterdir()) == [
        "kept-b1", f"new-{os.getpid()}-abcd"]


def test_extent_comparison_finds_moved_new_punched_and_unreliable_ranges() -> None:
    old = [(0, 4 * MiB, 100 * MiB, 0), (8 * MiB, 2 * MiB, 200 * MiB, 0),
           (14 * MiB, MiB, 300 * MiB, 0)]
    new = [(0, MiB, 100 * MiB, 0),                          # shared
           (MiB, MiB, 500 * MiB, 0),                        # rewritten elsewhere
           (2 * MiB, 2 * MiB, 102 * MiB, 0),                # shared
           (8 * MiB, MiB, 200 * MiB, FIEMAP_EXTENT_DELALLOC),  # unreliable
           (9 * MiB, MiB, 201 * MiB, 0),                    # shared
           (12 * MiB, MiB, 600 * MiB, 0)]                   # new data; 14 MiB punched
    got = changed_ranges(old, new, 16 * MiB)
    assert got == [(MiB, 2 * MiB), (8 * MiB, 9 * MiB), (12 * MiB, 13 * MiB),
                   (14 * MiB, 15 * MiB)]


def test_extent_comparison_is_strict_about_encoded_and_unwritten_extents() -> None:
    enc = FIEMAP_EXTENT_ENCODED
    # Same compressed extent, same reference: unchanged.
    assert changed_ranges([(0, MiB, 7 * MiB, enc)], [(0, MiB, 7 * MiB, enc)], MiB) == []
    # Same compressed extent start, different reference: changed.
    assert changed_ranges([(0, MiB, 7 * MiB, enc)],
                          [(0, MiB // 2, 7 * MiB, enc), (MiB // 2, MiB // 2, 9 * MiB, 0)],
                          MiB) == [(0, MiB)]
    # Preallocated (reads as zeros) then written in place: changed.
    assert changed_ranges([(0, MiB, 7 * MiB, FIEMAP_EXTENT_UNWRITTEN)],
                          [(0, MiB, 7 * MiB, 0)], MiB) == [(0, MiB)]
    # Extents past the size do not count; a longer new file does up to size.
    assert changed_ranges([], [(0, 4 * MiB, 0, 0)], 2 * MiB) == [(0, 2 * MiB)]
