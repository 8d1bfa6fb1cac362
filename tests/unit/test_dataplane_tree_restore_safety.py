"""Restore never writes outside its target, whatever a (crafted) backup holds.

Each test writes tree blobs by hand, as raw JSON that no encoder checked, puts
a canary directory beside the target, and asserts the canary is untouched
and nothing appeared outside the target, besides what the test expects.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from agent.dataplane import Progress, UnsafeTarget
from agent.dataplane.tree_restore import restore_tree
from cbr.repo import BlobType, IntegrityError, Repository, TreeContent
from cbr.storage.local import LocalBackend


@pytest.fixture()
def env(tmp_path: Path) -> tuple[Repository, Path, Path]:
    """(repository, outside canary dir, target dir path)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("original")
    repo = Repository.init(LocalBackend(tmp_path / "vault"), vault_id="v1", encrypted=False)
    return repo, outside, tmp_path / "target"


def _outside_untouched(outside: Path) -> None:
    assert sorted(p.name for p in outside.iterdir()) == ["keep"]
    assert (outside / "keep").read_text() == "original"
    top = sorted(p.name for p in outside.parent.iterdir())
    assert set(top) <= {"outside", "vault", "target"}, top


def _raw_tree(repo: Repository, entries: list[dict[str, object]]) -> bytes:
    """A tree blob written directly, bypassing every check encode_tree makes."""
    doc = json.dumps({"v": 1, "entries": entries}, sort_keys=True).encode()
    return repo.save_blob(BlobType.META, doc)


def _file(repo: Repository, name: str, body: bytes, **extra: object) -> dict[str, object]:
    cid = repo.save_blob(BlobType.DATA, body)
    return {"name": name, "type": "file", "mode": 0o644, "size": len(body),
            "content": [cid.hex()], **extra}


def _restore(repo: Repository, root: bytes, target: Path) -> None:
    repo.flush()
    restore_tree(repo, TreeContent(root), target, progress=Progress())


@pytest.mark.parametrize("name", ["..", ".", "a/b", "../outside/keep", "/etc/x",
                                  "/tmp/abs", "", "nul\x00x"])
def test_unsafe_names_are_refused(env: tuple[Repository, Path, Path], name: str) -> None:
    repo, outside, target = env
    root = _raw_tree(repo, [_file(repo, name, b"evil")])
    with pytest.raises(UnsafeTarget):
        _restore(repo, root, target)
    _outside_untouched(outside)


@pytest.mark.parametrize("raw", [b"..", b".", b"a/b", b"/abs", b"x\x00y", b""])
def test_unsafe_names_in_base64_are_refused(env: tuple[Repository, Path, Path],
                                             raw: bytes) -> None:
    repo, outside, target = env
    entry = _file(repo, "x", b"evil")
    del entry["name"]
    entry["name_b"] = base64.b64encode(raw).decode()
    with pytest.raises(UnsafeTarget):
        _restore(repo, _raw_tree(repo, [entry]), target)
    _outside_untouched(outside)


def test_an_unsafe_name_deep_in_a_subtree_is_refused(
        env: tuple[Repository, Path, Path]) -> None:
    repo, outside, target = env
    inner = _raw_tree(repo, [_file(repo, "../../outside/pwned", b"evil")])
    root = _raw_tree(repo, [{"name": "d", "type": "dir", "mode": 0o755,
                             "subtree": inner.hex()}])
    with pytest.raises(UnsafeTarget):
        _restore(repo, root, target)
    _outside_untouched(outside)


def test_duplicate_names_in_a_directory_are_refused(
        env: tuple[Repository, Path, Path]) -> None:
    repo, outside, target = env
    root = _raw_tree(repo, [_file(repo, "same", b"one"), _file(repo, "same", b"two")])
    with pytest.raises(UnsafeTarget):
        _restore(repo, root, target)
    _outside_untouched(outside)


def test_a_symlink_then_a_directory_of_the_same_name_cannot_escape(
        env: tuple[Repository, Path, Path]) -> None:
    repo, outside, target = env
    inner = _raw_tree(repo, [_file(repo, "pwned", b"evil")])
    root = _raw_tree(repo, [
        {"name": "link", "type": "symlink", "target": str(outside)},
        {"name": "link", "type": "dir", "mode": 0o755, "subtree": inner.hex()},
    ])
    with pytest.raises(UnsafeTarget):
        _restore(repo, root, target)
    _outside_untouched(outside)


def test_a_symlink_then_a_file_through_it_cannot_escape(
        env: tuple[Repository, Path, Path]) -> None:
    repo, outside, target = env
    root = _raw_tree(repo, [
        {"name": "link", "type": "symlink", "target": str(outside)},
        _file(repo, "link/pwned", b"evil"),
    ])
    with pytest.raises(UnsafeTarget):
        _restore(repo, root, target)
    _outside_untouched(outside)


def test_symlinks_are_restored_verbatim_and_never_followed(
        env: tuple[Repository, Path, Path]) -> None:
    repo, outside, target = env
    root = _raw_tree(repo, [
        {"name": "abs", "type": "symlink", "target": str(outside / "keep")},
        {"name": "up", "type": "symlink", "target": "../outside"},
        {"name": "z-file", "type": "file", "mode": 0o600, "size": 0},
    ])
    _restore(repo, root, target)
    assert os.readlink(target / "abs") == str(outside / "keep")
    assert os.readlink(target / "up") == "../outside"
    _outside_untouched(outside)


def test_a_hardlink_through_a_restored_symlink_is_refused(
        env: tuple[Repository, Path, Path]) -> None:
    repo, outside, target = env
    root = _raw_tree(repo, [
        {"name": "link", "type": "symlink", "target": str(outside)},
        {"name": "z", "type": "hardlink", "link": [{"name": "link"}, {"name": "keep"}]},
    ])
    with pytest.raises(UnsafeTarget):
        _restore(repo, root, target)
    _outside_untouched(outside)


@pytest.mark.parametrize("link", [
    [{"name": ".."}, {"name": "outside"}, {"name": "keep"}],
    [{"name": "/abs"}],
    [{"name_b": base64.b64encode(b"..").decode()}],
    [{"name": "later"}],  # restored after the hardlink, not before
    [{"name": "nowhere"}],
    [{"name": "d"}],  # a directory, not a file
    [{"name": "a"}],  # itself
], ids=["dotdot", "absolute", "base64-dotdot", "ahead", "missing", "directory", "self"])
def test_hardlinks_pointing_outside_ahead_or_at_non_files_are_refused(
        env: tuple[Repository, Path, Path], link: list[dict[str, str]]) -> None:
    repo, outside, target = env
    empty = _raw_tree(repo, [])
    root = _raw_tree(repo, [
        {"name": "a", "type": "hardlink", "link": link},
        {"name": "d", "type": "dir", "mode": 0o755, "subtree": empty.hex()},
        _file(repo, "later", b"x", nlink=2),
    ])
    with pytest.raises(UnsafeTarget):
        _restore(repo, root, target)
    _outside_untouched(outside)


def test_a_valid_hardlink_to_a_file_restored_earlier_is_linked(
        env: tuple[Repository, Path, Path]) -> None:
    repo, outside, target = env
    inner = _raw_tree(repo, [{"name": "second", "type": "hardlink",
                              "link": [{"name": "first"}]}])
    root = _raw_tree(repo, [
        _file(repo, "first", b"body", nlink=2),
        {"name": "sub", "type": "dir", "mode": 0o755, "subtree": inner.hex()},
    ])
    _restore(repo, root, target)
    assert os.stat(target / "first").st_ino == os.stat(target / "sub" / "second").st_ino
    _outside_untouched(outside)


def test_symlinks_already_in_the_target_are_replaced_not_followed(
        env: tuple[Repository, Path, Path]) -> None:
    repo, outside, target = env
    target.mkdir()
    os.symlink(outside, target / "dir")
    os.symlink(outside / "keep", target / "file")
    os.symlink(outside, target / "link")
    os.symlink(outside / "keep", target / "fifo")
    inner = _raw_tree(repo, [_file(repo, "keep", b"evil")])
    root = _raw_tree(repo, [
        {"name": "dir", "type": "dir", "mode": 0o755, "subtree": inner.hex()},
        _file(repo, "file", b"evil too"),
        {"name": "fifo", "type": "fifo", "mode": 0o644},
        {"name": "link", "type": "symlink", "target": "elsewhere"},
    ])
    _restore(repo, root, target)
    _outside_untouched(outside)
    assert (target / "dir").is_dir() and not (target / "dir").is_symlink()
    assert (target / "dir" / "keep").read_bytes() == b"evil"
    assert (target / "file").read_bytes() == b"evil too" and not (target / "file").is_symlink()
    assert os.readlink(target / "link") == "elsewhere"
    assert not (target / "fifo").is_symlink()


def test_a_symlinked_target_subdirectory_is_not_entered_for_a_single_file(
        env: tuple[Repository, Path, Path]) -> None:
    repo, outside, target = env
    target.mkdir()
    os.symlink(outside, target / "d")
    inner = _raw_tree(repo, [_file(repo, "keep", b"evil")])
    root = _raw_tree(repo, [{"name": "d", "type": "dir", "mode": 0o755,
                             "subtree": inner.hex()}])
    repo.flush()
    restore_tree(repo, TreeContent(root), target, path=[b"d"], progress=Progress())
    _outside_untouched(outside)
    assert (target / "d" / "keep").read_bytes() == b"evil"


def test_a_damaged_chunk_fails_the_restore_and_leaves_no_file_under_its_name(
        env: tuple[Repository, Path, Path]) -> None:
    repo, outside, target = env
    good = repo.save_blob(BlobType.DATA, b"g" * 1000)
    bad = repo.save_blob(BlobType.DATA, os.urandom(1000))  # incompressible: stored raw
    root = _raw_tree(repo, [{"name": "f", "type": "file", "mode": 0o644, "size": 2000,
                             "content": [good.hex(), bad.hex()]}])
    repo.flush()
    location = repo.index.lookup(repo.config.chunk_key_id, bad)
    assert location is not None
    pack = _pack_file(outside.parent, location.pack_id)
    data = bytearray(pack.read_bytes())
    data[location.offset + 10] ^= 0xFF
    pack.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=bad.hex()):
        restore_tree(repo, TreeContent(root), target, progress=Progress())
    assert sorted(p.name for p in target.iterdir()) == []
    _outside_untouched(outside)


def _pack_file(tmp_path: Path, pack_id: bytes) -> Path:
    [found] = list((tmp_path / "vault").rglob(pack_id.hex()))
    return found
