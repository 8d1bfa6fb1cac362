"""One operation of our data path, as the agent runs it, in its own process.

The benchmark runs each backup and restore in a fresh process so that the
parent can time it the way a restic run is timed (process start included)
and so that peak RSS belongs to one operation, not to the whole benchmark.
The steps mirror ``agent.commands.backup``/``restore``: the storage lock,
opening the vault, snapshots, the engine, the manifest, then committing the
kept snapshot. The parent of an incremental is found through the manifest
in the vault, as the agent finds it, not handed over in memory.

    python -m bench.data_worker init VAULT
    python -m bench.data_worker disk-backup VAULT SOURCE ID [--parent ID] [--cbt]
    python -m bench.data_worker tree-backup VAULT SOURCE ID [--parent ID]
    python -m bench.data_worker restore VAULT ID TARGET
    python -m bench.data_worker serve

The last line on stdout is a JSON object: ``seconds`` (the operation inside
the process), ``peak_rss_mib`` (VmHWM), the engine's ``stats``, and for disks the
``method`` used (full, hash-scan or cbt) and the snapshot ``kind``.

``serve`` is the running agent: one process that takes operations, one JSON
array of the arguments above per line on stdin, and answers each with one
such JSON line (``{"error": ...}`` if it failed). A deployed agent runs
every backup and restore in its long-lived process (``agent.executor``), so
it pays neither interpreter start-up nor imports per task; this mode
measures that, beside the fresh process per step that times like a CLI.
Its ``peak_rss_mib`` is the peak during the operation (VmHWM reset before
it), which includes whatever the process kept from earlier operations.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import json
import os
import resource
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from agent.dataplane import Progress
from agent.dataplane.disk import backup_disk, disk_size, restore_disk
from agent.dataplane.snapshot import take_snapshots
from agent.dataplane.tree_backup import backup_tree
from agent.dataplane.tree_restore import restore_tree
from agent.dataplane.watches import WATCHES, TreeWatches, track
from agent.memory import pin_mmap_threshold, release_free_memory
from cbr.repo import DiskContent, Manifest, Repository, Resource, TreeContent
from cbr.repo.content.crypto import AesKeyWrapper
from cbr.repo.maintenance.locks import Lock
from cbr.storage.local import LocalBackend

WORKERS = 2  # the agent's default; restic gets the same two cores


def _manifest(repo: Repository, backup_id: str, content: DiskContent | TreeContent,
              stats: dict[str, int], parent: str | None, size: int) -> Manifest:
    kind = "disk" if isinstance(content, DiskContent) else "turbo"
    return Manifest(backup_id=backup_id, name=backup_id, checkpoint_id="bench",
                    vault_id=repo.config.vault_id,
                    resource=Resource("bench", "bench", kind, size),
                    created_at=dt.datetime.now(dt.UTC), chunk_key_id=repo.config.chunk_key_id,
                    content=content, incremental=parent is not None, stats=stats)


def _disk_backup(repo: Repository, source: Path, backup_id: str, parent_id: str | None,
                 cbt: bool) -> dict[str, Any]:
    """Without ``cbt`` the incremental compares block hashes even where the
    file system could answer FIEMAP, so each method is measured on its own."""
    parent = repo.load_manifest(parent_id).content if parent_id else None
    if parent is not None and not isinstance(parent, DiskContent):
        raise SystemExit(f"data_worker: {parent_id} is not a disk backup")
    size = disk_size(source)
    # The kept snapshot belongs to this vault's backups: two vaults backing
    # up one image (a fresh process and a running agent) each keep their own.
    key = f"disk:{repo.config.vault_id}:{repo.backend.location}"
    with take_snapshots([(key, source)]) as snaps:
        changed = snaps.changed_ranges(key, parent_id) if cbt and parent_id else None
        result = backup_disk(repo, snaps.source(key), size=size, parent=parent,
                             changed=changed, progress=Progress(size), workers=WORKERS)
        repo.save_manifest(_manifest(repo, backup_id, result.content, result.stats,
                                     parent_id, size))
        snaps.commit(key, backup_id)
        method = "full" if parent is None else ("cbt" if changed is not None else "hash-scan")
        return {"stats": result.stats, "method": method, "snapshot": snaps.kind(key),
                "warnings": result.warnings}


def _tree_backup(repo: Repository, source: Path, backup_id: str,
                 parent_id: str | None, watches: TreeWatches | None) -> dict[str, Any]:
    """A running agent keeps its change journal of the tree between
    backups (``watches``); a fresh process has none and walks it all."""
    parent = repo.load_manifest(parent_id).content if parent_id else None
    if parent is not None and not isinstance(parent, TreeContent):
        raise SystemExit(f"data_worker: {parent_id} is not a tree backup")
    tracking = track(source, parent_id if parent is not None else None, watches)
    result = backup_tree(repo, source, parent=parent, progress=Progress(), workers=WORKERS,
                         changed=tracking.changed)
    repo.save_manifest(_manifest(repo, backup_id, result.content, result.stats, parent_id, 0))
    tracking.commit(backup_id, result.recheck_dirs)
    return {"stats": result.stats, "warnings": result.warnings, "method": tracking.method,
            **({"full_walk_reason": tracking.reason} if tracking.method == "walk" else {})}


def _restore(repo: Repository, backup_id: str, target: Path) -> dict[str, Any]:
    manifest = repo.load_manifest(backup_id)
    content, key_id = manifest.content, manifest.chunk_key_id
    if isinstance(content, DiskContent):
        result = restore_disk(repo, content, target, progress=Progress(content.size),
                              workers=WORKERS, key_id=key_id)
    elif isinstance(content, TreeContent):
        result = restore_tree(repo, content, target, progress=Progress(), workers=WORKERS,
                              key_id=key_id)
    else:
        raise SystemExit(f"data_worker: {backup_id} has no content to restore")
    return {"stats": result.stats, "warnings": result.warnings}


def reset_peak_rss() -> None:
    """Starts VmHWM afresh at the current RSS (``clear_refs`` 5, Linux >= 4.0),
    so a running agent's peak is that of its current operation."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5\n")


def resident_mib() -> float:
    """This process's resident set now (VmRSS), 0 where /proc cannot tell."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def peak_rss_mib() -> float:
    """This process's peak resident set since its exec (VmHWM).

    Not ``ru_maxrss``: Linux carries the high-water mark of the pre-exec
    image into it, and the parent that spawned us (vfork, sharing its
    memory until exec) may have been far larger than we ever are.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


KEK_ENV = "CBR_BENCH_KEK_FILE"


def bench_kek() -> AesKeyWrapper | None:
    """The benchmark's key-encryption key, standing in for the controller's
    key service (which unwraps a vault's keys once per task, as here)."""
    path = os.environ.get(KEK_ENV)
    return AesKeyWrapper("bench-kek", Path(path).read_bytes()) if path else None


@functools.cache
def _parser() -> argparse.ArgumentParser:
    """Built once: a running agent takes many requests, and building an
    argparse parser looks up message catalogs on disk (cold, ~10 ms)."""
    p = argparse.ArgumentParser(prog="python -m bench.data_worker")
    p.add_argument("op", choices=["init", "disk-backup", "tree-backup", "restore", "serve"])
    p.add_argument("vault", type=Path, nargs="?")
    p.add_argument("args", nargs="*")
    p.add_argument("--parent")
    p.add_argument("--cbt", action="store_true", help="use changed-block tracking if possible")
    p.add_argument("--encrypted", action="store_true",
                   help="init: an encrypted vault, its keys wrapped by the bench KEK")
    return p


def run(argv: list[str], watches: TreeWatches | None = None) -> dict[str, Any]:
    """One operation, timed inside this process; its report."""
    p = _parser()
    a = p.parse_args(argv)
    if a.op == "serve" or a.vault is None:
        p.error(f"{a.op} needs a VAULT" if a.op != "serve" else "serve takes no arguments here")
    want = {"init": 0, "disk-backup": 2, "tree-backup": 2, "restore": 2}[a.op]
    if len(a.args) != want:
        p.error(f"{a.op} takes {want} arguments after VAULT")
    backend = LocalBackend(a.vault)
    started = time.perf_counter()
    out: dict[str, Any] = {}
    kek = bench_kek()
    if a.op == "init":
        if a.encrypted and kek is None:
            p.error(f"--encrypted needs {KEK_ENV} (a file of 32 random bytes)")
        Repository.init(backend, vault_id="bench", encrypted=a.encrypted,
                        key_wrapper=kek if a.encrypted else None)
    else:
        kind = "restore" if a.op == "restore" else "backup"
        with Lock.acquire(backend, kind=kind):
            repo = Repository.open(backend, unwrap=kek.unwrap if kek is not None else None)
            try:
                if a.op == "disk-backup":
                    out = _disk_backup(repo, Path(a.args[0]), a.args[1], a.parent, a.cbt)
                elif a.op == "tree-backup":
                    out = _tree_backup(repo, Path(a.args[0]), a.args[1], a.parent, watches)
                else:
                    out = _restore(repo, a.args[0], Path(a.args[1]))
            finally:
                repo.close()
    out["seconds"] = time.perf_counter() - started
    out["peak_rss_mib"] = peak_rss_mib()
    return out


def serve() -> int:
    """The running agent: operations from stdin, one report line each."""
    for line in sys.stdin:
        if not line.strip():
            continue
        resident = resident_mib()
        reset_peak_rss()
        try:
            out = run([str(arg) for arg in json.loads(line)], WATCHES)
        except SystemExit as exc:  # argparse said no
            out = {"error": f"bad request {line.strip()}: exit {exc.code}"}
        except Exception:
            out = {"error": traceback.format_exc()}
        out["rss_before_mib"] = resident
        release_free_memory()  # as the agent's executor does after each task
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    pin_mmap_threshold()  # as `cbr-agent run` does before any work
    if args[:1] == ["serve"]:
        return serve()
    sys.stdout.write(json.dumps(run(args)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
