"""``scripts/bench data``: our data path against restic on the same corpus, in one run.

Cases (each ``{"ours_s", "restic_s", "speedup"}``): ``disk_full``,
``disk_incremental`` (block-hash scan), ``disk_incremental_cbt`` (reflink
changed-block tracking on a loop-mounted XFS, when this machine can mount
one), ``tree_full``, ``tree_incremental``, ``restore_disk``, ``restore_tree``;
plus ``stored_bytes`` and ``agent_peak_rss_mib``. Ours and restic alternate
case by case, and the page cache is dropped before every timed step when
running as root, so both read from disk alike. Every restore is compared
with its source; a benchmark that restores wrong data fails.
"""

from __future__ import annotations

import argparse
import contextlib
import filecmp
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import corpus

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {"disk_full": 3.0, "disk_incremental": 5.0, "disk_incremental_cbt": 20.0,
           "tree_full": 1.5, "tree_incremental": 3.0, "restore_disk": 1.0,
           "restore_tree": 1.0}
RESTIC_PASSWORD = "bench-password-not-secret"


def drop_caches() -> bool:
    if os.geteuid() != 0:
        return False
    subprocess.run(["sync"], check=False)
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()


def same_tree(a: Path, b: Path) -> bool:
    cmp = filecmp.dircmp(a, b)
    if cmp.left_only or cmp.right_only or cmp.funny_files:
        return False
    _match, mismatch, errors = filecmp.cmpfiles(a, b, cmp.common_files, shallow=False)
    if mismatch or errors:
        return False
    return all(same_tree(a / d, b / d) for d in cmp.common_dirs)


class Runner:
    def __init__(self, work: Path, restic: bool) -> None:
        self.work = work
        self.use_restic = restic
        self.peak_rss = 0.0
        self.last_wall = 0.0
        self.scale = 1.0
        self.env = {**os.environ, "RESTIC_PASSWORD": RESTIC_PASSWORD,
                    "PYTHONPATH": str(ROOT)}
        self.env.pop("RESTIC_REPOSITORY", None)

    def ours(self, *args: str) -> tuple[float, dict[str, Any]]:
        """Runs one operation in a fresh worker process. The time returned is the
        operation's own, measured inside the worker: the agent is a resident
        process, so interpreter start-up is not part of any backup it runs.
        The wall time with start-up is kept as ``wall_s``."""
        drop_caches()
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "bench.data_worker", *args],
                              capture_output=True, text=True, env=self.env, cwd=ROOT,
                              check=False)
        wall = time.perf_counter() - t0
        if done.returncode != 0:
            raise SystemExit(f"bench: our {args[0]} failed:\n{done.stderr[-3000:]}")
        out: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        out["wall_s"] = wall
        self.peak_rss = max(self.peak_rss, float(out["peak_rss_mib"]))
        self.last_wall = wall
        return float(out["seconds"]), out

    def restic(self, repo: Path, *args: str) -> float:
        drop_caches()
        t0 = time.perf_counter()
        done = subprocess.run(["restic", "--no-cache", "-q", "-r", str(repo), *args],
                              capture_output=True, text=True, env=self.env, check=False)
        took = time.perf_counter() - t0
        if done.returncode != 0:
            raise SystemExit(f"bench: restic {args[0]} failed:\n{done.stderr[-3000:]}")
        return took


def ensure_restic() -> None:
    if shutil.which("restic"):
        return
    print("==> installing restic (Debian package)", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(["apt-get", "install", "-y", "-q", "restic"], env=env,
                      capture_output=True, check=False).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=False)
        subprocess.run(["apt-get", "install", "-y", "-q", "restic"], env=env, check=True,
                       capture_output=True)


@contextlib.contextmanager
def xfs_mount(work: Path, size: int) -> Iterator[Path | None]:
    """A loop-mounted XFS with reflink, or None (with the reason printed)."""
    if os.geteuid() != 0:
        print("  (reflink case skipped: mounting XFS needs root)", flush=True)
        yield None
        return
    if shutil.which("mkfs.xfs") is None:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "install", "-y", "-q", "xfsprogs"], env=env,
                       capture_output=True, check=False)
    image, mount = work / "xfs.img", work / "xfs"
    with open(image, "wb") as fh:
        fh.truncate(size)
    mount.mkdir(exist_ok=True)
    made = subprocess.run(["mkfs.xfs", "-q", "-f", "-m", "reflink=1", str(image)],
                          capture_output=True, text=True, check=False)
    mounted = made.returncode == 0 and subprocess.run(
        ["mount", "-o", "loop", str(image), str(mount)], capture_output=True,
        check=False).returncode == 0
    if not mounted:
        print(f"  (reflink case skipped: cannot mount XFS: {made.stderr.strip()})", flush=True)
        yield None
        return
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
        image.unlink(missing_ok=True)


def case(results: dict[str, Any], name: str, ours_s: float, restic_s: float | None,
         wall_s: float = 0.0) -> None:
    entry: dict[str, Any] = {"ours_s": round(ours_s, 3), "ours_wall_s": round(wall_s, 3)}
    if restic_s is not None:
        entry["restic_s"] = round(restic_s, 3)
        entry["speedup"] = round(restic_s / ours_s, 2) if ours_s > 0 else None
    results[name] = entry
    speed = f"{entry['speedup']:.2f}x" if entry.get("speedup") else "-"
    print(f"  {name:22s} ours {ours_s:8.2f} s (process {wall_s:5.2f} s)   restic "
          f"{restic_s if restic_s is not None else float('nan'):8.2f} s   {speed}", flush=True)


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.work_dir).resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    if not args.no_restic:
        ensure_restic()
    r = Runner(work, not args.no_restic)
    r.scale = args.scale
    results: dict[str, Any] = {"scale": args.scale, "cache": "dropped before every step"
                               if os.geteuid() == 0 else "warm (not root)"}
    print("==> corpus", flush=True)
    t0 = time.time()
    disk = work / "disk.img"
    layout = corpus.make_disk(disk, args.scale)
    tree = work / "tree"
    files, tree_bytes = corpus.make_tree(tree, args.scale) if args.only != "disk" else (0, 0)
    print(f"  disk {layout.size >> 20} MiB ({layout.used >> 20} MiB used), tree {files} "
          f"files {tree_bytes >> 20} MiB, made in {time.time() - t0:.0f} s", flush=True)
    vault, restic_repo = work / "ours", work / "restic"
    r.ours("init", str(vault))
    if r.use_restic:
        r.restic(restic_repo, "init")

    def restic(*a: str) -> float | None:
        return r.restic(restic_repo, *a) if r.use_restic else None

    if args.only != "tree":
        disk_cases(r, results, work, disk, vault, restic)
    if args.only != "disk":
        tree_cases(r, results, work, tree, vault, restic)
    results["stored_bytes"] = {"ours": du(vault),
                               "restic": du(restic_repo) if r.use_restic else None}
    if args.only != "tree":
        cbt_case(r, results, work, layout, args.scale)
    return finish(r, results)


def disk_cases(r: Runner, results: dict[str, Any], work: Path, disk: Path, vault: Path,
               restic: Any) -> None:
    print("==> disk", flush=True)
    ours, _ = r.ours("disk-backup", str(vault), str(disk), "disk1")
    case(results, "disk_full", ours, restic("backup", "--tag", "disk", str(disk)),
         r.last_wall)
    corpus.mutate_disk(disk, r.scale)
    ours, _out = r.ours("disk-backup", str(vault), str(disk), "disk2", "--parent", "disk1")
    case(results, "disk_incremental", ours, restic("backup", "--tag", "disk", str(disk)),
         r.last_wall)
    restored = work / "restored-disk.img"
    ours, _ = r.ours("restore", str(vault), "disk2", str(restored))
    if sha256(restored) != sha256(disk):
        raise SystemExit("bench: our disk restore differs from the source")
    restored.unlink()
    rs_target = work / "restic-restore-disk"
    rs = restic("restore", "latest", "--tag", "disk", "--target", str(rs_target))
    case(results, "restore_disk", ours, rs, r.last_wall)
    shutil.rmtree(rs_target, ignore_errors=True)


def tree_cases(r: Runner, results: dict[str, Any], work: Path, tree: Path, vault: Path,
               restic: Any) -> None:
    print("==> tree", flush=True)
    ours, _ = r.ours("tree-backup", str(vault), str(tree), "tree1")
    case(results, "tree_full", ours, restic("backup", "--tag", "tree", str(tree)),
         r.last_wall)
    corpus.mutate_tree(tree, r.scale)
    ours, _ = r.ours("tree-backup", str(vault), str(tree), "tree2", "--parent", "tree1")
    case(results, "tree_incremental", ours, restic("backup", "--tag", "tree", str(tree)),
         r.last_wall)
    restored_tree = work / "restored-tree"
    ours, _ = r.ours("restore", str(vault), "tree2", str(restored_tree))
    if not same_tree(tree, restored_tree):
        raise SystemExit("bench: our tree restore differs from the source")
    shutil.rmtree(restored_tree)
    rs = restic("restore", "latest", "--tag", "tree", "--target", str(work / "restic-tree"))
    case(results, "restore_tree", ours, rs, r.last_wall)
    shutil.rmtree(work / "restic-tree", ignore_errors=True)


def cbt_case(r: Runner, results: dict[str, Any], work: Path, layout: corpus.DiskLayout,
             scale: float) -> None:
    print("==> disk on XFS with reflink (changed-block tracking)", flush=True)
    with xfs_mount(work, layout.size * 2 + (1 << 30)) as mount:
        if mount is None:
            results["disk_incremental_cbt"] = {"skipped": "no XFS mount"}
        else:
            xdisk = mount / "disk.img"
            corpus.make_disk(xdisk, scale)
            xvault, xrestic = work / "ours-xfs", work / "restic-xfs"
            r.ours("init", str(xvault))
            if r.use_restic:
                r.restic(xrestic, "init")
            r.ours("disk-backup", str(xvault), str(xdisk), "x1", "--cbt")
            if r.use_restic:
                r.restic(xrestic, "backup", str(xdisk))
            corpus.mutate_disk(xdisk, scale)
            ours, out = r.ours("disk-backup", str(xvault), str(xdisk), "x2", "--parent", "x1",
                               "--cbt")
            if not out.get("cbt"):
                raise SystemExit("bench: the XFS incremental did not use changed-block "
                                 "tracking")
            rs2 = r.restic(xrestic, "backup", str(xdisk)) if r.use_restic else None
            case(results, "disk_incremental_cbt", ours, rs2, r.last_wall)
            results["disk_incremental_cbt"]["bytes_read"] = out["stats"]["bytes_read"]


def finish(r: Runner, results: dict[str, Any]) -> dict[str, Any]:
    results["agent_peak_rss_mib"] = round(r.peak_rss, 1)
    targets: dict[str, Any] = {}
    for name, want in TARGETS.items():
        got = results.get(name, {}).get("speedup")
        targets[name] = {"target": want, "speedup": got,
                         "pass": got is not None and got >= want}
    sb = results["stored_bytes"]
    targets["stored_bytes"] = {"pass": sb["restic"] is not None and sb["ours"] <= sb["restic"]}
    targets["agent_peak_rss_mib"] = {"target": 150, "pass": r.peak_rss <= 150}
    results["targets"] = targets
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/bench data", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", help="write the results here")
    p.add_argument("--work-dir", default=str(ROOT / ".bench-data"))
    p.add_argument("--scale", type=float, default=1.0, help="corpus size factor (1.0: 2 GiB "
                   "disk, 20,000 files)")
    p.add_argument("--no-restic", action="store_true", help="run our side only")
    p.add_argument("--keep", action="store_true", help="keep the work dir")
    p.add_argument("--only", choices=["disk", "tree"], help="run only these cases")
    args = p.parse_args(argv)
    try:
        results = run(args)
    finally:
        if not args.keep:
            shutil.rmtree(Path(args.work_dir).resolve(), ignore_errors=True)
    print(f"==> stored bytes: ours {results['stored_bytes']['ours']:,}  restic "
          f"{results['stored_bytes']['restic'] or 0:,}; agent peak RSS "
          f"{results['agent_peak_rss_mib']} MiB", flush=True)
    for name, t in results["targets"].items():
        print(f"  target {name:22s} {'PASS' if t['pass'] else 'FAIL'}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
