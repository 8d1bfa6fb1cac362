"""Keeping the agent's memory flat across backups of any size.

glibc raises its mmap threshold each time a large buffer is freed, after
which 1-16 MiB buffers (blocks, chunks, packs) come from the heap arenas and
stay there when freed: peak RSS then grows with the number of threads and
the pack size, not with live data. Pinning the threshold just above 1 MiB
makes every larger buffer (file chunks, stream buffers, packs) its own
mapping, returned to the kernel when freed, while 1 MiB disk blocks still
come from the heap and cost no page faults (measured on a 20,000-file tree:
peak 155 MiB -> 127 MiB, disk backups as fast as before).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("cbr.agent")

M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = (1 << 20) + (64 << 10)


def pin_mmap_threshold() -> bool:
    """Sets glibc's mmap threshold once for the process; False where there is no glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    except (OSError, AttributeError):
        log.debug("mallopt is not available; memory use may grow with buffer churn")
        return False
