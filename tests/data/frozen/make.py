"""Writes the frozen vaults of this format version (run once per version).

    .venv/bin/python -m tests.data.frozen.make v1

Each version's vaults are committed and never written again: the test
``tests/unit/test_frozen_vaults.py`` makes every later version read, verify
and restore them byte for byte, as restic keeps its test repositories.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import random
import shutil
import sys
from pathlib import Path

from agent.dataplane import Progress
from agent.dataplane.disk import backup_disk
from agent.dataplane.tree_backup import backup_tree
from cbr.repo import Manifest, Repository, Resource
from cbr.repo.content.crypto import AesKeyWrapper
from cbr.storage.local import LocalBackend

HERE = Path(__file__).resolve().parent
WHEN = dt.datetime(2026, 12, 6, 12, 0, tzinfo=dt.UTC)
KEK = bytes(range(32))  # a test key, in the clear on purpose: these vaults hold test data
KEK_ID = "frozen-kek"


def _sources(root: Path) -> tuple[Path, Path]:
    rng = random.Random(2026)
    tree = root / "tree"
    (tree / "docs" / "deep").mkdir(parents=True)
    (tree / "empty-dir").mkdir()
    (tree / "readme.txt").write_text("a frozen vault of format version 1\n")
    (tree / "empty").write_bytes(b"")
    (tree / "docs" / "random.bin").write_bytes(rng.randbytes(96 * 1024))
    (tree / "docs" / "deep" / "repeat.txt").write_bytes(b"the same line\n" * 20000)
    os.symlink("docs/random.bin", tree / "link")
    disk = root / "disk.img"
    with open(disk, "wb") as fh:
        fh.truncate(4 << 20)
        for offset in (0, 1 << 20, 3 << 20):
            fh.seek(offset)
            fh.write(rng.randbytes(48 * 1024))
    return tree, disk


def _expected(tree: Path, disk: Path) -> dict[str, str]:
    out = {f"tree/{p.relative_to(tree)}": hashlib.sha256(p.read_bytes()).hexdigest()
           for p in sorted(tree.rglob("*")) if p.is_file() and not p.is_symlink()}
    out["tree/link -> "] = os.readlink(tree / "link")
    out["disk"] = hashlib.sha256(disk.read_bytes()).hexdigest()
    return out


def _write(vault: Path, tree: Path, disk: Path, encrypted: bool) -> None:
    wrapper = AesKeyWrapper(KEK_ID, KEK) if encrypted else None
    repo = Repository.init(LocalBackend(vault), vault_id=f"frozen-{vault.name}",
                           encrypted=encrypted, key_wrapper=wrapper, now=WHEN)
    for backup_id, kind, result in (
            ("frozen-tree", "turbo", backup_tree(repo, tree, progress=Progress())),
            ("frozen-disk", "disk", backup_disk(repo, disk, progress=Progress()))):
        repo.save_manifest(Manifest(
            backup_id=backup_id, name=backup_id, checkpoint_id="frozen",
            vault_id=repo.config.vault_id,
            resource=Resource(backup_id, backup_id, kind, 0), created_at=WHEN,
            chunk_key_id=repo.config.chunk_key_id, content=result.content,
            stats=dict(result.stats)))
    repo.close()
    shutil.rmtree(vault / "locks", ignore_errors=True)


def main(version: str) -> None:
    out = HERE / version
    if out.exists():
        sys.exit(f"{out} exists: frozen vaults are never written again")
    work = out / "sources"
    tree, disk = _sources(work)
    for name, encrypted in (("plain", False), ("encrypted", True)):
        _write(out / name, tree, disk, encrypted)
    expected = {"version": version, "kek_id": KEK_ID, "kek_hex": KEK.hex(),
                "files": _expected(tree, disk)}
    (out / "expected.json").write_text(json.dumps(expected, indent=2, sort_keys=True) + "\n")
    shutil.rmtree(work)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "v1")
