"""The data benchmark's deterministic corpus: a sparse disk image and a file tree,
and the mutation applied between the first and the incremental backup.

Random bytes come from BLAKE3's extendable output over a seed, so the corpus
is the same on every machine and costs little CPU to make. Sizes scale with
``scale`` so a smoke run takes seconds.
"""

from __future__ import annotations

import base64
import os
import random
from dataclasses import dataclass
from pathlib import Path

import blake3

MiB = 1 << 20


def stream(seed: str, n: int) -> bytes:
    """``n`` deterministic pseudo-random bytes named by ``seed``."""
    return blake3.blake3(seed.encode()).digest(length=n)


def text(seed: str, n: int) -> bytes:
    """Compressible bytes: log-like lines of words and numbers (zstd ~4x)."""
    words = base64.b64encode(stream(seed, 3 * 1024)).split(b"/")
    rng = random.Random(seed)
    out = bytearray()
    line = 0
    while len(out) < n:
        line += 1
        out += b"%08d INFO " % line + b" ".join(rng.choices(words, k=6)) + b"\n"
    return bytes(out[:n])


@dataclass(frozen=True)
class DiskLayout:
    size: int
    used: int


def make_disk(path: Path, scale: float = 1.0) -> DiskLayout:
    """A sparse raw image: random, compressible, zero-filled and duplicate
    regions, with holes between them (2 GiB with ~1 GiB used at scale 1)."""
    size = int(2048 * scale) * MiB
    unit = max(1, int(64 * scale))  # MiB per region
    used = 0
    with open(path, "wb") as fh:
        fh.truncate(size)
        offset = 0
        i = 0
        while offset + 4 * unit * MiB <= size and used < size // 2:
            kind = i % 4
            fh.seek(offset)
            for j in range(unit):
                if kind == 0:
                    block = stream(f"disk-random-{i}-{j}", MiB)
                elif kind == 1:
                    block = text(f"disk-text-{i}-{j}", MiB)
                elif kind == 2:
                    block = bytes(MiB)  # allocated zeros, not a hole
                else:
                    block = stream(f"disk-random-{i - 3}-{j}", MiB)  # duplicates
                fh.write(block)
            used += unit * MiB
            offset += 2 * unit * MiB  # a hole as big as each region
            i += 1
    return DiskLayout(size, used)


def mutate_disk(path: Path, scale: float = 1.0) -> None:
    """Scattered 4 KiB writes, plus some new data in a former hole."""
    size = path.stat().st_size
    rng = random.Random("disk-mutation")
    with open(path, "r+b") as fh:
        for k in range(64):
            fh.seek(rng.randrange(0, size - 4096) // 4096 * 4096)
            fh.write(stream(f"scatter-{k}", 4096))
        fh.seek(size - int(64 * scale + 1) * MiB)
        fh.write(stream("new-data", int(32 * scale) * MiB or MiB))
        os.fsync(fh.fileno())


def make_tree(root: Path, scale: float = 1.0) -> tuple[int, int]:
    """About 20,000 files and 600 MB at scale 1: many small files, some large
    ones, symlinks. Returns (files, bytes)."""
    rng = random.Random("tree")
    files = int(20000 * scale)
    large = max(2, int(40 * scale))
    total = 0
    for n in range(files - large):
        d = root / f"d{n % 200:03d}" / f"s{n % 7}"
        d.mkdir(parents=True, exist_ok=True)
        length = rng.randint(200, 20000)
        body = text(f"f{n}", length) if n % 3 else stream(f"f{n}", length)
        (d / f"file{n:06d}.dat").write_bytes(body)
        total += length
    for n in range(large):
        d = root / "large"
        d.mkdir(exist_ok=True)
        length = int(rng.randint(5, 15) * MiB * min(1.0, scale * 4))
        body = stream(f"large{n}", length) if n % 2 else text(f"large{n}", length)
        (d / f"big{n:03d}.bin").write_bytes(body)
        total += length
    for n in range(min(200, files // 100)):
        os.symlink(f"../d{n % 200:03d}", root / f"link{n:03d}") if n % 2 else os.symlink(
            f"large/big{n % large:03d}.bin", root / f"blink{n:03d}")
    return files, total


def mutate_tree(root: Path, scale: float = 1.0) -> None:
    """A few hundred files changed, deleted and added; bytes inserted mid large files."""
    rng = random.Random("tree-mutation")
    small = sorted(root.glob("d*/s*/*.dat"))
    picks = rng.sample(small, min(len(small), int(600 * scale) or 3))
    third = len(picks) // 3
    for p in picks[:third]:
        p.write_bytes(text(f"changed-{p.name}", rng.randint(200, 20000)))
    for p in picks[third:2 * third]:
        p.unlink()
    new = root / "new"
    new.mkdir(exist_ok=True)
    for k in range(third):
        (new / f"added{k:05d}.dat").write_bytes(stream(f"added{k}", rng.randint(200, 20000)))
    for p in sorted((root / "large").glob("*.bin"))[:3]:
        data = p.read_bytes()
        mid = len(data) // 2
        p.write_bytes(data[:mid] + b"INSERTED BYTES" * 10 + data[mid:])
