"""The content-defined chunker of file content (``docs/storage-format.md`` section 9).

This module owns how a vault's config and chunk-id key become a FastCDC
chunker (pyfastcdc, native): sizes from config, gear seed from the key, so
replicas sharing the key cut identically. It must not hash or store chunks.
"""

from __future__ import annotations

import pyfastcdc

from cbr.repo.config import ChunkerParams
from cbr.repo.ids import ChunkHasher


def make_chunker(params: ChunkerParams, hasher: ChunkHasher) -> pyfastcdc.FastCDC:
    """A FastCDC chunker for the namespace of ``hasher``."""
    return pyfastcdc.FastCDC(
        params.avg_size,
        min_size=params.min_size,
        max_size=params.max_size,
        normalized_chunking=params.normalization,  # type: ignore[arg-type]
        seed=hasher.chunker_seed(),
    )
