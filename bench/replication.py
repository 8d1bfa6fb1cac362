"""``scripts/bench replication``: copying backups into another vault, ours against
``restic copy``, on the data benchmark's corpus, in one run.

Each round builds the corpus (``bench.corpus``: a disk image and a file
tree), backs both up into a source vault of ours and a source restic
repository, keeps what they held (the image's BLAKE3, a copy of the tree),
mutates them and backs them up again. Then, in two cases:

``first``
    Ours replicates the two first backups into an empty vault through the
    real wire path: an importer (``ImporterServicer`` with a grant, TLS with a
    self-signed certificate) in its own process on 127.0.0.1, and a sender
    process running ``replicate()`` over ``GrpcReplicaTarget``, one Import
    stream per backup. Restic copies the two first snapshots into an empty
    repository made with ``init --copy-chunker-params`` (so it deduplicates
    against the source's chunks as ours does by sharing the chunk-id key).
``incremental``
    The second backups / snapshots into the same targets.

Timing is bench/data.py's: each side is one process timed from the outside,
start-up and a final ``sync`` included, the page cache handled alike for
both (as root: dropped before every step, then both programs' code loaded
untimed), and the side that goes first alternates case by case and round by
round (``--repeat N`` reports medians). Our importer is started before the
clock (an importer agent is up long before a replication reaches it) and
opens the target vault inside the timed stream, as restic opens its target.

Bytes: ``*_wire_bytes`` is the sum over every request our sender put on the
stream of its serialized protobuf size plus gRPC's 5-byte message prefix
(chunks, ids asked about, manifests, the open step; not HTTP/2 or TLS
framing, not the importer's answers). ``incremental_new_chunk_bytes`` is the
stored length, in the source vault, of every blob the second backups reach
and the first ones do not: in our unencrypted source vault exactly the wire
form of those chunks (zstd frame or raw bytes). ``incremental_wire_ratio`` is
the first over the second (target <= 1.1: the incremental carries little
beyond the new chunks).

Every replica is restored from the target vault and compared with the corpus
as it was at its backup (disk: BLAKE3 of the image; tree: types, modes, links
and contents); a mismatch fails the run. Restic's copies are not restored.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from bench import corpus
from bench.measure import BenchFailed, file_hash, log, tree_differences
from bench.profiles import profiler, render_profile
from bench.replication_worker import make_tls
from bench.runner import ROOT, Runner, Step, run_rounds
from bench.tools import ensure_restic

CASES = ("first", "incremental")
SPEEDUP_TARGETS = {"first": 2.0}
WIRE_RATIO_TARGET = 1.1
TARGET_VAULT_ID = "bench-replica"


class ReplicationRunner(Runner):
    """bench/data.py's runner, with our replication worker's code warmed too."""

    def settle(self, sources: list[Path]) -> None:
        super().settle(sources)
        subprocess.run([sys.executable, "-c", "import bench.replication_worker"],
                       env=self.env, cwd=ROOT, check=True)


def _last_json(text: str, what: str) -> dict[str, Any]:
    lines = [line for line in text.splitlines() if line.startswith("{")]
    if not lines:
        raise BenchFailed(f"{what} printed no report: {text[-2000:]!r}")
    out: dict[str, Any] = json.loads(lines[-1])
    return out


class Importer:
    """Our importer process for one step: started and listening before the
    timed sender, stopped after it (optionally sampled by py-spy meanwhile)."""

    def __init__(self, runner: Runner, plan: Path, log: IO[bytes]) -> None:
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.replication_worker", "serve", str(plan)],
            stdout=subprocess.PIPE, stderr=self.log, env=runner.env, cwd=ROOT, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            raise BenchFailed(f"our importer did not start:\n{self._errors()}")
        listening = json.loads(line)
        self.port = int(listening["port"])
        self.cpu_at_start = float(listening["cpu_s"])
        self.cpu_s = 0.0
        self.spy: subprocess.Popen[bytes] | None = None

    def _errors(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-3000:]

    def sample(self, raw: Path) -> None:
        self.spy = subprocess.Popen([profiler(), "record", "--format", "raw", "--rate", "250",
                                     "--output", str(raw), "--pid", str(self.proc.pid)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)  # py-spy attaches before the sender starts

    def stop(self) -> None:
        if self.spy is not None:
            self.spy.send_signal(signal.SIGINT)
            self.spy.wait(timeout=60)
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line:
            self.cpu_s = float(json.loads(line)["cpu_s"]) - self.cpu_at_start
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.returncode not in (0, -signal.SIGTERM):
            raise BenchFailed(f"our importer ended with {self.proc.returncode}:\n"
                              f"{self._errors()}")


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path, *, ours_first: bool) -> None:
        self.args = args
        self.work = work
        self.scale = float(args.scale)
        cold = os.geteuid() == 0 and not args.warm
        self.profile = Path(args.profile).resolve() if args.profile else None
        if self.profile is not None:
            self.profile.mkdir(parents=True, exist_ok=True)
        self.r = ReplicationRunner(work, restic=True, cold=cold, profile=None)
        self.ours_first = ours_first
        self.source = work / "ours-source"
        self.target = work / "ours-target"
        self.restic_source = work / "restic-source"
        self.restic_target = work / "restic-target"
        self.password_file = work / "restic-password"
        self.plan = work / "plan.json"
        self.profiles: dict[str, Any] = {}
        self.results: dict[str, Any] = {
            "scale": self.scale, "cpus": os.cpu_count(),
            "cache": ("cold data: page cache dropped before every step, then both programs' "
                      "code loaded untimed") if cold else "warm (no root, or --warm)",
            "timing": "wall time of the sending process (ours) / restic copy, start-up and a "
                      "final sync included; our importer runs in its own process, started "
                      "before the clock",
            "wire": "TLS (self-signed P-256 certificate) on 127.0.0.1"}

    # -- steps ----------------------------------------------------------------------------------

    def worker(self, *args: str) -> dict[str, Any]:
        """An untimed step of our replication worker."""
        done = subprocess.run([sys.executable, "-m", "bench.replication_worker", *args],
                              capture_output=True, text=True, env=self.r.env, cwd=ROOT,
                              check=False)
        if done.returncode != 0:
            raise BenchFailed(f"replication_worker {args[0]} failed:\n{done.stderr[-3000:]}")
        return _last_json(done.stdout, f"replication_worker {args[0]}")

    def restic_json(self, repo: Path, *args: str) -> Any:
        done = subprocess.run(["restic", "-q", "-r", str(repo), *args, "--json"],
                              capture_output=True, text=True, env=self.r.env, check=False)
        if done.returncode != 0:
            raise BenchFailed(f"restic {args[0]} failed:\n{done.stderr[-3000:]}")
        return json.loads(done.stdout)

    def ours_replicate(self, step: str) -> Step:
        """Importer up, page cache settled, then the sender timed until sync."""
        with tempfile.TemporaryFile() as importer_log:
            return self._ours_replicate(step, Importer(self.r, self.plan, importer_log))

    def _ours_replicate(self, step: str, importer: Importer) -> Step:
        try:
            self.r.settle([self.source])
            argv = [sys.executable, "-m", "bench.replication_worker", "send", str(self.plan),
                    str(self.source), str(importer.port), step]
            raw = None
            if self.profile is not None:
                raw = self.profile / f"{step}-sender.txt"
                argv = [profiler(), "record", "--format", "raw", "--rate", "250", "--output",
                        str(raw), "--", *argv]
                importer.sample(self.profile / f"{step}-importer.txt")
            with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
                t0 = time.perf_counter()
                proc = subprocess.Popen(argv, stdout=out, stderr=err, env=self.r.env, cwd=ROOT)
                proc.wait()
                os.sync()
                wall = time.perf_counter() - t0
                out.seek(0)
                err.seek(0)
                said, errors = out.read().decode(errors="replace"), err.read()
            if proc.returncode != 0:
                raise BenchFailed(f"our sender failed ({proc.returncode}):\n"
                                  f"{errors.decode(errors='replace')[-3000:]}")
        finally:
            importer.stop()
        report = _last_json(said, "our sender")
        report["importer_cpu_s"] = importer.cpu_s
        if self.profile is not None:
            for side in ("sender", "importer"):
                path = self.profile / f"{step}-{side}.txt"
                if path.exists():
                    self.profiles[f"{step}-{side}"] = render_profile(
                        path, path.with_suffix(".svg"), f"{step}, {side}")
        return Step(wall, float(report["peak_rss_mib"]), report)

    def restic_copy(self, snapshots: list[str]) -> Step:
        return self.r.restic(self.restic_target, "copy", "--from-repo", str(self.restic_source),
                             "--from-password-file", str(self.password_file), *snapshots,
                             sources=[self.restic_source])

    def pair(self, case: str, ours: Callable[[], Step], theirs: Callable[[], Step]) -> None:
        """Both sides of a case, the first alternating like bench/data.py's."""
        first = "ours" if self.ours_first else "restic"
        self.ours_first = not self.ours_first
        if first == "ours":
            mine, other = ours(), theirs()
        else:
            other, mine = theirs(), ours()
        stats = mine.out["stats"]
        self.results[case] = {
            "ours_s": round(mine.wall, 3), "restic_copy_s": round(other.wall, 3),
            "speedup": round(other.wall / mine.wall, 2) if mine.wall > 0 else None,
            "ours_in_process_s": round(float(mine.out["seconds"]), 3),
            "ours_sender_rss_mib": round(mine.rss_mib, 1), "first": first,
            "wire_bytes": int(mine.out["request_bytes"]),
            "requests": int(mine.out["requests"]), "engine": stats,
            "ours_sender_cpu_s": round(float(mine.out["cpu_s"]), 2),
            "ours_importer_cpu_s": round(float(mine.out["importer_cpu_s"]), 2)}
        log(f"  {case:12s} ours {mine.wall:7.2f} s   restic copy {other.wall:7.2f} s   "
            f"{other.wall / mine.wall:6.2f}x   ({stats['chunks_sent']} chunks, "
            f"{mine.out['request_bytes'] / 1e6:.1f} MB sent)")

    # -- the round ------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        self.results["restic"] = {"version": ensure_restic(),
                                  "options": "defaults (repository v2), target made with "
                                             "init --copy-chunker-params"}
        log(f"==> corpus (scale {self.scale}) in {self.work}")
        disk, tree = self.work / "disk.img", self.work / "tree"
        layout = corpus.make_disk(disk, self.scale)
        tlayout = corpus.make_tree(tree, self.scale)
        self.results["disk"] = {"size": layout.size, "used": layout.used}
        self.results["tree"] = {"files": tlayout.files, "bytes": tlayout.bytes}
        log(f"  disk {layout.size >> 20} MiB ({layout.used >> 20} MiB used), "
            f"tree {tlayout.files} files, {tlayout.bytes >> 20} MiB")
        self.password_file.write_text(self.r.env["RESTIC_PASSWORD"] + "\n")
        self.password_file.chmod(0o600)

        log("==> source backups (untimed)")
        self.r.ours("init", "init", str(self.source), sources=[], profile=False)
        self.r.restic(self.restic_source, "init", sources=[])
        self.backups(disk, tree, 1)
        disk_hash, tree_copy = file_hash(disk), self.work / "tree-at-1"
        shutil.copytree(tree, tree_copy, symlinks=True)
        corpus.mutate_disk(disk, self.scale)
        self.results["tree_mutation"] = corpus.mutate_tree(tree, self.scale)
        self.backups(disk, tree, 2)
        snapshots = self.restic_json(self.restic_source, "snapshots")
        firsts = self.restic_first_snapshots(snapshots)

        log("==> replication")
        self.write_plan()
        self.worker("init", str(self.target), TARGET_VAULT_ID)
        self.r.restic(self.restic_target, "init", "--copy-chunker-params", "--from-repo",
                      str(self.restic_source), "--from-password-file", str(self.password_file),
                      sources=[])
        self.pair("first", lambda: self.ours_replicate("first"),
                  lambda: self.restic_copy(firsts))
        self.verify({"r-disk1": ("disk", disk_hash), "r-tree1": ("tree", tree_copy)})
        shutil.rmtree(tree_copy)
        seconds = [s["short_id"] for s in snapshots if s["short_id"] not in firsts]
        self.pair("incremental", lambda: self.ours_replicate("incremental"),
                  lambda: self.restic_copy(seconds))
        self.verify({"r-disk2": ("disk", file_hash(disk)), "r-tree2": ("tree", tree)})

        new = self.worker("new-chunks", str(self.source), "--old", "disk1", "tree1",
                          "--new", "disk2", "tree2")
        self.results["incremental_new_chunks"] = new
        self.results["first_wire_bytes"] = self.results["first"]["wire_bytes"]
        self.results["incremental_wire_bytes"] = self.results["incremental"]["wire_bytes"]
        self.results["incremental_new_chunk_bytes"] = int(new["wire_form_bytes"])
        self.results["incremental_wire_ratio"] = wire_ratio(self.results)
        if self.profiles:
            self.results["profile"] = {"dir": str(self.profile), "steps": self.profiles}
        return self.results

    def backups(self, disk: Path, tree: Path, n: int) -> None:
        parent = ["--parent", f"disk{n - 1}"] if n > 1 else []
        self.r.ours(f"disk{n}", "disk-backup", str(self.source), str(disk), f"disk{n}",
                    *parent, sources=[disk], profile=False)
        parent = ["--parent", f"tree{n - 1}"] if n > 1 else []
        self.r.ours(f"tree{n}", "tree-backup", str(self.source), str(tree), f"tree{n}",
                    *parent, sources=[tree], profile=False)
        self.r.restic(self.restic_source, "backup", "--tag", "disk", str(disk), sources=[disk])
        self.r.restic(self.restic_source, "backup", "--tag", "tree", str(tree), sources=[tree])
        log(f"  backup {n} of the disk and the tree in both")

    @staticmethod
    def restic_first_snapshots(snapshots: list[dict[str, Any]]) -> list[str]:
        """The earliest snapshot of each tag."""
        firsts: dict[str, dict[str, Any]] = {}
        for snap in snapshots:
            tag = snap.get("tags", [""])[0]
            if tag not in firsts or snap["time"] < firsts[tag]["time"]:
                firsts[tag] = snap
        if len(firsts) != 2 or len(snapshots) != 4:
            raise BenchFailed(f"expected four restic snapshots tagged disk and tree, got "
                              f"{[(s['short_id'], s.get('tags')) for s in snapshots]}")
        return [s["short_id"] for s in firsts.values()]

    def write_plan(self) -> None:
        cert, key = make_tls(self.work)
        steps: dict[str, list[dict[str, Any]]] = {}
        for step, n in (("first", 1), ("incremental", 2)):
            steps[step] = [{"replication_id": f"{step}-{kind}", "token": secrets.token_urlsafe(),
                            "replicas": {f"{kind}{n}": f"r-{kind}{n}"}}
                           for kind in ("disk", "tree")]
        plan = {"target": str(self.target), "target_vault_id": TARGET_VAULT_ID,
                "tls_cert": str(cert), "tls_key": str(key), "steps": steps}
        self.plan.write_text(json.dumps(plan))
        self.plan.chmod(0o600)

    def verify(self, replicas: dict[str, tuple[str, Any]]) -> None:
        """Restores each replica from the target vault and compares it with
        the corpus as it was at the backup; the work dir holds one at a time."""
        for replica, (kind, want) in replicas.items():
            out = self.work / f"restored-{replica}"
            self.r.ours(f"restore-{replica}", "restore", str(self.target), replica, str(out),
                        sources=[], profile=False)
            if kind == "disk":
                if file_hash(out) != want:
                    raise BenchFailed(f"replica {replica} restores to a different disk image")
                out.unlink()
            else:
                diffs = tree_differences(want, out)
                if diffs:
                    raise BenchFailed(f"replica {replica} restores to a different tree: "
                                      + "; ".join(diffs))
                shutil.rmtree(out)
        log(f"  {', '.join(replicas)} restore from the target identical to the corpus")


# -- results -------------------------------------------------------------------------------------

def wire_ratio(results: dict[str, Any]) -> float | None:
    new = results["incremental_new_chunk_bytes"]
    return round(results["incremental_wire_bytes"] / new, 4) if new else None


def combine(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of each side's time per case (the speedup is their ratio), of
    the byte counts and of each round's wire ratio; every round's pair kept
    beside them."""
    out = dict(rounds[-1])
    if len(rounds) == 1:
        return out
    out["rounds"] = len(rounds)
    for case in CASES:
        entries = [r[case] for r in rounds]
        ours = statistics.median(e["ours_s"] for e in entries)
        theirs = statistics.median(e["restic_copy_s"] for e in entries)
        merged = dict(entries[-1])
        merged.pop("first", None)
        merged.update({"ours_s": round(ours, 3), "restic_copy_s": round(theirs, 3),
                       "speedup": round(theirs / ours, 2) if ours > 0 else None,
                       "runs": [[e["ours_s"], e["restic_copy_s"], e["first"]]
                                for e in entries]})
        out[case] = merged
    for key in ("first_wire_bytes", "incremental_wire_bytes", "incremental_new_chunk_bytes"):
        out[key] = int(statistics.median(r[key] for r in rounds))
    ratios = [r["incremental_wire_ratio"] for r in rounds if r["incremental_wire_ratio"]]
    out["incremental_wire_ratio"] = statistics.median(ratios) if ratios else None
    out["incremental_wire_ratio_runs"] = ratios
    return out


def targets(results: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for case, want in SPEEDUP_TARGETS.items():
        got = results[case]["speedup"]
        out[f"{case}_speedup"] = {"target": f">= {want:g}x", "value": got,
                                  "pass": got is not None and got >= want}
    ratio = results["incremental_wire_ratio"]
    out["incremental_wire_ratio"] = {"target": f"<= {WIRE_RATIO_TARGET:g}", "value": ratio,
                                     "pass": ratio is not None and ratio <= WIRE_RATIO_TARGET}
    return out


def table(results: dict[str, Any]) -> str:
    mark = {True: "yes", False: "NO"}
    t = results["targets"]
    rows = ["| case | ours | restic copy | speedup | target | pass |",
            "| --- | --- | --- | --- | --- | --- |"]
    for case in CASES:
        e, goal = results[case], t.get(f"{case}_speedup")
        rows.append(f"| {case} replication | {e['ours_s']:.2f} s | {e['restic_copy_s']:.2f} s "
                    f"| {e['speedup']:.2f}x | {goal['target'] if goal else ''} "
                    f"| {mark[goal['pass']] if goal else '-'} |")
    r = t["incremental_wire_ratio"]
    rows.append(f"| incremental wire / new chunks | {results['incremental_wire_bytes'] / 1e6:.2f} "
                f"MB / {results['incremental_new_chunk_bytes'] / 1e6:.2f} MB | | "
                f"{r['value']:.3f} | {r['target']} | {mark[r['pass']]} |")
    rows.append(f"| first wire bytes | {results['first_wire_bytes'] / 1e6:.1f} MB | | | | - |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/bench replication", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", help="write the results here")
    p.add_argument("--work-dir", default=str(ROOT / ".bench-replication"),
                   help="corpus and the four repositories (removed first, and after unless "
                   "--keep)")
    p.add_argument("--scale", type=float, default=1.0,
                   help="corpus size factor (1.0: a 2 GiB disk and 20,000 files)")
    p.add_argument("--repeat", type=int, default=1, metavar="N",
                   help="run everything N times on a fresh corpus and report medians "
                   "(each round starts with the other side first)")
    p.add_argument("--keep", action="store_true", help="keep the work dir")
    p.add_argument("--warm", action="store_true",
                   help="keep the page cache warm for both even as root")
    default_profiles = Path(tempfile.gettempdir()) / "cbr-bench-replication-profiles"
    p.add_argument("--profile", nargs="?", const=str(default_profiles), default=None,
                   metavar="DIR", help="sample our sender and importer with py-spy (first "
                   f"round only) into DIR (default {default_profiles}); those timings include "
                   "the sampling overhead")
    args = p.parse_args(argv)
    if args.scale <= 0 or args.repeat < 1:
        p.error("--scale must be positive and --repeat at least 1")
    work = Path(args.work_dir).resolve()
    rounds = run_rounds("replication", args, work,
                        lambda ours_first: Bench(args, work, ours_first=ours_first).run())
    if rounds is None:
        return 1
    results = combine(rounds)
    results["targets"] = targets(results)
    log("")
    log(table(results))
    if "profile" in results:
        log(f"profiles (flame graphs in {results['profile']['dir']}), share of samples:")
        for label, prof in results["profile"]["steps"].items():
            log(f"  {label}: waiting {prof['waiting_pct']}%; "
                + ", ".join(f"{t['function']} {t['self_pct']}%" for t in prof["top_self"][:5]))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
