"""The machine's side of the data benchmarks: restic and an XFS loop mount, installed when missing.

Kept apart from the runs because it is what needs root, apt-get and the
kernel's loop devices, and what must release them however a run ends.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from bench.measure import BenchFailed, log


def apt_install(package: str) -> None:
    """Debian's package, as the brief of this benchmark says; update only if
    the first try cannot find it."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    log(f"==> installing {package} with apt-get")
    if subprocess.run(["apt-get", "install", "-y", "-q", package], env=env,
                      capture_output=True, check=False).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=False)
        subprocess.run(["apt-get", "install", "-y", "-q", package], env=env,
                       capture_output=True, check=False)


def ensure_restic() -> str:
    if shutil.which("restic") is None:
        apt_install("restic")
    if shutil.which("restic") is None:
        raise BenchFailed("restic is missing and apt-get could not install it "
                          "(use --no-restic to run ours only)")
    done = subprocess.run(["restic", "version"], capture_output=True, text=True, check=True)
    return done.stdout.strip()


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=False)


@contextlib.contextmanager
def xfs_mount(work: Path, size: int) -> Iterator[tuple[Path | None, str]]:
    """A loop-mounted XFS with reflink, or ``(None, reason)``; the mount and
    the loop device are always released, even on Ctrl-C."""
    if os.geteuid() != 0:
        yield None, "mounting a loop device needs root"
        return
    if shutil.which("mkfs.xfs") is None:
        apt_install("xfsprogs")
    if shutil.which("mkfs.xfs") is None:
        yield None, "mkfs.xfs is missing and apt-get could not install xfsprogs"
        return
    image, mount = work / "xfs.img", work / "xfs"
    with open(image, "wb") as fh:
        fh.truncate(size)
    mount.mkdir(exist_ok=True)
    device = ""
    mounted = False
    try:
        made = _run("mkfs.xfs", "-q", "-f", "-m", "reflink=1", str(image))
        if made.returncode != 0:
            yield None, f"mkfs.xfs failed: {made.stderr.strip()}"
            return
        attached = _run("losetup", "--find", "--show", str(image))
        if attached.returncode != 0:
            yield None, f"losetup failed: {attached.stderr.strip()}"
            return
        device = attached.stdout.strip()
        done = _run("mount", device, str(mount))
        if done.returncode != 0:
            yield None, f"mount failed: {done.stderr.strip()}"
            return
        mounted = True
        yield mount, ""
    finally:
        if mounted and _run("umount", str(mount)).returncode != 0:
            _run("umount", "-l", str(mount))
        if device:
            _run("losetup", "-d", device)
        image.unlink(missing_ok=True)
