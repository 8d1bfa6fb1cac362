"""Runs and times the steps of both sides, ours and restic's, round by round.

One runner for every step of both sides (and for ``scripts/bench
replication``, which extends it): it alone touches the page cache and the
environment, so both sides always get the same treatment.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.measure import BenchFailed, log
from bench.profiles import profiler, render_profile

ROOT = Path(__file__).resolve().parent.parent
RESTIC_PASSWORD = "bench-password-not-secret"


@dataclass
class Step:
    """One timed process: wall seconds (start to data on disk) and what it said."""

    wall: float
    rss_mib: float = 0.0
    out: dict[str, Any] = field(default_factory=dict)


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
