"""One operation of our data path, as the agent runs it, in its own process.

The benchmark runs each backup and restore here so that the wall time
includes everything an agent does and the peak RSS (reported on stdout as
JSON) is that of one operation, as a real agent process would see it.

    python -m bench.data_worker init VAULT
    python -m bench.data_worker disk-backup VAULT SOURCE ID [--parent ID] [--cbt]
    python -m bench.data_worker tree-backup VAULT SOURCE ID [--parent ID]
    python -m bench.data_worker restore VAULT ID TARGET
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import sys
import time
from pathlib import Path

from agent.dataplane import Progress
from agent.dataplane.disk import backup_disk, disk_size, restore_disk
from agent.dataplane.snapshot import take_snapshots
from agent.dataplane.tree import backup_tree, restore_tree
from agent.memory import pin_mmap_threshold
from cbr.repo import DiskContent, Manifest, Repository, Resource, TreeContent
from cbr.repo.locks import Lock
from cbr.storage.local import LocalBackend

WORKERS = 2


def _manifest(repo: Repository, backup_id: str, content: DiskContent | TreeContent,
              stats: dict[str, int], parent: str | None) -> Manifest:
    return Manifest(backup_id=backup_id, name=backup_id, checkpoint_id="bench",
                    vault_id=repo.config.vault_id,
                    resource=Resource("bench", "bench", "bench", 0),
                    created_at=dt.datetime.now(dt.UTC), chunk_key_id=repo.config.chunk_key_id,
                    content=content, incremental=parent is not None, stats=stats)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("op", choices=["init", "disk-backup", "tree-backup", "restore"])
    p.add_argument("vault")
    p.add_argument("args", nargs="*")
    p.add_argument("--parent")
    p.add_argument("--cbt", action="store_true")
    a = p.parse_args(argv)
    pin_mmap_threshold()  # as cbr-agent run does
    backend = LocalBackend(Path(a.vault))
    started = time.perf_counter()
    out: dict[str, object] = {}
    if a.op == "init":
        Repository.init(backend, vault_id="bench", encrypted=False)
    elif a.op in ("disk-backup", "tree-backup"):
        source, backup_id = Path(a.args[0]), a.args[1]
        with Lock.acquire(backend, kind="backup"):
            repo = Repository.open(backend)
            parent = repo.load_manifest(a.parent).content if a.parent else None
            if a.op == "disk-backup":
                with take_snapshots([("disk", source)]) as snaps:
                    changed = (snaps.changed_ranges("disk", a.parent or "") if a.cbt
                               else None)
                    result = backup_disk(repo, snaps.source("disk"), size=disk_size(source),
                                         parent=parent if isinstance(parent, DiskContent)
                                         else None, changed=changed,
                                         progress=Progress(), workers=WORKERS)
                    out["cbt"] = changed is not None
                    out["snapshot"] = snaps.kind("disk")
                    repo.save_manifest(_manifest(repo, backup_id, result.content,
                                                 result.stats, a.parent))
                    if a.cbt:
                        snaps.commit("disk", backup_id)
            else:
                result = backup_tree(repo, source, parent=parent if isinstance(
                    parent, TreeContent) else None, progress=Progress(), workers=WORKERS)
                repo.save_manifest(_manifest(repo, backup_id, result.content, result.stats,
                                             a.parent))
            out["stats"] = result.stats
    else:
        backup_id, target = a.args[0], Path(a.args[1])
        repo = Repository.open(backend)
        content = repo.load_manifest(backup_id).content
        if isinstance(content, DiskContent):
            restore_disk(repo, content, target, progress=Progress(), workers=WORKERS)
        elif isinstance(content, TreeContent):
            restore_tree(repo, content, target, progress=Progress(), workers=WORKERS)
    out["seconds"] = time.perf_counter() - started
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    sys.stdout.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
