"""One damaged index file costs only itself (storage format section 7)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cbr.repo import Repository
from cbr.repo.maintenance.prune import prune
from cbr.repo.maintenance.verify import verify
from cbr.repo.maintenance.walk import complete_manifests, iter_reachable
from cbr.storage.local import LocalBackend
from tests.unit.test_repo_prune import BLOCK, _blocks, _disk, _open, _tree


def _restores(root: Path) -> int:
    """Every blob of every finished backup loads and verifies; how many backups."""
    repo = _open(root)
    manifests, _ = complete_manifests(repo)
    for m in manifests:
        for _t, cid in iter_reachable(repo, m):
            repo.load_blob(cid, key_id=m.chunk_key_id)
    return len(manifests)


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage"])
def test_a_damaged_index_file_takes_nothing_down_and_prune_repairs_it(
        tmp_path: Path, damage: str) -> None:
    vault = Repository.init(LocalBackend(tmp_path / "vault"), vault_id="v1", encrypted=False,
                            pack_size=4 * BLOCK)
    _disk(vault, "b1", _blocks(5))
    _tree(vault, "t1", {b"a": _blocks(2), b"big": _blocks(2)})
    files = sorted((tmp_path / "vault" / "index").iterdir())
    assert len(files) >= 2
    bad = files[0]
    data = bad.read_bytes()
    broken = {"flip": data[:40] + bytes([data[40] ^ 1]) + data[41:],
              "truncate": data[:len(data) // 2], "garbage": b"\0" * len(data)}[damage]
    bad.write_bytes(broken)

    repo = _open(tmp_path)  # opening, loading the index: no error
    assert [f.hex() for f in repo.damaged_index_files] == [bad.name]
    assert _restores(tmp_path) == 2  # every backup still restores
    _disk(_open(tmp_path), "b2", _blocks(3))  # and new backups go on
    assert _restores(tmp_path) == 3
    report = verify(_open(tmp_path), read_data=True)
    assert [p.kind for p in report.problems] == ["damaged-index"]
    assert bad.name in report.problems[0].message and "cbr vault repair" in \
        report.problems[0].message
    assert report.damaged_backups == []

    pruned = prune(_open(tmp_path))
    assert pruned.index_files_repaired == 1
    # Gone, or written whole again under the same name (the same packs again
    # make the same bytes, whose hash is that name): either way, not damaged.
    assert not bad.exists() or bad.read_bytes() == data
    assert _open(tmp_path).damaged_index_files == {}
    assert verify(_open(tmp_path), read_data=True).ok
    assert _restores(tmp_path) == 3
