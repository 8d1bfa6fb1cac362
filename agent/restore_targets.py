"""Where this host lets a restore write: its operator's restore roots, and the
resources it protects (restores in place).

A restore runs as root, so a path the controller sends is a request, not an
order: the controller checks the same roots before it sends (reported in
Hello), but it may be old, wrong or compromised, so the host decides again
here on what it alone can see, the real path after symlinks. A device is a
target only when it is a disk this host protects: a new-place restore writes
an image file, never a device nobody named.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from agent.config import AgentConfig
from agent.dataplane import UnsafeTarget
from cbr import errors


class TargetNotAllowed(UnsafeTarget):
    """The host's operator does not allow a restore to this path."""

    code = errors.RestoreTargetNotAllowed.code


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _real(path: str) -> str:
    if not path.startswith("/") or "\x00" in path:
        raise UnsafeTarget(f"restore target {path!r} is not an absolute path")
    return os.path.realpath(path)


def _roots(config: AgentConfig) -> list[str]:
    return [os.path.realpath(root) for root in config.effective_restore_roots]


def _refuse(config: AgentConfig, path: str, what: str) -> TargetNotAllowed:
    return TargetNotAllowed(
        f"{what} {path!r} is outside what this host allows; restore under one of its "
        f"restore roots ({', '.join(config.effective_restore_roots)}) or in place, or ask "
        f"its operator to add a root to restore_roots in {config.source or 'its config'}")


def tree_target(config: AgentConfig, path: str) -> Path:
    """The real directory a file-system restore may write into."""
    real = _real(path)
    places = _roots(config) + [os.path.realpath(fs.path) for fs in config.file_systems]
    if not any(_within(real, place) for place in places):
        raise _refuse(config, path, "restore target")
    return Path(real)


def disk_target(config: AgentConfig, path: str) -> Path:
    """The real file or protected device a disk restore may write."""
    real = _real(path)
    disks = [d.path for s in config.servers for d in s.disks] + [d.path for d in config.disks]
    if any(real == os.path.realpath(disk) for disk in disks):
        return Path(real)
    if not any(_within(real, root) for root in _roots(config)):
        raise _refuse(config, path, "disk restore target")
    try:
        mode = os.stat(real).st_mode
    except FileNotFoundError:
        return Path(real)
    if not stat.S_ISREG(mode):
        raise TargetNotAllowed(
            f"disk restore target {path!r} exists and is not a regular file; a restore to a "
            "new place writes an image file, and a device only when it is a disk this host "
            "protects")
    return Path(real)


def ensure_default_root(config: AgentConfig) -> None:
    """Makes the default restore root, private to root, when no root is configured."""
    if not config.restore_roots:
        Path(config.effective_restore_roots[0]).mkdir(mode=0o700, parents=True, exist_ok=True)
