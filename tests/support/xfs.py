"""A loop-mounted XFS with reflink for tests of reflink snapshots and FIEMAP.

Needs root, ``losetup``/``mount`` and ``mkfs.xfs`` (Debian: xfsprogs). Where
any of them is missing, or the kernel refuses the mount (unprivileged
containers), :func:`mounted_xfs` skips the test and says why (in CI, where
all of them are there, it fails instead). It always
unmounts and detaches the loop device it attached, however the test ends.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tests.support.environment import unavailable

MiB = 1 << 20


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=60)


@contextlib.contextmanager
def mounted_xfs(work: Path, size: int = 512 * MiB) -> Iterator[Path]:
    """Mounts a fresh XFS (``reflink=1``) of ``size`` bytes under ``work/mnt``."""
    if os.geteuid() != 0:
        unavailable("loop-mounting XFS needs root")
    for tool in ("mkfs.xfs", "losetup", "mount", "umount"):
        if shutil.which(tool) is None:
            unavailable(f"{tool} is not installed (Debian: xfsprogs, mount)")
    image = work / "xfs.img"
    with open(image, "wb") as fh:
        fh.truncate(size)
    made = _run("mkfs.xfs", "-q", "-f", "-m", "reflink=1", str(image))
    if made.returncode != 0:
        unavailable(f"mkfs.xfs -m reflink=1 failed: {made.stderr.strip()}")
    attached = _run("losetup", "--find", "--show", str(image))
    if attached.returncode != 0:
        unavailable(f"cannot attach a loop device here: {attached.stderr.strip()}")
    device = attached.stdout.strip()
    mount = work / "mnt"
    mounted = False
    try:
        mount.mkdir()
        done = _run("mount", "-t", "xfs", device, str(mount))
        if done.returncode != 0:
            unavailable(f"cannot mount XFS here: {done.stderr.strip()}")
        mounted = True
        yield mount
    finally:
        if mounted and _run("umount", str(mount)).returncode != 0:
            _run("umount", "-l", str(mount))
        _run("losetup", "-d", device)
