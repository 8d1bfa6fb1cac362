"""The quickstart's sample data, and the byte-for-byte comparisons of restores with it.

Apart from the steps because the demo's claim ("identical to the source")
is only as good as these checks; they read only where a sparse image holds
data, so a 10 GiB image compares in a blink.
"""

from __future__ import annotations

import filecmp
import os
from pathlib import Path


def make_samples(work: Path) -> Path:
    """Sparse disk images with a little data, and a small directory tree."""
    images = work / "images"
    images.mkdir(parents=True)
    for name, size in (("web-1-system", 2 << 30), ("web-1-data", 4 << 30),
                       ("db-1-system", 2 << 30), ("db-1-data", 8 << 30), ("vol-1", 1 << 30)):
        with open(images / f"{name}.img", "wb") as fh:
            fh.truncate(size)
            for offset in range(0, 512 << 20, 16 << 20):  # 32 MiB of data per disk
                fh.seek(offset)
                fh.write(os.urandom(1 << 20))
    tree = work / "share"
    for d in range(4):
        (tree / f"dir{d}" / "nested").mkdir(parents=True)
        for f in range(8):
            (tree / f"dir{d}" / f"file{f}.txt").write_text(f"sample {d}/{f}\n" * (100 * f + 1))
        (tree / f"dir{d}" / "nested" / "blob.bin").write_bytes(os.urandom(256 << 10))
    (tree / "empty-dir").mkdir()
    os.symlink("dir0/file1.txt", tree / "link-to-file1")
    return images

def data_ranges(path: Path) -> list[tuple[int, int]]:
    out, size = [], path.stat().st_size
    with open(path, "rb") as fh:
        offset = 0
        while offset < size:
            try:
                start = os.lseek(fh.fileno(), offset, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(fh.fileno(), start, os.SEEK_HOLE)
            out.append((start, end))
            offset = end
    return out


def sparse_copy(src: Path, dst: Path) -> None:
    """A copy that keeps the holes: only the data ranges are written."""
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        fo.truncate(src.stat().st_size)
        for start, end in data_ranges(src):
            fi.seek(start)
            fo.seek(start)
            left = end - start
            while left > 0:
                chunk = fi.read(min(left, 4 << 20))
                fo.write(chunk)
                left -= len(chunk)


def same_disk(a: Path, b: Path) -> bool:
    """Byte-for-byte equal, reading only where either file has data (the
    rest is holes in both, which read as zeros): a 10 GiB sparse image with
    32 MiB of data compares in a blink."""
    if a.stat().st_size != b.stat().st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        for start, end in sorted(data_ranges(a) + data_ranges(b)):
            fa.seek(start)
            fb.seek(start)
            left = end - start
            while left > 0:
                n = min(left, 4 << 20)
                if fa.read(n) != fb.read(n):
                    return False
                left -= n
    return True


def same_tree(a: Path, b: Path) -> bool:
    cmp = filecmp.dircmp(a, b)
    if cmp.left_only or cmp.right_only or cmp.diff_files or cmp.funny_files:
        return False
    return all(same_tree(a / d, b / d) for d in cmp.common_dirs)
