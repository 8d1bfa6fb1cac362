"""The catalog's manifest digests: a manifest that differs from the one recorded
is refused by restore and verify, and an incremental falls back to a full backup
rather than trust a parent manifest that differs."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from agent.commands.backup import _parent_content
from cbr.repo import BlobType, DiskContent, IntegrityError
from cbr.repo.maintenance import verify
from tests.unit.test_repo_repository import _init, _manifest, _open


@pytest.mark.parametrize("encrypted", [False, True])
def test_a_manifest_replaced_by_another_valid_one_is_refused_by_its_digest(
        tmp_path: Path, encrypted: bool) -> None:
    repo = _init(tmp_path, encrypted)
    seg = repo.save_blob(BlobType.META, b"segment")
    old = repo.save_manifest(_manifest(repo, "b-1", DiskContent(1 << 30, 1 << 20, 4096,
                                                                [(0, seg)])))
    new = repo.save_manifest(_manifest(repo, "b-2", DiskContent(1 << 30, 1 << 20, 4096,
                                                                [(0, seg)])))
    stored = (tmp_path / "manifests" / "b-2").read_bytes()
    assert new == hashlib.sha256(stored).hexdigest() and old != new
    reader = _open(tmp_path)
    assert reader.load_manifest("b-2", expected_sha256=new).backup_id == "b-2"
    assert _parent_content(reader, "b-2", new) is not None
    # Replay b-1's manifest under b-2's name. In an unencrypted vault it
    # still parses (only the digest can tell); encrypted, it also fails the
    # name binding, but the digest check comes first either way.
    (tmp_path / "manifests" / "b-2").write_bytes((tmp_path / "manifests" / "b-1").read_bytes())
    with pytest.raises(IntegrityError, match="replaced or replayed"):
        reader.load_manifest("b-2", expected_sha256=new)
    assert _parent_content(reader, "b-2", new) is None
    report = verify.verify(reader, expected_manifests={"b-1": old, "b-2": new})
    # (b-1 is named too: its one "segment" here is not a real disk-map segment.)
    assert "b-2" in report.damaged_backups
    assert [p.backups for p in report.problems if p.kind == "manifest-digest"] == [["b-2"]]
    assert reader.load_manifest("b-1", expected_sha256=old).backup_id == "b-1"
