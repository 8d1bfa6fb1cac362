"""The data benchmark's deterministic corpus: a sparse disk image and a file tree,
and the mutation applied between the first and the incremental backup.

Random bytes come from BLAKE3's extendable output over a seed, so the corpus
is the same on every machine and costs little CPU to make: two runs of the
benchmark, here or elsewhere, back up the same bytes. Sizes scale with
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
    """``n`` deterministic incompressible bytes named by ``seed``."""
    return blake3.blake3(seed.encode()).digest(length=n)


def text(seed: str, n: int) -> bytes:
    """Compressible bytes: log-like lines of words and numbers (zstd ~4x), so
    compression matters to stored bytes the way it does on real servers."""
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
    """A sparse raw image: random, compressible, allocated-zero and duplicate
    regions with holes between them (2 GiB with ~1 GiB used at scale 1).

    Allocated zeros are written, not left as holes: a thin-provisioned volume
    holds many such blocks, and an engine must find them by content, not by
    SEEK_DATA. Duplicates repeat an earlier random region so dedup shows in
    stored bytes.
    """
    size = max(16, int(2048 * scale)) * MiB
    unit = max(1, int(64 * scale))  # MiB per region
    used = 0
    with open(path, "wb") as fh:
        fh.truncate(size)
        offset = 0
        i = 0
        while offset + 2 * unit * MiB <= size and used < size // 2:
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
        os.fsync(fh.fileno())
    return DiskLayout(size, used)


def mutate_disk(path: Path, scale: float = 1.0) -> int:
    """Scattered 4 KiB writes (as a running file system makes them), plus
    some new data in a former hole; returns the bytes written."""
    size = path.stat().st_size
    rng = random.Random("disk-mutation")
    written = 0
    with open(path, "r+b") as fh:
        for k in range(64):
            fh.seek(rng.randrange(0, size - 4096) // 4096 * 4096)
            fh.write(stream(f"scatter-{k}", 4096))
            written += 4096
        new = max(1, int(32 * scale)) * MiB
        fh.seek(size - new - MiB)
        fh.write(stream("new-data", new))
        written += new
        os.fsync(fh.fileno())
    return written


@dataclass(frozen=True)
class TreeLayout:
    files: int
    bytes: int
    symlinks: int
    dirs: int


def make_tree(root: Path, scale: float = 1.0) -> TreeLayout:
    """About 20,000 files and 600 MB at scale 1: many small files (a third
    incompressible), a few dozen large ones, symlinks, executable and private
    modes and empty directories, so a restore that loses a mode or a link
    shows in the comparison."""
    rng = random.Random("tree")
    files = max(20, int(20000 * scale))
    large = max(2, int(40 * scale))
    total = 0
    dirs: set[Path] = set()
    for n in range(files - large):
        d = root / f"d{n % 200:03d}" / f"s{n % 7}"
        if d not in dirs:
            d.mkdir(parents=True, exist_ok=True)
            dirs.add(d)
        length = rng.randint(200, 20000)
        body = text(f"f{n}", length) if n % 3 else stream(f"f{n}", length)
        path = d / f"file{n:06d}.dat"
        path.write_bytes(body)
        if n % 50 == 0:
            path.chmod(0o755)
        elif n % 70 == 0:
            path.chmod(0o600)
        total += length
    big = root / "large"
    big.mkdir(exist_ok=True)
    for n in range(large):
        length = int(rng.randint(5, 15) * MiB * min(1.0, scale * 4))
        body = stream(f"large{n}", length) if n % 2 else text(f"large{n}", length)
        (big / f"big{n:03d}.bin").write_bytes(body)
        total += length
    links = max(2, min(200, files // 100))
    for n in range(links):
        if n % 2:
            os.symlink(f"d{n % 200:03d}", root / f"link{n:03d}")
        else:
            os.symlink(f"large/big{n % large:03d}.bin", root / f"blink{n:03d}")
    empty = max(1, int(20 * scale))
    for n in range(empty):
        (root / "empty" / f"e{n:02d}").mkdir(parents=True)
    return TreeLayout(files, total, links, len(dirs) + empty + 2)


def mutate_tree(root: Path, scale: float = 1.0) -> dict[str, int]:
    """A few hundred files changed, deleted and added; bytes inserted mid
    large files (which content-defined chunking should absorb). Returns the
    counts of each."""
    rng = random.Random("tree-mutation")
    small = sorted(root.glob("d*/s*/*.dat"))
    picks = rng.sample(small, min(len(small), max(3, int(600 * scale))))
    third = len(picks) // 3
    for p in picks[:third]:
        p.write_bytes(text(f"changed-{p.name}", rng.randint(200, 20000)))
    for p in picks[third:2 * third]:
        p.unlink()
    new = root / "new"
    new.mkdir(exist_ok=True)
    for k in range(third):
        (new / f"added{k:05d}.dat").write_bytes(stream(f"added{k}", rng.randint(200, 20000)))
    inserted = sorted((root / "large").glob("*.bin"))[:3]
    for p in inserted:
        data = p.read_bytes()
        mid = len(data) // 2
        p.write_bytes(data[:mid] + b"INSERTED BYTES" * 10 + data[mid:])
    return {"changed": third, "deleted": third, "added": third, "inserted": len(inserted)}
