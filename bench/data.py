"""``scripts/bench data``: our data path against restic on the same corpus, in one run.

Cases (each ``{"ours_s", "restic_s", "speedup"}``): ``disk_full``,
``disk_incremental`` (block-hash scan), ``disk_incremental_cbt`` (reflink
changed-block tracking on a loop-mounted XFS), ``tree_full``,
``tree_incremental``, ``restore_disk``, ``restore_tree``; then
``stored_bytes`` (du of each repository after both backups of both corpora),
``agent_peak_rss_mib`` (the largest of our worker processes) and ``targets``.

Ours runs two ways, each into its own vault, and both are reported. As a
fresh process (``ours_s``, ``speedup``: the headline): each operation is a
fresh ``python -m bench.data_worker`` process timed from the outside, as
restic is. As a running agent (``ours_running_s``, ``speedup_running``): one
``bench.data_worker serve`` process for the whole run takes each operation
as a request, timed from the request to its answer plus the final sync;
that is how a deployed agent works (it runs every task in its long-lived
process), without paying interpreter start-up and imports per task. Both
use two workers (restic gets
the machine's cores; the reference machine has two) and bytecode cached as
an installed agent has it. Ours and restic alternate which goes first, case
by case and round by round (``--repeat N`` reports medians: one round on a
shared machine moves by 10-20%). Every step is timed until its data is on disk (a
``sync`` after the process, inside the timing), because our storage fsyncs
and restic's restore does not. As root the page cache is dropped before
every step and then both programs' code is loaded again untimed, so both read
their *data* cold and neither pays for a cold interpreter or binary; without
root both run warm, their sources read once just before each step.

``--encrypted`` makes our vault encrypted (AES-256-GCM, keys wrapped by a
bench KEK standing in for the key service; restic always encrypts) and runs
each first backup four times, each into a fresh vault, timed the same way:
plain, encrypted (the case itself), encrypted, plain.
``encrypted_vs_plain_first_backup`` is the encrypted throughput over the
unencrypted one (mean plain time over mean encrypted time; target >= 0.85),
per case in ``encrypted_vs_plain_first_backup_cases``.

Every restore, ours and restic's, is compared with its source (disk: BLAKE3
of the image; tree: types, modes, symlink targets and file contents); a
mismatch ends the run with an error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import stat
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

import blake3

from bench import corpus

ROOT = Path(__file__).resolve().parent.parent
RESTIC_PASSWORD = "bench-password-not-secret"
CASES = ["disk_full", "disk_incremental", "disk_incremental_cbt", "tree_full",
         "tree_incremental", "restore_disk", "restore_tree"]
TARGETS = {"disk_full": 3.0, "disk_incremental": 5.0, "disk_incremental_cbt": 20.0,
           "tree_full": 1.5, "tree_incremental": 3.0, "restore_disk": 1.0,
           "restore_tree": 1.0}
RSS_TARGET_MIB = 150.0
ENCRYPTED_RATIO_TARGET = 0.85
LABELS = {"disk_full": "disk, first backup", "disk_incremental": "disk, incremental (hashes)",
          "disk_incremental_cbt": "disk, incremental (CBT/XFS)",
          "tree_full": "tree, first backup", "tree_incremental": "tree, incremental",
          "restore_disk": "disk restore", "restore_tree": "tree restore"}


class BenchFailed(Exception):
    """A step failed or restored wrong data: the numbers would mean nothing."""


def log(text: str) -> None:
    print(text, flush=True)


# -- measuring -----------------------------------------------------------------------------------

def du(path: Path) -> int:
    """Bytes allocated on disk, as ``du`` counts them (sparse files count
    what they hold, not their length)."""
    total = 0
    for p in path.rglob("*"):
        st = p.lstat()
        if stat.S_ISREG(st.st_mode):
            total += st.st_blocks * 512
    return total


def file_hash(path: Path) -> str:
    """Read, not mmap'd: a 2 GiB mapping would swell this process, and a
    worker spawned afterwards could inherit that peak in its ru_maxrss."""
    h = blake3.blake3(max_threads=blake3.blake3.AUTO)
    with open(path, "rb") as fh:
        while block := fh.read(16 << 20):
            h.update(block)
    return h.hexdigest()


def _entries(root: Path) -> dict[str, os.stat_result]:
    found: dict[str, os.stat_result] = {}
    stack = [root]
    while stack:
        here = stack.pop()
        with os.scandir(here) as listing:
            for entry in listing:
                st = entry.stat(follow_symlinks=False)
                found[os.path.relpath(entry.path, root)] = st
                if stat.S_ISDIR(st.st_mode):
                    stack.append(Path(entry.path))
    return found


def _same_content(a: Path, b: Path) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True


def tree_differences(source: Path, restored: Path, limit: int = 10) -> list[str]:
    """What differs between two trees: names, types, permission bits, symlink
    targets, file contents (never following links); empty when identical."""
    a, b = _entries(source), _entries(restored)
    diffs = [f"missing {p}" for p in sorted(a.keys() - b.keys())]
    diffs += [f"extra {p}" for p in sorted(b.keys() - a.keys())]
    for rel in sorted(a.keys() & b.keys()):
        if len(diffs) >= limit:
            break
        sa, sb = a[rel], b[rel]
        if stat.S_IFMT(sa.st_mode) != stat.S_IFMT(sb.st_mode):
            diffs.append(f"type of {rel}")
        elif stat.S_ISLNK(sa.st_mode):
            if os.readlink(source / rel) != os.readlink(restored / rel):
                diffs.append(f"link target of {rel}")
        elif stat.S_IMODE(sa.st_mode) != stat.S_IMODE(sb.st_mode):
            diffs.append(f"mode of {rel}: {sa.st_mode:o} != {sb.st_mode:o}")
        elif stat.S_ISREG(sa.st_mode) and (sa.st_size != sb.st_size or not _same_content(
                source / rel, restored / rel)):
            diffs.append(f"content of {rel}")
    return diffs[:limit]


@dataclass
class Step:
    """One timed process: wall seconds (start to data on disk) and what it said."""

    wall: float
    rss_mib: float = 0.0
    out: dict[str, Any] = field(default_factory=dict)


# -- running both sides --------------------------------------------------------------------------

class Runner:
    """Runs and times single steps of either side; it alone touches the
    page cache, so both sides always get the same treatment."""

    def __init__(self, work: Path, *, restic: bool, cold: bool, profile: Path | None) -> None:
        self.work = work
        self.use_restic = restic
        self.cold = cold
        self.profile = profile
        self.peak_rss = 0.0
        self.peak_rss_running = 0.0
        self._agent: subprocess.Popen[bytes] | None = None
        self.agent_log = work / "running-agent.log"
        self.ours_first = True
        self.profiles: dict[str, dict[str, Any]] = {}
        self.env = {**os.environ, "RESTIC_PASSWORD": RESTIC_PASSWORD, "PYTHONPATH": str(ROOT),
                    "RESTIC_CACHE_DIR": str(work / "restic-cache")}
        for name in ("RESTIC_REPOSITORY", "RESTIC_PASSWORD_FILE", "RESTIC_PASSWORD_COMMAND",
                     "RESTIC_PACK_SIZE", "RESTIC_COMPRESSION"):
            self.env.pop(name, None)
        # An installed agent runs from cached bytecode; compiling every module
        # in every worker (PYTHONDONTWRITEBYTECODE, set in some shells) would
        # charge ours ~50 ms a step that no deployment pays. The cache goes to
        # the work dir, never into the source tree.
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)
        self.env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")

    def settle(self, sources: list[Path]) -> None:
        """Puts both programs on equal footing before a timed step: data cold
        and code warm as root, everything warm otherwise."""
        os.sync()
        if self.cold:
            Path("/proc/sys/vm/drop_caches").write_text("3\n")
        subprocess.run([sys.executable, "-c", "import bench.data_worker"], env=self.env,
                       cwd=ROOT, check=True)
        if self.use_restic:
            subprocess.run(["restic", "version"], env=self.env, capture_output=True, check=True)
        if not self.cold:
            for source in sources:
                for p in [source] if source.is_file() else source.rglob("*"):
                    if p.is_file() and not p.is_symlink():
                        with open(p, "rb") as fh:
                            while fh.read(8 << 20):
                                pass

    def ours(self, label: str, *args: str, sources: list[Path], profile: bool = True) -> Step:
        """Runs one operation in a fresh worker and times it from outside,
        start-up and final sync included."""
        self.settle(sources)
        argv = [sys.executable, "-m", "bench.data_worker", *args]
        raw = None
        if self.profile is not None and profile:
            raw = self.profile / f"{label}.txt"
            argv = [profiler(), "record", "--format", "raw", "--rate", "250", "--output",
                    str(raw), "--", *argv]
        with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
            t0 = time.perf_counter()
            proc = subprocess.Popen(argv, stdout=stdout, stderr=stderr, env=self.env, cwd=ROOT)
            proc.wait()
            os.sync()
            wall = time.perf_counter() - t0
            stdout.seek(0)
            stderr.seek(0)
            said, errors = stdout.read().decode(errors="replace"), stderr.read()
        if proc.returncode != 0:
            raise BenchFailed(f"our {args[0]} failed ({proc.returncode}):\n"
                              f"{errors.decode(errors='replace')[-3000:]}")
        # the worker's report is its last JSON line (py-spy may print after it)
        reports = [line for line in said.splitlines() if line.startswith("{")]
        if not reports:
            raise BenchFailed(f"our {args[0]} printed no report: {said[-2000:]!r}")
        out: dict[str, Any] = json.loads(reports[-1])
        rss = float(out["peak_rss_mib"])  # the worker's own VmHWM (see data_worker)
        self.peak_rss = max(self.peak_rss, rss)
        if raw is not None and raw.exists():
            self.profiles[label] = render_profile(raw, raw.with_suffix(".svg"), label)
        return Step(wall, rss, out)

    def running(self, *args: str, sources: list[Path]) -> Step:
        """Runs one operation in the running agent (started on first use) and
        times it from the request to the answer, plus the final sync."""
        if self._agent is None or self._agent.poll() is not None:
            with open(self.agent_log, "ab") as err:
                self._agent = subprocess.Popen(
                    [sys.executable, "-m", "bench.data_worker", "serve"],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, env=self.env,
                    cwd=ROOT)
        agent = self._agent
        assert agent.stdin is not None and agent.stdout is not None
        self.settle(sources)
        t0 = time.perf_counter()
        agent.stdin.write((json.dumps(list(args)) + "\n").encode())
        agent.stdin.flush()
        line = agent.stdout.readline()
        os.sync()
        wall = time.perf_counter() - t0
        if not line:
            said = self.agent_log.read_text(errors="replace")[-3000:]
            raise BenchFailed(f"the running agent died during {args[0]}:\n{said}")
        out: dict[str, Any] = json.loads(line)
        if "error" in out:
            raise BenchFailed(f"the running agent's {args[0]} failed:\n{out['error'][-3000:]}")
        rss = float(out["peak_rss_mib"])
        self.peak_rss_running = max(self.peak_rss_running, rss)
        return Step(wall, rss, out)

    def close(self) -> None:
        if self._agent is not None:
            assert self._agent.stdin is not None
            self._agent.stdin.close()
            try:
                self._agent.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._agent.kill()
                self._agent.wait()
            self._agent = None

    def restic(self, repo: Path, *args: str, sources: list[Path]) -> Step:
        self.settle(sources)
        t0 = time.perf_counter()
        done = subprocess.run(["restic", "-q", "-r", str(repo), *args], capture_output=True,
                              text=True, env=self.env, check=False)
        os.sync()
        wall = time.perf_counter() - t0
        if done.returncode != 0:
            raise BenchFailed(f"restic {args[0]} failed:\n{done.stderr[-3000:]}")
        return Step(wall)

    def pair(self, results: dict[str, Any], name: str, ours: Callable[[], Step],
             restic: Callable[[], Step] | None, running: Callable[[], Step] | None = None,
             ) -> tuple[Step, Step | None, Step | None]:
        """Runs every side of a case, alternating which of ours and restic goes
        first (the running agent always in between) so that whatever drifts
        on a noisy machine falls on each side alike."""
        first_ours = self.ours_first or restic is None
        self.ours_first = not self.ours_first
        theirs: Step | None = None
        agent: Step | None = None
        if first_ours:
            mine = ours()
            agent = running() if running is not None else None
            if restic is not None:
                theirs = restic()
        else:
            assert restic is not None
            theirs = restic()
            agent = running() if running is not None else None
            mine = ours()
        record(results, name, mine, theirs, "ours" if first_ours else "restic", agent)
        return mine, theirs, agent


def record(results: dict[str, Any], name: str, mine: Step, theirs: Step | None,
           first: str, agent: Step | None = None) -> None:
    entry: dict[str, Any] = {
        "ours_s": round(mine.wall, 3),
        "restic_s": round(theirs.wall, 3) if theirs else None,
        "speedup": round(theirs.wall / mine.wall, 2) if theirs and mine.wall > 0 else None,
        "ours_in_process_s": round(float(mine.out.get("seconds", 0.0)), 3),
        "ours_rss_mib": round(mine.rss_mib, 1), "first": first}
    stats = mine.out.get("stats", {})
    for key in ("bytes_read", "bytes_sent", "bytes_new", "bytes_written", "files_unchanged"):
        if key in stats:
            entry[key] = stats[key]
    if "method" in mine.out:
        entry["method"] = mine.out["method"]
    running = ""
    if agent is not None:
        entry.update({
            "ours_running_s": round(agent.wall, 3),
            "speedup_running": round(theirs.wall / agent.wall, 2)
            if theirs and agent.wall > 0 else None,
            "ours_running_in_process_s": round(float(agent.out.get("seconds", 0.0)), 3),
            "ours_running_rss_mib": round(agent.rss_mib, 1)})
        if "method" in agent.out:
            entry["method_running"] = agent.out["method"]
        if "full_walk_reason" in agent.out:
            entry["full_walk_reason_running"] = agent.out["full_walk_reason"]
        if "dirs_unchanged_by_journal" in agent.out.get("stats", {}):
            entry["dirs_unchanged_by_journal_running"] = \
                agent.out["stats"]["dirs_unchanged_by_journal"]
        speed_running = (f"{entry['speedup_running']:6.2f}x" if entry["speedup_running"]
                         else "     -")
        running = f"   running agent {agent.wall:7.2f} s {speed_running}"
    results[name] = entry
    speed = f"{entry['speedup']:6.2f}x" if entry["speedup"] else "     -"
    restic_s = f"{theirs.wall:8.2f} s" if theirs else "       -  "
    log(f"  {name:22s} ours {mine.wall:7.2f} s   restic {restic_s}   {speed}{running}")


# -- tools ---------------------------------------------------------------------------------------

def apt_install(package: str) -> None:
    """Debian's package, as the brief of this benchmark says; update only if
    the first try cannot find it."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    log(f"==> installing {package} with apt-get")
    if subprocess.run(["apt-get", "install", "-y", "-q", package], env=env,
                      capture_output=True, check=False).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=False)
        subprocess.run(["apt-get", "install", "-y", "-q", package], env=env,
                       capture_output=True, check=False)


def ensure_restic() -> str:
    if shutil.which("restic") is None:
        apt_install("restic")
    if shutil.which("restic") is None:
        raise BenchFailed("restic is missing and apt-get could not install it "
                          "(use --no-restic to run ours only)")
    done = subprocess.run(["restic", "version"], capture_output=True, text=True, check=True)
    return done.stdout.strip()


def profiler() -> str:
    found = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable)
                                                                      .parent))
    if found is None:
        raise BenchFailed("--profile needs py-spy (pip install py-spy)")
    return found


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=False)


@contextlib.contextmanager
def xfs_mount(work: Path, size: int) -> Iterator[tuple[Path | None, str]]:
    """A loop-mounted XFS with reflink, or ``(None, reason)``; the mount and
    the loop device are always released, even on Ctrl-C."""
    if os.geteuid() != 0:
        yield None, "mounting a loop device needs root"
        return
    if shutil.which("mkfs.xfs") is None:
        apt_install("xfsprogs")
    if shutil.which("mkfs.xfs") is None:
        yield None, "mkfs.xfs is missing and apt-get could not install xfsprogs"
        return
    image, mount = work / "xfs.img", work / "xfs"
    with open(image, "wb") as fh:
        fh.truncate(size)
    mount.mkdir(exist_ok=True)
    device = ""
    mounted = False
    try:
        made = _run("mkfs.xfs", "-q", "-f", "-m", "reflink=1", str(image))
        if made.returncode != 0:
            yield None, f"mkfs.xfs failed: {made.stderr.strip()}"
            return
        attached = _run("losetup", "--find", "--show", str(image))
        if attached.returncode != 0:
            yield None, f"losetup failed: {attached.stderr.strip()}"
            return
        device = attached.stdout.strip()
        done = _run("mount", device, str(mount))
        if done.returncode != 0:
            yield None, f"mount failed: {done.stderr.strip()}"
            return
        mounted = True
        yield mount, ""
    finally:
        if mounted and _run("umount", str(mount)).returncode != 0:
            _run("umount", "-l", str(mount))
        if device:
            _run("losetup", "-d", device)
        image.unlink(missing_ok=True)


# -- profiles ------------------------------------------------------------------------------------

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


# -- the cases -----------------------------------------------------------------------------------

class Bench:
    def __init__(self, args: argparse.Namespace, work: Path, *, ours_first: bool = True
                 ) -> None:
        self.args = args
        self.work = work
        self.scale = float(args.scale)
        cold = os.geteuid() == 0 and not args.warm
        profile = Path(args.profile).resolve() if args.profile else None
        if profile is not None:
            profile.mkdir(parents=True, exist_ok=True)
        self.r = Runner(work, restic=not args.no_restic, cold=cold, profile=profile)
        self.r.ours_first = ours_first
        self.encrypted = bool(args.encrypted)
        if self.encrypted:
            kek = work / "bench.kek"
            kek.write_bytes(os.urandom(32))
            kek.chmod(0o600)
            self.r.env["CBR_BENCH_KEK_FILE"] = str(kek)
        self.vault = work / "ours"
        self.agent_vault = work / "ours-agent"
        self.restic_repo = work / "restic"
        self.results: dict[str, Any] = {
            "scale": self.scale,
            "cache": ("cold data: page cache dropped before every step, then both programs' "
                      "code loaded untimed") if cold else
                     "warm: sources read just before every step (no root, or --warm)",
            "timing": "wall time of one process per step, start-up and a final sync included",
            "ours": "one `python -m bench.data_worker` process per step, 2 workers, bytecode "
                    "cached in the work dir",
            "ours_running": "one `python -m bench.data_worker serve` process for the whole "
                            "run (a running agent), 2 workers, its own vault",
            "workers": 2, "cpus": os.cpu_count(),
            "vault": "encrypted (AES-256-GCM)" if self.encrypted else "unencrypted"}

    def restic(self, *args: str, sources: list[Path], repo: Path | None = None,
               ) -> Callable[[], Step] | None:
        if not self.r.use_restic:
            return None
        target = repo or self.restic_repo
        return lambda: self.r.restic(target, *args, sources=sources)

    def run(self) -> dict[str, Any]:
        if self.r.use_restic:
            self.results["restic"] = {
                "version": ensure_restic(),
                "options": "defaults (repository v2, compression auto), its cache in the "
                           "work dir, restore without --sparse (0.14 has none)"}
        log(f"==> corpus (scale {self.scale}) in {self.work}")
        t0 = time.perf_counter()
        disk, tree = self.work / "disk.img", self.work / "tree"
        only = self.args.only
        layout = corpus.make_disk(disk, self.scale) if only != "tree" else None
        tlayout = corpus.make_tree(tree, self.scale) if only != "disk" else None
        if layout is not None:
            self.results["disk"] = {"size": layout.size, "used": layout.used}
            log(f"  disk {layout.size >> 20} MiB, {layout.used >> 20} MiB used")
        if tlayout is not None:
            self.results["tree"] = {"files": tlayout.files, "bytes": tlayout.bytes,
                                    "symlinks": tlayout.symlinks}
            log(f"  tree {tlayout.files} files, {tlayout.bytes >> 20} MiB, "
                f"{tlayout.symlinks} symlinks")
        log(f"  made in {time.perf_counter() - t0:.0f} s; {self.results['cache']}")
        self.init(self.vault, self.restic_repo, self.agent_vault)
        try:
            if layout is not None:
                self.disk_cases(disk)
            if tlayout is not None:
                self.tree_cases(tree)
            self.results["stored_bytes"] = {
                "ours": du(self.vault),
                "restic": du(self.restic_repo) if self.r.use_restic else None}
            if layout is not None:
                self.cbt_case(layout)
        finally:
            self.r.close()
        if self.encrypted:
            self.results.update(encryption_ratio(self.results))
        self.results["agent_peak_rss_mib"] = round(self.r.peak_rss, 1)
        self.results["agent_peak_rss_mib_running"] = round(self.r.peak_rss_running, 1)
        if self.r.profiles:
            self.results["profile"] = {"dir": str(self.args.profile), "steps": self.r.profiles}
        return self.results

    def init(self, vault: Path, restic_repo: Path, agent_vault: Path) -> None:
        for where in (vault, agent_vault):
            self.r.ours("init", "init", str(where), *(["--encrypted"] if self.encrypted else []),
                        sources=[], profile=False)
        if self.r.use_restic:
            self.r.restic(restic_repo, "init", sources=[])

    def disk_cases(self, disk: Path) -> None:
        log("==> disk")
        r, res, v = self.r, self.results, str(self.vault)
        plain = self.plain_first_backup("disk_full", "disk-backup", disk)
        a = str(self.agent_vault)
        r.pair(res, "disk_full",
               lambda: r.ours("disk_full", "disk-backup", v, str(disk), "disk1",
                              sources=[disk]),
               self.restic("backup", "--tag", "disk", str(disk), sources=[disk]),
               lambda: r.running("disk-backup", a, str(disk), "disk1", sources=[disk]))
        plain()
        corpus.mutate_disk(disk, self.scale)
        r.pair(res, "disk_incremental",
               lambda: r.ours("disk_incremental", "disk-backup", v, str(disk), "disk2",
                              "--parent", "disk1", sources=[disk]),
               self.restic("backup", "--tag", "disk", str(disk), sources=[disk]),
               lambda: r.running("disk-backup", a, str(disk), "disk2", "--parent", "disk1",
                                 sources=[disk]))
        mine, theirs = self.work / "restored-disk.img", self.work / "restic-restore-disk"
        agents = self.work / "restored-disk-agent.img"
        r.pair(res, "restore_disk",
               lambda: r.ours("restore_disk", "restore", v, "disk2", str(mine),
                              sources=[self.vault]),
               self.restic("restore", "latest", "--tag", "disk", "--target", str(theirs),
                           sources=[self.restic_repo]),
               lambda: r.running("restore", a, "disk2", str(agents), sources=[self.agent_vault]))
        want = file_hash(disk)
        if file_hash(mine) != want:
            raise BenchFailed("our disk restore differs from the source image")
        if file_hash(agents) != want:
            raise BenchFailed("the running agent's disk restore differs from the source image")
        mine.unlink()
        agents.unlink()
        if r.use_restic:
            if file_hash(theirs / disk.relative_to("/")) != want:
                raise BenchFailed("restic's disk restore differs from the source image")
            shutil.rmtree(theirs)
        log(f"  disk restores match the source ({'ours and restic' if r.use_restic else 'ours'})")

    def tree_cases(self, tree: Path) -> None:
        log("==> tree")
        r, res, v = self.r, self.results, str(self.vault)
        plain = self.plain_first_backup("tree_full", "tree-backup", tree)
        a = str(self.agent_vault)
        r.pair(res, "tree_full",
               lambda: r.ours("tree_full", "tree-backup", v, str(tree), "tree1", sources=[tree]),
               self.restic("backup", "--tag", "tree", str(tree), sources=[tree]),
               lambda: r.running("tree-backup", a, str(tree), "tree1", sources=[tree]))
        plain()
        res["tree_mutation"] = corpus.mutate_tree(tree, self.scale)
        r.pair(res, "tree_incremental",
               lambda: r.ours("tree_incremental", "tree-backup", v, str(tree), "tree2",
                              "--parent", "tree1", sources=[tree]),
               self.restic("backup", "--tag", "tree", str(tree), sources=[tree]),
               lambda: r.running("tree-backup", a, str(tree), "tree2", "--parent", "tree1",
                                 sources=[tree]))
        mine, theirs = self.work / "restored-tree", self.work / "restic-restore-tree"
        agents = self.work / "restored-tree-agent"
        r.pair(res, "restore_tree",
               lambda: r.ours("restore_tree", "restore", v, "tree2", str(mine),
                              sources=[self.vault]),
               self.restic("restore", "latest", "--tag", "tree", "--target", str(theirs),
                           sources=[self.restic_repo]),
               lambda: r.running("restore", a, "tree2", str(agents), sources=[self.agent_vault]))
        for label, restored in (("our", mine), ("the running agent's", agents)):
            diffs = tree_differences(tree, restored)
            if diffs:
                raise BenchFailed(f"{label} tree restore differs from the source: "
                                  + "; ".join(diffs))
            shutil.rmtree(restored)
        if r.use_restic:
            diffs = tree_differences(tree, theirs / tree.relative_to("/"))
            if diffs:
                raise BenchFailed("restic's tree restore differs: " + "; ".join(diffs))
            shutil.rmtree(theirs)
        log("  tree restores match the source in types, modes, links and contents "
            f"({'ours and restic' if r.use_restic else 'ours'})")

    def plain_first_backup(self, case: str, op: str, source: Path) -> Callable[[], None]:
        """With --encrypted: the first backup also into an unencrypted vault,
        for the encrypted/plain throughput ratio, in the order plain, encrypted
        (the case itself, run between this call and the returned function),
        encrypted again, plain again, each into a fresh vault. The first step
        after a new corpus runs slower whichever it is; the symmetric order
        cancels that and any drift, where alternating by round would not with
        an odd number of rounds."""
        if not self.encrypted:
            return lambda: None
        times: dict[str, list[Step]] = {"plain": [], "encrypted": []}

        def step(kind: str) -> None:
            n = len(times[kind])
            vault = self.work / f"ratio-{case}-{kind}-{n}"
            if kind == "encrypted":
                self.r.ours("init", "init", str(vault), "--encrypted", sources=[],
                            profile=False)
            else:
                self.r.ours("init", "init", str(vault), sources=[], profile=False)
            done = self.r.ours(f"{case}_{kind}_{n}", op, str(vault), str(source),
                               f"{case}-{kind}", sources=[source], profile=False)
            times[kind].append(done)
            log(f"  {case:22s} again into a fresh {kind} vault {done.wall:7.2f} s")
            shutil.rmtree(vault)

        def finish() -> None:
            step("encrypted")
            step("plain")
            mine = times["encrypted"]
            plain = times["plain"]
            entry = self.results[case]
            entry["ratio_steps"] = {
                "plain_s": [round(s.wall, 3) for s in plain],
                "encrypted_s": [round(entry["ours_s"], 3), *(round(s.wall, 3) for s in mine)]}
            entry["plain_s"] = round(sum(s.wall for s in plain) / len(plain), 3)
            entry["encrypted_s"] = round((entry["ours_s"] + sum(s.wall for s in mine))
                                         / (1 + len(mine)), 3)
            entry["plain_in_process_s"] = round(
                sum(float(s.out["seconds"]) for s in plain) / len(plain), 3)
            entry["encrypted_in_process_s"] = round(
                (entry["ours_in_process_s"] + sum(float(s.out["seconds"]) for s in mine))
                / (1 + len(mine)), 3)

        step("plain")
        return finish

    def cbt_case(self, layout: corpus.DiskLayout) -> None:
        """The same disk on XFS: a first backup of each (untimed for the table,
        kept as extra numbers), the same mutation, then both incrementals;
        ours must have used FIEMAP, and its restore must match."""
        log("==> disk on a loop-mounted XFS with reflink (changed-block tracking)")
        with xfs_mount(self.work, 2 * layout.size + (512 << 20)) as (mount, reason):
            if mount is None:
                log(f"  skipped: {reason}")
                self.results["disk_incremental_cbt"] = {"skipped": reason}
                return
            r, res = self.r, self.results
            xdisk = mount / "disk.img"
            corpus.make_disk(xdisk, self.scale)
            xvault, xrestic = self.work / "ours-xfs", self.work / "restic-xfs"
            xagent = self.work / "ours-xfs-agent"
            self.init(xvault, xrestic, xagent)
            scratch: dict[str, Any] = {}
            r.pair(scratch, "disk_full_xfs",
                   lambda: r.ours("disk_full_xfs", "disk-backup", str(xvault), str(xdisk), "x1",
                                  "--cbt", sources=[xdisk]),
                   self.restic("backup", str(xdisk), sources=[xdisk], repo=xrestic),
                   lambda: r.running("disk-backup", str(xagent), str(xdisk), "x1", "--cbt",
                                     sources=[xdisk]))
            corpus.mutate_disk(xdisk, self.scale)
            mine, _, agent = r.pair(
                res, "disk_incremental_cbt",
                lambda: r.ours("disk_incremental_cbt", "disk-backup", str(xvault), str(xdisk),
                               "x2", "--parent", "x1", "--cbt", sources=[xdisk]),
                self.restic("backup", str(xdisk), sources=[xdisk], repo=xrestic),
                lambda: r.running("disk-backup", str(xagent), str(xdisk), "x2", "--parent",
                                  "x1", "--cbt", sources=[xdisk]))
            res["disk_incremental_cbt"]["first_backup_on_xfs"] = scratch["disk_full_xfs"]
            for step in (mine, agent):
                if step is not None and step.out.get("method") != "cbt":
                    raise BenchFailed(f"the XFS incremental used {step.out.get('method')} "
                                      f"(snapshot {step.out.get('snapshot')}), not "
                                      "changed-block tracking")
            want = file_hash(xdisk)
            for label, where in (("our", xvault), ("the running agent's", xagent)):
                check = self.work / "restored-xfs.img"
                r.ours("restore_cbt", "restore", str(where), "x2", str(check), sources=[],
                       profile=False)
                if file_hash(check) != want:
                    raise BenchFailed(f"the restore of {label} CBT incremental differs from "
                                      "the image")
                check.unlink()
            log("  the CBT incremental restores to the mutated image")


FIRST_BACKUPS = ("disk_full", "tree_full")


def encryption_ratio(results: dict[str, Any]) -> dict[str, Any]:
    """Encrypted over unencrypted throughput of the first backups (plain time
    over encrypted time, same bytes): per case, and over all of them."""
    cases: dict[str, Any] = {}
    plain_total = encrypted_total = 0.0
    for case in FIRST_BACKUPS:
        entry = results.get(case, {})
        if "plain_s" not in entry:
            continue
        plain, enc = float(entry["plain_s"]), float(entry["encrypted_s"])
        enc_in = float(entry["encrypted_in_process_s"])
        cases[case] = {"plain_s": plain, "encrypted_s": enc, "steps": entry["ratio_steps"],
                       "ratio": round(plain / enc, 3) if enc > 0 else None,
                       "in_process_ratio": round(float(entry["plain_in_process_s"]) / enc_in, 3)
                       if enc_in > 0 else None}
        plain_total += plain
        encrypted_total += enc
    ratio = round(plain_total / encrypted_total, 3) if encrypted_total > 0 else None
    return {"encrypted_vs_plain_first_backup": ratio,
            "encrypted_vs_plain_first_backup_cases": cases}


def combine(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One result from several rounds: the median of each side per case (the
    speedup is the ratio of the medians), every round's pair kept beside it;
    the largest peak RSS and stored bytes of the last round."""
    if len(rounds) == 1:
        return rounds[0]
    out = dict(rounds[-1])
    out["rounds"] = len(rounds)
    for name in CASES:
        entries = [r[name] for r in rounds if name in r and "skipped" not in r[name]]
        if not entries:
            continue
        ours = statistics.median(e["ours_s"] for e in entries)
        theirs = [e["restic_s"] for e in entries if e.get("restic_s") is not None]
        restic = statistics.median(theirs) if theirs else None
        merged = dict(entries[-1])
        merged.update({"ours_s": round(ours, 3),
                       "restic_s": round(restic, 3) if restic is not None else None,
                       "speedup": round(restic / ours, 2) if restic and ours > 0 else None,
                       "ours_in_process_s": round(statistics.median(
                           e["ours_in_process_s"] for e in entries), 3),
                       "runs": [[e["ours_s"], e.get("restic_s")] for e in entries]})
        agent = [e["ours_running_s"] for e in entries if "ours_running_s" in e]
        if agent:
            running = statistics.median(agent)
            merged.update({
                "ours_running_s": round(running, 3),
                "speedup_running": round(restic / running, 2) if restic and running > 0
                else None,
                "ours_running_in_process_s": round(statistics.median(
                    e["ours_running_in_process_s"] for e in entries
                    if "ours_running_in_process_s" in e), 3),
                "runs_running": agent})
        merged.pop("first", None)
        out[name] = merged
    out["agent_peak_rss_mib"] = max(r["agent_peak_rss_mib"] for r in rounds)
    out["agent_peak_rss_mib_running"] = max(r.get("agent_peak_rss_mib_running", 0.0)
                                            for r in rounds)
    ratios = [r["encrypted_vs_plain_first_backup"] for r in rounds
              if r.get("encrypted_vs_plain_first_backup") is not None]
    if ratios:
        out["encrypted_vs_plain_first_backup"] = round(statistics.median(ratios), 3)
        out["encrypted_vs_plain_first_backup_runs"] = ratios
    return out


def targets(results: dict[str, Any], with_restic: bool) -> dict[str, Any]:
    """Which targets pass; ``pass`` is None where a case did not run (no
    restic, or no XFS) so a skip never reads as a pass or a fail."""
    out: dict[str, Any] = {}
    for name, want in TARGETS.items():
        entry = results.get(name, {})
        got = entry.get("speedup")
        running = entry.get("speedup_running")
        out[name] = {"target": f">= {want:g}x", "value": got,
                     "pass": None if got is None else got >= want,
                     "value_running": running,
                     "pass_running": None if running is None else running >= want}
        if "skipped" in entry:
            out[name]["skipped"] = entry["skipped"]
    sb = results.get("stored_bytes", {})
    out["stored_bytes"] = {"target": "ours <= restic", "value": sb,
                           "pass": (sb.get("ours", 0) <= sb["restic"]) if with_restic
                           and sb.get("restic") is not None else None}
    rss = results.get("agent_peak_rss_mib", 0.0)
    running_rss = results.get("agent_peak_rss_mib_running") or None
    out["agent_peak_rss_mib"] = {"target": f"<= {RSS_TARGET_MIB:g} MiB", "value": rss,
                                 "pass": rss <= RSS_TARGET_MIB, "value_running": running_rss,
                                 "pass_running": None if running_rss is None
                                 else running_rss <= RSS_TARGET_MIB}
    ratio = results.get("encrypted_vs_plain_first_backup")
    if ratio is not None:
        out["encrypted_vs_plain_first_backup"] = {
            "target": f">= {ENCRYPTED_RATIO_TARGET:g}", "value": ratio,
            "pass": ratio >= ENCRYPTED_RATIO_TARGET}
    return out


def table(results: dict[str, Any]) -> str:
    rows = ["| case | ours: new process | ours: running agent | restic | speedup "
            "(new process / running agent) | target | pass |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    mark = {True: "yes", False: "NO", None: "-"}

    def seconds(value: Any) -> str:
        return f"{value:.2f} s" if value is not None else "-"

    def times(value: Any) -> str:
        return f"{value:.2f}x" if value else "-"

    for name in CASES:
        e, t = results.get(name), results["targets"].get(name, {})
        if e is None:
            continue
        if "skipped" in e:
            rows.append(f"| {LABELS[name]} | skipped: {e['skipped']} | | | | | - |")
            continue
        rows.append(f"| {LABELS[name]} | {seconds(e['ours_s'])} | "
                    f"{seconds(e.get('ours_running_s'))} | {seconds(e.get('restic_s'))} | "
                    f"{times(e.get('speedup'))} / {times(e.get('speedup_running'))} | "
                    f"{t.get('target', '')} | {mark[t.get('pass')]} / "
                    f"{mark[t.get('pass_running')]} |")
    sb, t = results.get("stored_bytes", {}), results["targets"]
    if sb:
        restic = f"{sb['restic'] / 1e6:.0f} MB" if sb.get("restic") is not None else "-"
        rows.append(f"| stored bytes | {sb['ours'] / 1e6:.0f} MB | | {restic} | | "
                    f"ours <= restic | {mark[t['stored_bytes']['pass']]} |")
    rss = t["agent_peak_rss_mib"]
    running_rss = f"{rss['value_running']:.0f} MiB" if rss.get("value_running") else "-"
    rows.append(f"| agent peak RSS | {results['agent_peak_rss_mib']:.0f} MiB | {running_rss} "
                f"| | | <= 150 MiB | {mark[rss['pass']]} / {mark[rss.get('pass_running')]} |")
    if "encrypted_vs_plain_first_backup" in t:
        e = t["encrypted_vs_plain_first_backup"]
        rows.append(f"| encrypted / plain first-backup throughput | {e['value']:.2f} | | | | "
                    f"{e['target']} | {mark[e['pass']]} |")
    return "\n".join(rows)



def run_rounds(name: str, args: argparse.Namespace, work: Path,
               run: Callable[[bool], dict[str, Any]]) -> list[dict[str, Any]] | None:
    """``args.repeat`` rounds, each on a fresh work dir and with the other
    side first (``run(ours_first)``); None, said why, when one failed."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        rounds = []
        for n in range(args.repeat):
            if n:
                log(f"==> round {n + 1} of {args.repeat}")
                shutil.rmtree(work)
                work.mkdir()
                args.profile = None  # one profile is enough; keep later rounds unskewed
            rounds.append(run(n % 2 == 0))
    except BenchFailed as exc:
        log(f"scripts/bench {name}: FAILED: {exc}")
        return None
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return rounds

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/bench data", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", help="write the results here")
    p.add_argument("--work-dir", default=str(ROOT / ".bench-data"),
                   help="corpus and both repositories (removed first, and after unless --keep)")
    p.add_argument("--scale", type=float, default=1.0,
                   help="corpus size factor (1.0: a 2 GiB disk and 20,000 files)")
    p.add_argument("--no-restic", action="store_true", help="run our side only")
    p.add_argument("--keep", action="store_true", help="keep the work dir")
    p.add_argument("--only", choices=["disk", "tree"], help="run only these cases")
    p.add_argument("--encrypted", action="store_true",
                   help="our vault is encrypted; the first backups also run into an "
                   "unencrypted vault for encrypted_vs_plain_first_backup")
    p.add_argument("--repeat", type=int, default=1, metavar="N",
                   help="run everything N times on a fresh corpus and report medians "
                   "(each round starts with the other side first)")
    p.add_argument("--warm", action="store_true",
                   help="keep the page cache warm for both even as root")
    default_profiles = Path(tempfile.gettempdir()) / "cbr-bench-profiles"
    p.add_argument("--profile", nargs="?", const=str(default_profiles), default=None,
                   metavar="DIR", help="run our workers under py-spy (first round only); "
                   f"flame graphs (SVG) and raw stacks go to DIR (default {default_profiles}); "
                   "those timings include the sampling overhead")
    args = p.parse_args(argv)
    if args.scale <= 0 or args.repeat < 1:
        p.error("--scale must be positive and --repeat at least 1")
    work = Path(args.work_dir).resolve()
    rounds = run_rounds("data", args, work,
                        lambda ours_first: Bench(args, work, ours_first=ours_first).run())
    if rounds is None:
        return 1
    results = combine(rounds)
    results["targets"] = targets(results, not args.no_restic)
    log("")
    log(table(results))
    if "profile" in results:
        log(f"profiles (flame graphs in {results['profile']['dir']}), share of samples:")
        for label, prof in results["profile"]["steps"].items():
            log(f"  {label}: imports {prof['imports_pct']}%, waiting {prof['waiting_pct']}%; "
                + ", ".join(f"{t['function']} {t['self_pct']}%" for t in prof["top_self"][:4]))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
