"""verify's read_data_subset: "n/t" parts are disjoint and cover every pack,
so t runs rotating through the parts read the whole vault once and find
damage in whichever part it lies; "P%" reads about that share."""

from __future__ import annotations

from pathlib import Path

import pytest

from cbr.repo import Repository
from cbr.repo.maintenance.subset import DataSubset, part_of, rotated
from cbr.repo.maintenance.verify import verify
from cbr.storage.local import LocalBackend
from tests.unit.test_repo_prune import BLOCK, _blocks, _disk, _open
from tests.unit.test_repo_verify import _location, _pack_path


@pytest.fixture
def vault(tmp_path: Path) -> Repository:
    return Repository.init(LocalBackend(tmp_path / "vault"), vault_id="v1", encrypted=False,
                           pack_size=2 * BLOCK)


@pytest.mark.parametrize(("text", "parsed"), [
    ("1/5", DataSubset(part=1, total=5)), ("5/5", DataSubset(part=5, total=5)),
    (" 2/3 ", DataSubset(part=2, total=3)), ("10%", DataSubset(percent=10.0)),
    ("2.5%", DataSubset(percent=2.5)), ("100%", DataSubset(percent=100.0)),
])
def test_subsets_parse_like_restics(text: str, parsed: DataSubset) -> None:
    assert DataSubset.parse(text) == parsed
    assert DataSubset.parse(str(parsed)) == parsed


@pytest.mark.parametrize(("text", "words"), [
    ("0/5", "n must be 1 to t"), ("6/5", "n must be 1 to t"), ("1/0", "t must be 1 to"),
    ("0%", "more than 0"), ("101%", "at most 100"), ("half", "neither n/t"), ("", "neither"),
])
def test_bad_subsets_are_refused_saying_why(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        DataSubset.parse(text)


def test_rotation_walks_the_parts_in_turn() -> None:
    subset = DataSubset.parse("3/4")  # n does not matter on a policy: run k reads part k
    assert [rotated(subset, k).part for k in range(1, 10)] == [1, 2, 3, 4, 1, 2, 3, 4, 1]
    assert rotated(DataSubset.parse("5%"), 7) == DataSubset(percent=5.0)


def test_parts_are_disjoint_cover_all_and_are_stable() -> None:
    ids = [bytes([i, 255 - i]) * 16 for i in range(200)]
    parts = [DataSubset(part=n, total=7).select(ids) for n in range(1, 8)]
    assert sorted(p for part in parts for p in part) == sorted(ids)
    assert all(len(part) > 0 for part in parts)
    assert all(part_of(p, 7) == n for n, part in enumerate(parts, 1) for p in part)
    assert DataSubset(part=3, total=7).select(ids) == parts[2]


def test_t_rotated_runs_read_every_pack_once_and_find_damage_in_its_part(
        tmp_path: Path, vault: Repository) -> None:
    blocks = _blocks(24)
    _disk(vault, "b1", blocks)
    all_packs = sorted(_open(tmp_path).index.pack_ids())
    assert len(all_packs) >= 8
    _cid, loc = _location(tmp_path, blocks[5])
    path = _pack_path(tmp_path, loc.pack_id)
    raw = bytearray(path.read_bytes())
    raw[loc.offset + 3] ^= 0x01
    path.write_bytes(bytes(raw))
    total = 4
    subset = DataSubset.parse(f"1/{total}")
    reads, found_in = 0, []
    for run in range(1, total + 1):
        report = verify(_open(tmp_path), subset=rotated(subset, run))
        assert report.read_data_subset == f"{run}/{total}"
        assert report.packs_checked == len(all_packs)  # presence and size: every pack
        reads += report.packs_read
        if not report.ok:
            found_in.append(run)
            assert report.damaged_backups == ["b1"]
    assert reads == len(all_packs)
    assert found_in == [part_of(loc.pack_id, total)]
    assert verify(_open(tmp_path)).ok  # the structure check alone does not see it


def test_a_percentage_reads_about_that_share(tmp_path: Path, vault: Repository) -> None:
    _disk(vault, "b1", _blocks(24))
    packs = len(_open(tmp_path).index.pack_ids())
    assert verify(_open(tmp_path), subset=DataSubset.parse("100%")).packs_read == packs
    some = verify(_open(tmp_path), subset=DataSubset.parse("50%"))
    assert some.ok and 0 <= some.packs_read <= packs and some.read_data_subset == "50%"
