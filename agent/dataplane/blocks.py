"""A disk seen as blocks: its size, where it holds data, and runs of blocks
(shared by disk backup and disk restore). It owns the ioctl numbers and the
read sizes; it reads nothing but sizes and hole maps."""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path

from agent.dataplane import (
    SourceUnreadable,
)

BLKGETSIZE64 = 0x80081272
BLKZEROOUT = 0x127F
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02

READ_SIZE = 2 << 20
"""Bytes per read call (whole blocks): large enough for sequential throughput
with the page cache cold, small enough that the ring stays a few MiB."""

ADVISE_AHEAD = 64 << 20
"""Bytes of planned reads the kernel is asked to fetch ahead of the reader
(changed-block tracking only): the page cache it may fill, at most."""

IDS_PER_ITEM = 256
"""Reused parent entries carried per queue item (bounds the queue's memory)."""


def disk_size(path: Path) -> int:
    """Size in bytes of an image file or a block device (whose ``st_size`` is 0)."""
    try:
        st = os.stat(path)
        if stat.S_ISBLK(st.st_mode):
            fd = os.open(path, os.O_RDONLY)
            try:
                buf = fcntl.ioctl(fd, BLKGETSIZE64, b"\0" * 8)
                return int(struct.unpack("Q", buf)[0])
            except OSError:
                return os.lseek(fd, 0, os.SEEK_END)
            finally:
                os.close(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SourceUnreadable(f"disk {path} is neither a regular file nor a block device")
        return st.st_size
    except OSError as exc:
        raise SourceUnreadable(f"cannot read disk {path}: {exc}") from exc


def data_ranges(fd: int, size: int, start: int = 0) -> Iterator[tuple[int, int]]:
    """``[start, end)`` ranges from ``start`` on that may hold data, in order.

    Everything is data where the file cannot tell holes apart (block
    devices, filesystems without ``SEEK_DATA``).
    """
    offset = start
    while offset < size:
        try:
            a = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                return  # a hole up to the end
            yield offset, size
            return
        if a >= size:
            return
        try:
            b = min(os.lseek(fd, a, os.SEEK_HOLE), size)
        except OSError:
            b = size
        if b <= a:  # a file that changes under us: read the rest
            yield a, size
            return
        yield a, b
        offset = b


def _block_runs(ranges: Iterator[tuple[int, int]] | Sequence[tuple[int, int]],
                block_size: int, first_block: int, end_block: int,
                max_blocks: int) -> Iterator[tuple[int, int]]:
    """``(first, count)`` runs of the blocks in ``[first_block, end_block)`` that
    the byte ranges (sorted by start) overlap, each at most ``max_blocks``
    long, each block once."""
    run_start, run_end = -1, -1
    for start, end in ranges:
        if end <= start:
            continue
        a = max(start // block_size, first_block)
        b = min(-(-end // block_size), end_block)
        if a >= b:
            if start // block_size >= end_block:
                break
            continue
        if run_end >= a:  # touches or overlaps the open run
            run_end = max(run_end, b)
            continue
        if run_end > run_start:
            yield from _split(run_start, run_end, max_blocks)
        run_start, run_end = a, b
    if run_end > run_start:
        yield from _split(run_start, run_end, max_blocks)


def _split(first: int, end: int, max_blocks: int) -> Iterator[tuple[int, int]]:
    while first < end:
        n = min(max_blocks, end - first)
        yield first, n
        first += n
