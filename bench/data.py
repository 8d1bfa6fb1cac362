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
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import corpus
from bench.data_report import combine, encryption_ratio, table, targets
from bench.measure import BenchFailed, du, file_hash, log, tree_differences
from bench.runner import ROOT, Runner, Step, run_rounds
from bench.tools import ensure_restic, xfs_mount


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
