"""Which packs a verify reads, like restic's ``--read-data-subset``.

``n/t`` is part n of t: a pack belongs to part ``(h mod t) + 1`` where h is
the first eight bytes of SHA-256 of its id, so the t parts are disjoint,
cover every pack, and a pack stays in its part however the vault grows
(a pack id never changes). Reading parts 1..t in turn reads the whole vault
once. ``P%`` is a random P percent of the packs, drawn anew each time.

The pack's id is already a hash of its bytes; it is hashed again so the
parts do not depend on how pack ids are made.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass

_PART = re.compile(r"^(\d+)/(\d+)$")
_PERCENT = re.compile(r"^(\d+(?:\.\d+)?)%$")
MAX_PARTS = 10000


@dataclass(frozen=True)
class DataSubset:
    part: int = 0
    total: int = 0
    percent: float = 0.0

    @classmethod
    def parse(cls, text: str) -> DataSubset:
        """``n/t`` (1 <= n <= t <= 10000) or ``P%`` (0 < P <= 100)."""
        text = text.strip()
        match = _PART.match(text)
        if match:
            part, total = int(match.group(1)), int(match.group(2))
            if not 1 <= total <= MAX_PARTS:
                raise ValueError(f"{text!r}: t must be 1 to {MAX_PARTS}")
            if not 1 <= part <= total:
                raise ValueError(f"{text!r}: n must be 1 to t ({total})")
            return cls(part=part, total=total)
        match = _PERCENT.match(text)
        if match:
            percent = float(match.group(1))
            if not 0 < percent <= 100:
                raise ValueError(f"{text!r}: the percentage must be more than 0 and at "
                                 "most 100")
            return cls(percent=percent)
        raise ValueError(f"{text!r} is neither n/t (part n of t, such as 1/5) nor P% "
                         "(such as 10%)")

    def with_part(self, part: int) -> DataSubset:
        return DataSubset(part=part, total=self.total)

    def __str__(self) -> str:
        return f"{self.part}/{self.total}" if self.total else f"{self.percent:g}%"

    def select(self, pack_ids: list[bytes]) -> list[bytes]:
        """The packs of this subset among ``pack_ids``, in their order."""
        if self.total:
            return [p for p in pack_ids if part_of(p, self.total) == self.part]
        rng = random.Random()
        return [p for p in pack_ids if rng.random() * 100 < self.percent]


def part_of(pack_id: bytes, total: int) -> int:
    """The part (1..total) a pack belongs to."""
    h = int.from_bytes(hashlib.sha256(pack_id).digest()[:8], "big")
    return h % total + 1


def rotated(subset: DataSubset, run: int) -> DataSubset:
    """The part the ``run``-th (1-based) run of a policy reads: part
    ((run - 1) mod t) + 1, so t runs read every pack once. A percentage is
    not rotated (it is random each run)."""
    if not subset.total:
        return subset
    return subset.with_part((run - 1) % subset.total + 1)
