"""The content-defined chunker of file content (``docs/storage-format.md`` section 9).

This module owns how a vault's config and chunk-id key become a FastCDC
chunker (pyfastcdc, native): sizes from config, gear seed from the key, so
replicas sharing the key cut identically. It must not hash or store chunks.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pyfastcdc

from cbr.repo.config import ChunkerParams
from cbr.repo.content.ids import ChunkHasher


def make_chunker(params: ChunkerParams, hasher: ChunkHasher) -> pyfastcdc.FastCDC:
    """A FastCDC chunker for the namespace of ``hasher``."""
    return pyfastcdc.FastCDC(
        params.avg_size,
        min_size=params.min_size,
        max_size=params.max_size,
        normalized_chunking=params.normalization,  # type: ignore[arg-type]
        seed=hasher.chunker_seed(),
    )


def window_size(params: ChunkerParams) -> int:
    """Bytes of the buffer :func:`cut_range` reads into: two maximal chunks.
    Less than one maximal chunk is carried over per refill, so each refill
    reads at least one maximal chunk's worth."""
    return 2 * params.max_size


def cut_range(chunker: pyfastcdc.FastCDC, fd: int, start: int, length: int,
              buffer: bytearray) -> Iterator[memoryview]:
    """The chunks of ``length`` bytes of ``fd`` from ``start``, cut exactly
    as a stream would be, as views into ``buffer``.

    FastCDC decides a cut from at most ``max_size`` bytes after a chunk's
    start (less only at the end of the data), so a chunk that starts at
    least ``max_size`` before the end of the filled window is cut as in a
    stream; the rest is moved to the front and cut again after a refill.
    Reading large windows and cutting them in one native pass keeps the
    per-chunk work that holds the GIL small. Each view is valid only until
    the next one is requested. A file that ends early (it shrank while read)
    ends the chunks there; the caller's before-and-after stat notices.
    Raises ``OSError`` on a read error.
    """
    view = memoryview(buffer)
    limit = chunker.max_size
    filled = 0
    offset = start
    left = length
    while True:
        while left and filled < len(view):
            want = min(left, len(view) - filled)
            got = os.preadv(fd, [view[filled:filled + want]], offset)
            if got <= 0:
                left = 0
                break
            filled += got
            offset += got
            left -= got
        if left:
            # The next window's pages are read by the kernel while this one
            # is cut, hashed and compressed.
            with contextlib.suppress(OSError):
                os.posix_fadvise(fd, offset, min(left, len(view)), os.POSIX_FADV_WILLNEED)
        done = 0
        for chunk in chunker.cut_buf(view[:filled]):
            if left and filled - chunk.offset < limit:
                break
            yield chunk.data
            done = chunk.offset + chunk.length
        if not left:
            return
        view[:filled - done] = view[done:filled]
        filled -= done
