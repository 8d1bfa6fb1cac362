"""The tree diff (cbr.repo.objects.diff) on real backups of real trees: what counts as
added, removed and modified, shared subtrees left unread, raw names, and a
live directory compared with its backup the way `cbr backup diff --against` does."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from agent.dataplane import Progress
from agent.dataplane.tree_backup import backup_tree
from cbr.repo import Repository, TreeContent
from cbr.repo.objects.diff import Change, Options, Summary, diff_trees, display_path
from cbr.repo.objects.tree import EntryType, TreeEntry, decode_tree, root_entry
from cbr.storage.local import LocalBackend
from cli.diff_cmd import local_entry, scan


class Reader:
    """A lister over one repository that records which directories it read."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self.read: list[bytes] = []

    def __call__(self, path: bytes, entry: TreeEntry) -> Sequence[TreeEntry]:
        self.read.append(path)
        assert entry.subtree is not None
        return decode_tree(self.repo.load_blob(entry.subtree))


def _repo(tmp_path: Path, name: str = "vault") -> Repository:
    return Repository.init(LocalBackend(tmp_path / name), vault_id=name, encrypted=False)


def _backup(repo: Repository, src: Path) -> TreeContent:
    return backup_tree(repo, src, progress=Progress()).content


BY_CHUNK_IDS = Options()


def _diff(repo: Repository, old: TreeContent, new: TreeContent,
          other: Repository | None = None, options: Options = BY_CHUNK_IDS
          ) -> tuple[dict[bytes, Change], Reader]:
    reader = Reader(repo)
    other_reader = Reader(other) if other is not None else reader
    changes = list(diff_trees(root_entry(old.root, old.root_meta),
                              root_entry(new.root, new.root_meta), reader, other_reader,
                              options=options,
                              compare_root=old.root_meta is not None
                              and new.root_meta is not None))
    paths = [c.path for c in changes]
    assert len(paths) == len(set(paths))
    return {c.path: c for c in changes}, reader


def _marks(changes: dict[bytes, Change]) -> dict[bytes, str]:
    return {path: c.letter for path, c in changes.items()}


def _tree(root: Path) -> Path:
    (root / "a").mkdir(parents=True)
    (root / "keep" / "deep").mkdir(parents=True)
    (root / "a" / "x.txt").write_bytes(b"hello")
    (root / "a" / "y.txt").write_bytes(b"going")
    (root / "keep" / "deep" / "same.txt").write_bytes(b"unchanged")
    (root / "keep" / "mode.txt").write_bytes(b"mode")
    return root


def test_added_removed_content_and_metadata_changes_are_told_apart(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    repo = _repo(tmp_path)
    first = _backup(repo, src)
    x = src / "a" / "x.txt"
    before = os.stat(x)
    x.write_bytes(b"HELLO")  # same size and mtime: only the chunk ids tell
    os.utime(x, ns=(before.st_atime_ns, before.st_mtime_ns))
    (src / "a" / "y.txt").unlink()
    (src / "a" / "new.txt").write_bytes(b"new file")
    os.chmod(src / "keep" / "mode.txt", 0o600)
    second = _backup(repo, src)  # no parent: every file is read again

    changes, _ = _diff(repo, first, second)
    assert _marks(changes) == {b"/a": "U", b"/a/new.txt": "+", b"/a/x.txt": "M",
                               b"/a/y.txt": "-", b"/keep/mode.txt": "U"}
    assert changes[b"/a/x.txt"].what == ("content",)
    assert changes[b"/a"].what == ("mtime",)
    assert changes[b"/keep/mode.txt"].what == ("mode",)
    summary = Summary()
    for change in changes.values():
        summary.count(change)
    assert summary.to_dict() == {"added": 1, "removed": 1, "modified": 3,
                                 "bytes_added": len(b"new file") + 5,
                                 "bytes_removed": len(b"going") + 5}


def test_identical_subtrees_are_skipped_without_being_read(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    repo = _repo(tmp_path)
    first = _backup(repo, src)
    (src / "a" / "x.txt").write_bytes(b"changed and longer")
    second = _backup(repo, src)
    changes, reader = _diff(repo, first, second)
    assert set(changes) == {b"/a/x.txt"}
    assert sorted(set(reader.read)) == [b"", b"/a"]  # each side read once
    assert changes[b"/a/x.txt"].what[:2] == ("content", "size")
    assert b"/keep" not in reader.read and b"/keep/deep" not in reader.read
    assert _diff(repo, first, first)[1].read == []  # the same root: nothing is read


def test_a_file_that_became_a_directory_is_a_type_change_then_its_contents_added(
        tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    repo = _repo(tmp_path)
    first = _backup(repo, src)
    (src / "a" / "x.txt").unlink()
    (src / "a" / "x.txt").mkdir()
    (src / "a" / "x.txt" / "inner").write_bytes(b"inside")
    second = _backup(repo, src)
    changes, _ = _diff(repo, first, second)
    assert changes[b"/a/x.txt"].letter == "T" and changes[b"/a/x.txt"].what == ("type",)
    assert changes[b"/a/x.txt"].type is EntryType.DIR
    assert changes[b"/a/x.txt/inner"].letter == "+"
    back, _ = _diff(repo, second, first)
    assert back[b"/a/x.txt"].letter == "T" and back[b"/a/x.txt/inner"].letter == "-"


def test_a_renamed_directory_is_removed_and_added_with_everything_in_it(
        tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    repo = _repo(tmp_path)
    first = _backup(repo, src)
    os.rename(src / "keep", src / "kept")
    second = _backup(repo, src)
    changes, _ = _diff(repo, first, second)
    marks = _marks(changes)
    for inside in (b"", b"/deep", b"/deep/same.txt", b"/mode.txt"):
        assert marks[b"/keep" + inside] == "-"
        assert marks[b"/kept" + inside] == "+"


def test_names_that_are_not_utf8_keep_their_bytes(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    repo = _repo(tmp_path)
    first = _backup(repo, src)
    (src / os.fsdecode(b"caf\xe9")).write_bytes(b"latin-1 name")
    second = _backup(repo, src)
    changes, _ = _diff(repo, first, second)
    assert changes[b"/caf\xe9"].letter == "+"
    assert display_path(b"/caf\xe9") == "/caf\\xe9"


def test_the_roots_own_metadata_is_compared_when_both_backups_kept_it(
        tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    repo = _repo(tmp_path)
    root = _backup(repo, src).root
    old = TreeContent(root, {"type": "dir", "mode": 0o755, "mtime": 5, "atime": 1})
    new = TreeContent(root, {"type": "dir", "mode": 0o700, "mtime": 5, "atime": 2})
    changes, _ = _diff(repo, old, new)
    assert changes[b"/"].what == ("mode",) and len(changes) == 1
    assert _diff(repo, old, TreeContent(root))[0] == {}  # one side without root_meta


def test_backups_of_two_namespaces_compare_content_by_size_and_mtime(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    one, two = _repo(tmp_path, "one"), _repo(tmp_path, "two")
    first, second = _backup(one, src), _backup(two, src)
    assert first.root != second.root  # keyed ids of two vaults are unrelated
    options = Options(content_ids=False)
    assert _diff(one, first, second, two, options)[0] == {}
    (src / "a" / "x.txt").write_bytes(b"hello, longer")
    changed, _ = _diff(one, first, _backup(two, src), two, options)
    assert changed[b"/a/x.txt"].what[:2] == ("content", "size")


def test_a_live_directory_matches_its_backup_and_then_shows_its_changes(
        tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    os.symlink("../a/x.txt", src / "keep" / "link")
    os.link(src / "a" / "x.txt", src / "hard")
    with_xattr = True
    try:
        os.setxattr(src / "a" / "y.txt", "user.note", b"v")
    except OSError:
        with_xattr = False
    repo = _repo(tmp_path)
    content = _backup(repo, src)
    root = os.fsencode(src)
    options = Options(content_ids=False, loose_hardlinks=True)

    def live() -> dict[bytes, Change]:
        local_root = local_entry(b"", os.lstat(root), root)
        return {c.path: c for c in diff_trees(
            root_entry(content.root, None), local_root, Reader(repo),
            lambda path, _e: scan(root + path), options=options, compare_root=False)}

    assert live() == {}
    (src / "keep" / "mode.txt").write_bytes(b"grown by a few bytes")
    shutil.rmtree(src / "keep" / "deep")
    if with_xattr:
        os.setxattr(src / "a" / "y.txt", "user.note", b"w")
    marks = _marks(live())
    assert marks[b"/keep/mode.txt"] == "M" and marks[b"/keep/deep"] == "-"
    assert marks[b"/keep/deep/same.txt"] == "-"
    if with_xattr:
        assert live()[b"/a/y.txt"].what == ("xattrs",)
