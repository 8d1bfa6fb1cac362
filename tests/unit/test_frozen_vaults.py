"""Vaults written by earlier format versions still read, verify and restore
byte for byte (tests/data/frozen, written once per version by its make.py).

A change that breaks this breaks every user's existing backups: change the
format only with a new version that still reads these (docs/storage-format.md
section 15)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from agent.dataplane import Progress
from agent.dataplane.disk import restore_disk
from agent.dataplane.tree_restore import restore_tree
from cbr.repo import DiskContent, Repository, TreeContent
from cbr.repo.content.crypto import AesKeyWrapper
from cbr.repo.maintenance.verify import verify
from cbr.storage.local import LocalBackend

FROZEN = Path(__file__).resolve().parents[1] / "data" / "frozen"
VERSIONS = sorted(p.name for p in FROZEN.iterdir() if (p / "expected.json").exists())


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("kind", ["plain", "encrypted"])
def test_a_vault_of_an_earlier_version_reads_verifies_and_restores_identically(
        tmp_path: Path, version: str, kind: str) -> None:
    expected = json.loads((FROZEN / version / "expected.json").read_text())
    vault = tmp_path / "vault"
    shutil.copytree(FROZEN / version / kind, vault)  # opening writes locks: never the original
    unwrap = None
    if kind == "encrypted":
        unwrap = AesKeyWrapper(expected["kek_id"], bytes.fromhex(expected["kek_hex"])).unwrap
    repo = Repository.open(LocalBackend(vault), unwrap=unwrap,
                           expect_encrypted=kind == "encrypted")
    assert verify(repo, read_data=True).ok
    tree = repo.load_manifest("frozen-tree").content
    disk = repo.load_manifest("frozen-disk").content
    assert isinstance(tree, TreeContent) and isinstance(disk, DiskContent)
    restore_tree(repo, tree, tmp_path / "tree", progress=Progress())
    restore_disk(repo, disk, tmp_path / "disk.img", progress=Progress())
    root = tmp_path / "tree"
    got = {f"tree/{p.relative_to(root)}": hashlib.sha256(p.read_bytes()).hexdigest()
           for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}
    got["tree/link -> "] = os.readlink(root / "link")
    got["disk"] = hashlib.sha256((tmp_path / "disk.img").read_bytes()).hexdigest()
    assert got == expected["files"]
    assert (root / "empty-dir").is_dir()
