"""What only the local directory backend promises, beyond the shared contract:
its on-disk layout, temp-file hygiene, and errno mapping for a full disk and
for permissions, triggered for real (a tiny tmpfs, an unprivileged child
process, a read-only mount) rather than simulated where this machine allows.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cbr.storage.backend import (
    ObjectNotFound,
    StorageError,
    StorageFull,
    StoragePermissionDenied,
)
from cbr.storage.local import TEMP_PREFIX, LocalBackend, map_os_error
from tests.support.environment import unavailable

NOBODY = 65534


@contextlib.contextmanager
def _tmpfs(size: str, *options: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted on a fresh directory, or a skip saying why not."""
    mountpoint = Path(tempfile.mkdtemp(prefix="cbr-tmpfs-"))
    opts = ",".join((f"size={size}", *options))
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        mountpoint.rmdir()
        unavailable(f"cannot mount a tmpfs here ({result.stderr.strip()}); ENOSPC not triggerable")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)
        with contextlib.suppress(OSError):
            mountpoint.rmdir()


def test_objects_are_plain_files_under_the_root(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "vault")
    backend.put("data/ab/abcd", b"payload")
    assert (tmp_path / "vault" / "data" / "ab" / "abcd").read_bytes() == b"payload"


def test_missing_root_is_created_unless_told_not_to(tmp_path: Path) -> None:
    LocalBackend(tmp_path / "new" / "vault")
    assert (tmp_path / "new" / "vault").is_dir()
    with pytest.raises(Exception, match="not a directory"):
        LocalBackend(tmp_path / "absent", create=False)


def test_temp_files_are_never_listed_and_stale_ones_are_removed(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path)
    backend.put("data/x", b"x")
    stale = tmp_path / "data" / f"{TEMP_PREFIX}crashed"
    stale.write_bytes(b"half")
    fresh = tmp_path / "data" / f"{TEMP_PREFIX}in-progress"
    fresh.write_bytes(b"writing")
    old = time.time() - 7200
    os.utime(stale, (old, old))
    assert [info.name for info in backend.list()] == ["data/x"]
    # Usage counts every unfinished write; a dry run removes nothing.
    assert backend.remove_abandoned_writes(0, dry_run=True) == (2, 11)
    assert stale.exists()
    assert backend.remove_abandoned_writes(older_than_s=3600) == (1, 4)
    assert not stale.exists()
    assert fresh.exists()


def test_failed_write_leaves_no_temp_file(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path)

    def broken() -> Iterator[bytes]:
        yield b"part"
        raise RuntimeError("source failed")

    with pytest.raises(RuntimeError):
        backend.put_stream("data/x", broken())
    assert list((tmp_path / "data").iterdir()) == []


def test_symlinks_in_the_root_are_not_followed_by_list(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"s")
    vault = tmp_path / "vault"
    backend = LocalBackend(vault)
    backend.put("real", b"r")
    (vault / "link").symlink_to(outside)
    assert [info.name for info in backend.list()] == ["real"]


def test_full_disk_raises_storage_full_and_leaves_nothing_behind() -> None:
    with _tmpfs("256k") as mountpoint:
        backend = LocalBackend(mountpoint / "vault")
        backend.put("small", b"fits")
        with pytest.raises(StorageFull):
            backend.put("big", os.urandom(1024 * 1024))
        with pytest.raises(StorageFull):
            backend.put_stream("big", (os.urandom(64 * 1024) for _ in range(16)))
        assert [info.name for info in backend.list()] == ["small"]
        assert sorted(p.name for p in (mountpoint / "vault").iterdir()) == ["small"]
        assert backend.get("small") == b"fits"


def test_read_only_filesystem_raises_permission_denied() -> None:
    with _tmpfs("1m") as mountpoint:
        LocalBackend(mountpoint / "vault").put("kept", b"k")
        subprocess.run(["mount", "-o", "remount,ro", str(mountpoint)], check=True)
        backend = LocalBackend(mountpoint / "vault")
        with pytest.raises(StoragePermissionDenied):
            backend.put("new", b"n")
        with pytest.raises(StoragePermissionDenied):
            backend.delete("kept")
        assert backend.get("kept") == b"k"


def _try_each(backend: LocalBackend) -> dict[str, str]:
    """The outcome (``ok`` or the error class) of each kind of operation."""
    results: dict[str, str] = {}
    for label, call in [
        ("put", lambda: backend.put("data/new", b"x")),
        ("get", lambda: backend.get("data/old")),
        ("stat", lambda: backend.stat("data/old")),
        ("list", lambda: list(backend.list("data/"))),
        ("delete", lambda: backend.delete("data/old")),
    ]:
        try:
            call()
            results[label] = "ok"
        except StorageError as exc:
            results[label] = type(exc).__name__
    return results


def _as_nobody(backend: LocalBackend) -> dict[str, str]:
    """Runs :func:`_try_each` in a forked child that dropped root for uid ``nobody``
    (the venv's interpreter lives under /root, so a fresh ``nobody`` process
    could not even start Python)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            os.write(write_end, json.dumps(_try_each(backend)).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        output = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the unprivileged child failed"
    results: dict[str, str] = json.loads(output)
    return results


def test_unreadable_unwritable_directory_raises_permission_denied() -> None:
    """chmod 000 on a directory. Root bypasses file permissions, so as root the
    operations run in a forked child that dropped to uid ``nobody``."""
    base = Path(tempfile.mkdtemp(prefix="cbr-perm-"))
    try:
        base.chmod(0o755)
        backend = LocalBackend(base / "vault")
        backend.put("data/old", b"o")
        (base / "vault").chmod(0o755)
        (base / "vault" / "data").chmod(0o000)
        results = _as_nobody(backend) if os.geteuid() == 0 else _try_each(backend)
        assert set(results.values()) == {"StoragePermissionDenied"}, results
    finally:
        (base / "vault" / "data").chmod(0o755)
        shutil.rmtree(base)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (errno.ENOSPC, StorageFull),
        (errno.EDQUOT, StorageFull),
        (errno.EACCES, StoragePermissionDenied),
        (errno.EROFS, StoragePermissionDenied),
        (errno.ENOENT, ObjectNotFound),
    ],
)
def test_errno_maps_to_the_typed_error(code: int, expected: type[Exception]) -> None:
    error = map_os_error(OSError(code, os.strerror(code)), "data/x", "writing")
    assert isinstance(error, expected)
    assert not error.retryable


def test_objects_and_directories_are_private_to_the_owner(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "vault")
    backend.put("data/ab/abcd", b"a pack of an unencrypted vault")
    backend.put("config", b"{}")
    for path in [tmp_path / "vault", *(tmp_path / "vault").rglob("*")]:
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path
