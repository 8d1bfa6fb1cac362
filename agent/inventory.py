"""What this host can protect, measured: the Inventory the agent reports.

Turns the config's servers, single disks and file systems into
``ReportedProtectable`` messages with stable local ids and sizes: a disk
image's apparent size (sparse images are normal), a block device's size
(seek to its end), a file system's total bytes of regular files (walked
without following symlinks or setting access times, which a backup records
and a change journal does not see; nothing kept but the running total).
Anything unreadable is still reported, with ``error`` set, so the controller
can show why.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from typing import Any

from agent.config import AgentConfig
from agent.dataplane.listing import list_dir
from cbr.v1 import agent_pb2, common_pb2, protectable_pb2


@dataclass(frozen=True)
class DeviceSize:
    size_bytes: int
    device_type: str  # "file" | "block"


def device_size(path: str) -> DeviceSize:
    """Size of a raw image file or a block device; OSError/ValueError if neither."""
    st = os.stat(path)
    if stat.S_ISREG(st.st_mode):
        return DeviceSize(st.st_size, "file")
    if stat.S_ISBLK(st.st_mode):
        fd = os.open(path, os.O_RDONLY)
        try:
            return DeviceSize(os.lseek(fd, 0, os.SEEK_END), "block")
        finally:
            os.close(fd)
    raise ValueError(f"{path} is neither a regular file (a raw image) nor a block device")


@dataclass(frozen=True)
class TreeSize:
    size_bytes: int
    files: int
    errors: int
    first_error: str


def tree_size(root: str) -> TreeSize:
    """Bytes of the regular files under root; unreadable entries are counted, not fatal.

    Raises OSError/ValueError when root itself is not a readable directory.
    """
    st = os.stat(root)
    if not stat.S_ISDIR(st.st_mode):
        raise ValueError(f"{root} is not a directory")
    total = files = errors = 0
    first_error = ""
    pending = [os.fsencode(root)]
    while pending:
        directory = pending.pop()
        try:
            for name, got in list_dir(directory):
                path = directory + b"/" + name
                if isinstance(got, OSError):
                    errors += 1
                    first_error = first_error or f"{os.fsdecode(path)}: {got.strerror or got}"
                elif stat.S_ISDIR(got.st_mode):
                    pending.append(path)
                elif stat.S_ISREG(got.st_mode):
                    total += got.st_size
                    files += 1
        except OSError as exc:
            if directory == os.fsencode(root):
                raise
            errors += 1
            first_error = first_error or f"{os.fsdecode(directory)}: {exc.strerror or exc}"
    return TreeSize(total, files, errors, first_error)


def _why(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return f"{exc.filename}: no such file or device"
    if isinstance(exc, OSError):
        return f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": ")
    return str(exc)


def _tags(tags: dict[str, str]) -> list[Any]:
    return [common_pb2.Tag(key=k, value=v) for k, v in sorted(tags.items())]


def _disk(local_id: str, name: str, path: str, system: bool) -> tuple[Any, str]:
    try:
        size = device_size(path)
        return protectable_pb2.ProtectableDisk(
            id=local_id, name=name, path=path, size_bytes=size.size_bytes, system_disk=system,
            device_type=size.device_type,
        ), ""
    except (OSError, ValueError) as exc:
        return protectable_pb2.ProtectableDisk(
            id=local_id, name=name, path=path, system_disk=system,
        ), _why(exc)


def scan(config: AgentConfig) -> Any:
    """A fresh Inventory message of everything the config lists (importers: empty)."""
    out = []
    for server in config.servers:
        disks, problems = [], []
        for spec in server.disks:
            disk, problem = _disk(server.disk_id(spec), spec.name, spec.path, spec.system)
            disks.append(disk)
            if problem:
                problems.append(f"disk {spec.name}: {problem}")
        out.append(agent_pb2.ReportedProtectable(
            local_id=server.local_id, name=server.name, type=common_pb2.OBJECT_TYPE_SERVER,
            size_bytes=sum(d.size_bytes for d in disks), disks=disks,
            tags=_tags(server.tags), error="; ".join(problems),
        ))
    for single in config.disks:
        disk, problem = _disk(single.local_id, single.name, single.path, False)
        out.append(agent_pb2.ReportedProtectable(
            local_id=single.local_id, name=single.name, type=common_pb2.OBJECT_TYPE_DISK,
            size_bytes=disk.size_bytes, disks=[disk], path=single.path,
            tags=_tags(single.tags), error=problem,
        ))
    for fs in config.file_systems:
        error = ""
        size = 0
        try:
            tree = tree_size(fs.path)
            size = tree.size_bytes
            if tree.errors:
                error = f"{tree.errors} entries could not be read, e.g. {tree.first_error}"
        except (OSError, ValueError) as exc:
            error = _why(exc)
        out.append(agent_pb2.ReportedProtectable(
            local_id=fs.local_id, name=fs.name, type=common_pb2.OBJECT_TYPE_TURBO,
            size_bytes=size, path=fs.path, tags=_tags(fs.tags), error=error,
        ))
    return agent_pb2.Inventory(protectables=out)


def digest(inventory: Any) -> str:
    """A fingerprint of an inventory, to send it again only when it changed."""
    return hashlib.sha256(inventory.SerializeToString(deterministic=True)).hexdigest()
