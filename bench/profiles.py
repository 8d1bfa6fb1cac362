"""Profiles of our workers (``--profile``): py-spy found, its raw stacks summed and drawn.

Apart from the runs so that what a profile says (imports, waiting threads,
the functions with the most samples of their own) is one place to read, and
the flame graph needs nothing beyond the standard library.
"""

from __future__ import annotations

import shutil
import sys
import zlib
from collections import Counter
from html import escape
from pathlib import Path
from typing import Any

from bench.measure import BenchFailed


def profiler() -> str:
    found = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable)
                                                                      .parent))
    if found is None:
        raise BenchFailed("--profile needs py-spy (pip install py-spy)")
    return found


def _stacks(raw: Path) -> Counter[tuple[str, ...]]:
    stacks: Counter[tuple[str, ...]] = Counter()
    for line in raw.read_text(errors="replace").splitlines():
        frames, _, count = line.rpartition(" ")
        if frames and count.isdigit():
            stacks[tuple(frames.split(";"))] += int(count)
    return stacks


def _function(frame: str) -> str:
    """``name (file.py:123)`` without the line, so a function's samples add up."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0]})" if where else name


# Leaf frames where a thread waits rather than works (py-spy counts a thread
# blocked in a C call that released the GIL as active): summed apart, so the
# top list shows work.
WAITING = ("Condition.wait (", "_worker (concurrent/futures/thread.py", "Event.wait (",
           "Thread.join (", "Queue.get (", "Lock._loop (")


def _kind(frames: tuple[str, ...]) -> str:
    if frames[-1].startswith(WAITING):
        return "waiting"
    if any("<frozen importlib" in f for f in frames):
        return "imports"
    return "work"


def render_profile(raw: Path, svg: Path, title: str, top: int = 12) -> dict[str, Any]:
    """Writes a flame graph of py-spy's raw stacks and returns the shares of
    start-up imports and of waiting threads, and the functions with the most
    samples of their own otherwise (where the time goes, not who called)."""
    stacks = _stacks(raw)
    total = sum(stacks.values()) or 1
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    for frames, n in stacks.items():
        kind = _kind(frames)
        kinds[kind] += n
        if kind == "work":
            own[_function(frames[-1])] += n
        for fn in {_function(f) for f in frames}:
            inclusive[fn] += n
    write_flamegraph(stacks, svg, title)
    return {"samples": total, "imports_pct": round(100 * kinds["imports"] / total, 1),
            "waiting_pct": round(100 * kinds["waiting"] / total, 1),
            "top_self": [{"function": fn, "self_pct": round(100 * n / total, 1),
                          "total_pct": round(100 * inclusive[fn] / total, 1)}
                         for fn, n in own.most_common(top)]}


def write_flamegraph(stacks: Counter[tuple[str, ...]], svg: Path, title: str) -> None:
    """A plain SVG flame graph (root at the bottom), hover for names and shares."""
    tree: dict[str, Any] = {"n": 0, "kids": {}}
    for frames, n in stacks.items():
        node = tree
        node["n"] += n
        for f in frames:
            node = node["kids"].setdefault(f, {"n": 0, "kids": {}})
            node["n"] += n
    total = tree["n"] or 1
    width, row = 1200.0, 16
    rects: list[tuple[float, int, float, str, int]] = []
    depth_max = 0

    def walk(node: dict[str, Any], x: float, depth: int) -> None:
        nonlocal depth_max
        depth_max = max(depth_max, depth)
        for name, kid in sorted(node["kids"].items()):
            w = width * kid["n"] / total
            if w >= 0.5:
                rects.append((x, depth, w, name, kid["n"]))
                walk(kid, x, depth + 1)
            x += w

    walk(tree, 0.0, 0)
    height = (depth_max + 2) * row + 24
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height}" '
             'font-family="monospace" font-size="11">',
             f'<text x="4" y="14">{escape(title)}: {total} samples</text>']
    for x, depth, w, name, samples in rects:
        y = height - (depth + 1) * row
        hue = 20 + zlib.crc32(name.encode()) % 40
        label = escape(name[: int(w / 7)]) if w > 60 else ""
        parts.append(f'<g><title>{escape(name)} ({samples} samples, '
                     f'{100 * samples / total:.1f}%)</title><rect x="{x:.1f}" y="{y}" '
                     f'width="{w:.1f}" height="{row - 1}" fill="hsl({hue},80%,60%)"/>'
                     f'<text x="{x + 2:.1f}" y="{y + 11}">{label}</text></g>')
    parts.append("</svg>")
    svg.write_text("\n".join(parts) + "\n")
