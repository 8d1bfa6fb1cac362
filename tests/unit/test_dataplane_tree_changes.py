"""The change journal of trees (fanotify): an incremental looks again at
exactly the names that changed, gives the tree a full walk would, and falls
back to the full walk whenever the journal cannot be trusted."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import agent.dataplane.changes as changes_module
import agent.dataplane.tree as tree_module
import agent.dataplane.tree_files as files_module
import agent.dataplane.tree_restore as restore_module
from agent.dataplane import Progress
from agent.dataplane.changed_dirs import ChangedDirs
from agent.dataplane.changes import TreeWatch, Unavailable
from agent.dataplane.fanotify import FAN_Q_OVERFLOW, METADATA
from agent.dataplane.tree_backup import backup_tree
from agent.dataplane.tree_restore import restore_tree
from agent.dataplane.watches import TreeWatches, track
from cbr.repo import Repository, TreeContent
from cbr.repo.objects.tree import decode_tree
from cbr.storage.local import LocalBackend

from .test_dataplane_tree import _snapshot


@pytest.fixture
def watches(tmp_path: Path) -> Iterator[TreeWatches]:
    try:
        TreeWatch(tmp_path).close()
    except Unavailable as exc:
        pytest.skip(f"fanotify cannot watch {tmp_path} here: {exc}")
    ws = TreeWatches()
    yield ws
    ws.close()


def _elsewhere(code: str) -> None:
    """Changes made by another process, as users make them: the journal
    leaves out the agent's own writes."""
    subprocess.run([sys.executable, "-c", textwrap.dedent(code)], check=True)


def _tree(root: Path) -> Path:
    for d in ("d1", "d2/sub", "d3", "d5/deep"):
        (root / d).mkdir(parents=True)
    for f in ("d1/f1", "d1/f2", "d1/f3", "d2/g1", "d2/sub/h1", "d3/k1", "d5/deep/z", "top"):
        (root / f).write_text(f"content of {f}\n")
    os.symlink("d1/f1", root / "link")
    return root


def _backup(repo: Repository, root: Path, backup_id: str, parent: TreeContent | None,
            watches: TreeWatches, parent_id: str | None) -> tuple[TreeContent,
                                                                  ChangedDirs | None, Any]:
    tracking = track(root, parent_id, watches)
    result = backup_tree(repo, root, parent=parent, progress=Progress(),
                         changed=tracking.changed)
    tracking.commit(backup_id, result.recheck_dirs)
    assert isinstance(result.content, TreeContent)
    return result.content, tracking.changed, result


def _why(watches: TreeWatches, root: Path) -> str:
    """Why the journal said to walk everything (for a failing assertion)."""
    watch = watches.watch(root)
    return watch.reason if watch is not None else watches.why_not(root)


def _vault(tmp_path: Path) -> Repository:
    return Repository.init(LocalBackend(tmp_path / "vault"), vault_id="v1", encrypted=False)


def _first_backup(tmp_path: Path,
                  watches: TreeWatches) -> tuple[Path, Repository, TreeContent]:
    """The sample tree, a vault, and the tree's first backup under ``watches``."""
    root = _tree(tmp_path / "src")
    repo = _vault(tmp_path)
    first, _, _ = _backup(repo, root, "b1", None, watches, None)
    return root, repo, first


def _flat(repo: Repository, tree_id: bytes, prefix: str = "") -> dict[str, dict[str, Any]]:
    """Every entry of a stored tree, but for access times (a journal does not
    see reads) and subtree ids (which hold access times below)."""
    out: dict[str, dict[str, Any]] = {}
    for e in decode_tree(repo.load_blob(tree_id)):
        path = prefix + os.fsdecode(e.name)
        doc = e.to_doc()
        for volatile in ("atime", "subtree"):
            doc.pop(volatile, None)
        out[path] = doc
        if e.subtree is not None:
            out.update(_flat(repo, e.subtree, path + "/"))
    return out


def test_an_incremental_looks_again_at_exactly_the_changed_names(
        tmp_path: Path, watches: TreeWatches) -> None:
    root = _tree(tmp_path / "src")
    repo = _vault(tmp_path)
    first, changed, _ = _backup(repo, root, "b1", None, watches, None)
    assert changed is None  # a first backup walks everything
    _elsewhere(f"""
        import os
        root = {str(root)!r}
        open(root + "/d1/f2", "a").write("appended\\n")
        os.chmod(root + "/d1/f3", 0o600)
        open(root + "/d2/sub/new", "w").write("new file\\n")
        os.unlink(root + "/d3/k1")
        os.mkdir(root + "/d4")
        open(root + "/d4/x", "w").write("in a new directory\\n")
    """)
    second, changed, result = _backup(repo, root, "b2", first, watches, "b1")
    assert changed is not None, watches.watch(root).reason  # type: ignore[union-attr]
    assert changed.dirty == {
        (b"d1",): {b"f2", b"f3"},
        (b"d2", b"sub"): {b"new"},
        (b"d2",): {b"sub"},  # the new file changed sub's mtime, which d2 records
        (b"d3",): {b"k1"},
        (b"d4",): {b"x"},
        (): {b"d1", b"d3", b"d4"},
    }
    # d5 saw nothing: its subtree is the parent's, not visited
    assert result.stats["dirs_unchanged_by_journal"] == 1
    walked = backup_tree(repo, root, parent=first, progress=Progress())
    assert isinstance(walked.content, TreeContent)
    assert _flat(repo, second.root) == _flat(repo, walked.content.root)
    restore_tree(repo, second, tmp_path / "out", progress=Progress())
    assert _snapshot(tmp_path / "out") == _snapshot(root)


def test_a_renamed_directory_is_walked_in_full_where_it_is_now(
        tmp_path: Path, watches: TreeWatches) -> None:
    root, repo, first = _first_backup(tmp_path, watches)
    _elsewhere(f"""
        import os
        root = {str(root)!r}
        os.rename(root + "/d2", root + "/moved")
        open(root + "/moved/sub/h1", "w").write("written after the move\\n")
        os.rename(root + "/d5/deep", root + "/d1/deep")
    """)
    second, changed, _ = _backup(repo, root, "b2", first, watches, "b1")
    assert changed is not None, _why(watches, root)
    assert changed.names(()) is not None and {b"d2", b"moved"} <= changed.names(())
    restore_tree(repo, second, tmp_path / "out", progress=Progress())
    assert _snapshot(tmp_path / "out") == _snapshot(root)


def test_changes_made_while_a_backup_runs_are_in_the_next_one(
        tmp_path: Path, watches: TreeWatches) -> None:
    root = _tree(tmp_path / "src")
    repo = _vault(tmp_path)
    tracking = track(root, None, watches)
    result = backup_tree(repo, root, progress=Progress())
    _elsewhere(f"open({str(root / 'd3' / 'k1')!r}, 'w').write('during the backup')")
    tracking.commit("b1", result.recheck_dirs)
    assert isinstance(result.content, TreeContent)
    second, changed, _ = _backup(repo, root, "b2", result.content, watches, "b1")
    assert changed is not None, _why(watches, root)
    assert changed.names((b"d3",)) == {b"k1"}
    restore_tree(repo, second, tmp_path / "out", progress=Progress())
    assert (tmp_path / "out" / "d3" / "k1").read_text() == "during the backup"


def _write_through_a_link_outside(tmp_path: Path, watches: TreeWatches, *, keep_link: bool
                                  ) -> tuple[Path, ChangedDirs | None]:
    """A file of the tree linked from outside it and written through that
    name, which reports a change outside the tree."""
    root, repo, first = _first_backup(tmp_path, watches)
    outside = tmp_path / "outside"
    _elsewhere(f"""
        import os
        os.link({str(root / 'd5' / 'deep' / 'z')!r}, {str(outside)!r})
        open({str(outside)!r}, "a").write("written through a name outside the tree")
        if not {keep_link}:
            os.unlink({str(outside)!r})
    """)
    second, changed, _ = _backup(repo, root, "b2", first, watches, "b1")
    restore_tree(repo, second, tmp_path / "out", progress=Progress())
    assert _snapshot(tmp_path / "out") == _snapshot(root)
    return root, changed


def test_a_hard_link_kept_outside_the_tree_is_looked_up_in_the_parent_not_walked(
        tmp_path: Path, watches: TreeWatches) -> None:
    root, changed = _write_through_a_link_outside(tmp_path, watches, keep_link=True)
    z = os.stat(root / "d5" / "deep" / "z")
    assert changed is not None, _why(watches, root)
    assert changed.inodes == {(z.st_dev, z.st_ino)}
    assert (tmp_path / "out" / "d5" / "deep" / "z").read_text().endswith("outside the tree")


def test_a_hard_link_made_and_removed_outside_marks_the_file_it_touched(
        tmp_path: Path, watches: TreeWatches) -> None:
    root, changed = _write_through_a_link_outside(tmp_path, watches, keep_link=False)
    # Told where it is while the event was read, or (on a busy machine, when
    # the kernel could no longer name it) looked up in the parent backup.
    z = os.stat(root / "d5" / "deep" / "z")
    assert changed is not None, _why(watches, root)
    assert changed.names((b"d5", b"deep")) == {b"z"} or (z.st_dev, z.st_ino) in changed.inodes


def test_unrelated_activity_on_the_file_system_never_costs_the_tree_its_journal(
        tmp_path: Path, watches: TreeWatches) -> None:
    """Other programs write, rename, link and delete elsewhere on the same
    file system, as on a busy host, during the day and during the backup."""
    root, repo, first = _first_backup(tmp_path, watches)
    busy = tmp_path / "busy"
    busy.mkdir()
    old = busy / "old"
    old.write_text("born before the tree's backup\n")
    stop = tmp_path / "stop"
    script = textwrap.dedent(f"""
        import os, shutil
        busy, stop = {str(busy)!r}, {str(stop)!r}
        i = 0
        while not os.path.exists(stop):
            d = os.path.join(busy, "d%d" % (i % 7))
            os.makedirs(d, exist_ok=True)
            with open(os.path.join(d, "f"), "w") as fh:
                fh.write("x" * i)
            os.link(os.path.join(d, "f"), os.path.join(d, "g%d" % i))
            os.link(os.path.join(busy, "old"), os.path.join(busy, "old%d" % (i % 3)))
            os.unlink(os.path.join(busy, "old%d" % (i % 3)))
            os.rename(d, d + "-moved")
            shutil.rmtree(d + "-moved")
            i += 1
    """)
    writer = subprocess.Popen([sys.executable, "-c", script])
    try:
        _elsewhere(f"open({str(root / 'd3' / 'k1')!r}, 'a').write('changed during the day')")
        second, changed, _ = _backup(repo, root, "b2", first, watches, "b1")
    finally:
        stop.touch()
        writer.wait(timeout=30)
    assert writer.returncode == 0
    assert changed is not None, watches.watch(root).reason  # type: ignore[union-attr]
    assert b"k1" in (changed.names((b"d3",)) or ())
    restore_tree(repo, second, tmp_path / "out", progress=Progress())
    assert _snapshot(tmp_path / "out") == _snapshot(root)


def test_directories_with_hard_linked_files_are_always_listed_again(
        tmp_path: Path, watches: TreeWatches) -> None:
    root = _tree(tmp_path / "src")
    os.link(root / "d1" / "f1", root / "d3" / "also-f1")
    repo = _vault(tmp_path)
    first, _, _ = _backup(repo, root, "b1", None, watches, None)
    _elsewhere(f"open({str(root / 'top')!r}, 'a').write('x')")
    _, changed, _ = _backup(repo, root, "b2", first, watches, "b1")
    assert changed is not None, _why(watches, root)
    assert changed.names((b"d1",)) is None and changed.names((b"d3",)) is None


def test_a_restore_into_the_tree_makes_the_next_backup_walk_it_all(
        tmp_path: Path, watches: TreeWatches, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(restore_module, "WATCHES", watches)
    root, repo, first = _first_backup(tmp_path, watches)
    (root / "d1" / "f1").write_text("changed by this very process")
    restore_tree(repo, first, root / "d2", progress=Progress())
    _, changed, _ = _backup(repo, root, "b2", first, watches, "b1")
    assert changed is None
    assert watches.watch(root).reason == "a restore wrote into the tree"  # type: ignore[union-attr]


@pytest.mark.parametrize(("event", "reason"), [
    (METADATA.pack(METADATA.size, 3, 0, METADATA.size, FAN_Q_OVERFLOW, -1, 1),
     "the kernel's event queue overflowed"),
    (METADATA.pack(8, 3, 0, METADATA.size, 0, -1, 1), "a malformed event"),
    # an info record that claims more bytes than its event holds
    (METADATA.pack(METADATA.size + 4, 3, 0, METADATA.size, 2, -1, 1) + b"\x02\0\xff\0",
     "a malformed event"),
])
def test_an_overflowed_or_unreadable_journal_makes_the_next_backup_walk_it_all(
        tmp_path: Path, watches: TreeWatches, event: bytes, reason: str) -> None:
    root, repo, first = _first_backup(tmp_path, watches)
    watch = watches.watch(root)
    assert watch is not None
    with watch._lock:
        watch._parse(event)
    _, changed, _ = _backup(repo, root, "b2", first, watches, "b1")
    assert changed is None and watch.reason == reason


def test_a_parent_not_taken_under_the_watch_or_too_old_is_walked_in_full(
        tmp_path: Path, watches: TreeWatches) -> None:
    root, repo, first = _first_backup(tmp_path, watches)
    _, changed, _ = _backup(repo, root, "b2", first, watches, "elsewhere")
    assert changed is None
    watch = watches.watch(root)
    assert watch is not None and "not taken under this watch" in watch.reason
    watch.full_walk_interval = 0
    _, changed, _ = _backup(repo, root, "b3", first, watches, "b1")
    assert changed is None and watch.reason == "the periodic full walk is due"


def test_a_restore_elsewhere_on_the_file_system_pauses_the_journal_then_it_resumes(
        tmp_path: Path, watches: TreeWatches, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(restore_module, "WATCHES", watches)
    root, repo, first = _first_backup(tmp_path, watches)
    restore_tree(repo, first, tmp_path / "elsewhere", progress=Progress())
    _elsewhere(f"open({str(root / 'top')!r}, 'a').write('after the restore')")
    second, changed, _ = _backup(repo, root, "b2", first, watches, "b1")
    watch = watches.watch(root)
    assert watch is not None
    assert changed is None and watch.reason == "a restore ran on the tree's file system"
    _elsewhere(f"open({str(root / 'd3' / 'k1')!r}, 'a').write('and later')")
    third, changed, _ = _backup(repo, root, "b3", second, watches, "b2")
    assert changed is not None, _why(watches, root)
    assert changed.names((b"d3",)) == {b"k1"}
    restore_tree(repo, third, tmp_path / "out", progress=Progress())
    assert _snapshot(tmp_path / "out") == _snapshot(root)


def test_a_replaced_root_directory_gets_a_new_watch(
        tmp_path: Path, watches: TreeWatches) -> None:
    root = _tree(tmp_path / "src")
    old = watches.watch(root)
    (tmp_path / "src").rename(tmp_path / "old")
    _tree(tmp_path / "src")
    new = watches.watch(root)
    assert old is not None and new is not None and new is not old and new.same_root()


def test_a_directory_where_something_could_not_be_read_is_listed_again(
        tmp_path: Path, watches: TreeWatches, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _tree(tmp_path / "src")
    repo = _vault(tmp_path)
    blocked = os.fsencode(root / "d5" / "deep" / "z")
    read_small, read_any = files_module.FileReader._read_small, files_module.FileReader._read_any

    def small(self: Any, fd: int, st: os.stat_result) -> Any:
        return None if os.fstat(fd).st_ino == os.stat(blocked).st_ino else read_small(self, fd, st)

    def careful(self: Any, path: bytes, st: os.stat_result) -> Any:
        if path == blocked:
            return files_module.FileResult(vanished=True, warning="unreadable: z: denied")
        return read_any(self, path, st)

    with monkeypatch.context() as patch:
        patch.setattr(files_module.FileReader, "_read_small", small)
        patch.setattr(files_module.FileReader, "_read_any", careful)
        first, _, result = _backup(repo, root, "b1", None, watches, None)
    assert result.warnings == ["unreadable: z: denied"]
    second, changed, _ = _backup(repo, root, "b2", first, watches, "b1")
    assert changed is not None, _why(watches, root)
    assert changed.names((b"d5", b"deep")) is None
    restore_tree(repo, second, tmp_path / "out", progress=Progress())
    assert (tmp_path / "out" / "d5" / "deep" / "z").read_text() == "content of d5/deep/z\n"


def _snapshot_with_root(root: Path) -> dict[str, Any]:
    st = os.lstat(root)
    return {"/": (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns,
                  {k: os.getxattr(root, k) for k in os.listxattr(root)}),
            **_snapshot(root)}


def test_a_directory_deleted_and_made_again_is_listed_in_full(
        tmp_path: Path, watches: TreeWatches) -> None:
    """The reduced case of the issue: every c.txt deleted with its directory
    must stay deleted, though each directory is made again under its name,
    and while a hard link is made elsewhere on the file system."""
    root = tmp_path / "src"
    for i in range(300):
        (root / "many" / f"d{i:03}").mkdir(parents=True)
        for name in ("a.txt", "b.txt", "c.txt"):
            (root / "many" / f"d{i:03}" / name).write_text(f"{i} {name}\n")
    (tmp_path / "elsewhere").write_text("an unrelated file\n")
    repo = _vault(tmp_path)
    first, _, _ = _backup(repo, root, "b1", None, watches, None)
    _elsewhere(f"""
        import os, shutil
        root = {str(root)!r}
        shutil.rmtree(root + "/many")
        for i in range(300):
            os.makedirs(root + "/many/d%03d" % i)
            for name in ("a.txt", "b.txt"):
                open(root + "/many/d%03d/" % i + name, "w").write("new %d %s\\n" % (i, name))
        os.link({str(tmp_path / "elsewhere")!r}, {str(tmp_path / "elsewhere-too")!r})
    """)
    second, changed, _ = _backup(repo, root, "b2", first, watches, "b1")
    assert changed is not None, watches.watch(root).reason  # type: ignore[union-attr]
    assert changed.is_fresh((b"many",))
    restore_tree(repo, second, tmp_path / "out", progress=Progress())
    assert _snapshot(tmp_path / "out") == _snapshot(root)
    assert not list((tmp_path / "out").glob("many/*/c.txt"))


def test_a_directory_that_is_not_the_parents_is_listed_in_full_whatever_the_journal_says(
        tmp_path: Path, watches: TreeWatches) -> None:
    """The second guard: should the journal ever miss that a directory was
    made again, a directory whose inode is not the parent's is listed in
    full, with all below it."""
    root, repo, first = _first_backup(tmp_path, watches)
    if changes_module.birth_ns(os.fsencode(root)) is None:
        pytest.skip("this file system does not tell when a directory was born")
    since = time.time_ns()
    shutil.rmtree(root / "d2")
    (root / "d2" / "sub").mkdir(parents=True)
    (root / "d2" / "sub" / "other").write_text("not h1\n")
    told = ChangedDirs({(): frozenset({b"d2"}), (b"d2",): frozenset({b"sub"}),
                        (b"d2", b"sub"): frozenset({b"other"})}, since_ns=since)
    result = backup_tree(repo, root, parent=first, progress=Progress(), changed=told)
    assert isinstance(result.content, TreeContent)
    restore_tree(repo, result.content, tmp_path / "out", progress=Progress())
    assert _snapshot(tmp_path / "out") == _snapshot(root)


def test_an_unrelated_hard_link_of_an_old_file_keeps_the_journal_and_changes_nothing(
        tmp_path: Path, watches: TreeWatches) -> None:
    old = tmp_path / "old-file"
    old.write_text("born before the tree's backup\n")
    root, repo, first = _first_backup(tmp_path, watches)
    _elsewhere(f"""
        import os
        os.link({str(old)!r}, {str(tmp_path / "old-file-2")!r})
        open({str(root / "top")!r}, "a").write("and a change in the tree")
    """)
    second, changed, result = _backup(repo, root, "b2", first, watches, "b1")
    assert changed is not None, _why(watches, root)
    assert changed.inodes  # looked up in the parent: not found
    assert result.stats["dirs_unchanged_by_journal"] >= 3
    restore_tree(repo, second, tmp_path / "out", progress=Progress())
    assert _snapshot(tmp_path / "out") == _snapshot(root)


def test_a_hard_link_made_inside_the_tree_to_an_old_file_keeps_the_link_group(
        tmp_path: Path, watches: TreeWatches) -> None:
    root, repo, first = _first_backup(tmp_path, watches)
    _elsewhere(f"os.link({str(root / 'd1' / 'f1')!r}, {str(root / 'd3' / 'linked')!r})"
               .replace("os.link", "__import__('os').link"))
    second, changed, _ = _backup(repo, root, "b2", first, watches, "b1")
    assert changed is not None, _why(watches, root)
    out = tmp_path / "out"
    restore_tree(repo, second, out, progress=Progress())
    assert os.stat(out / "d1" / "f1").st_ino == os.stat(out / "d3" / "linked").st_ino
    assert _snapshot(out) == _snapshot(root)


def test_the_root_directory_keeps_its_own_mode_owner_times_and_xattrs(
        tmp_path: Path, watches: TreeWatches) -> None:
    root, repo, first = _first_backup(tmp_path, watches)
    try:
        os.setxattr(root, "user.cbr-test", b"root's own")
    except OSError as exc:
        pytest.skip(f"no user xattrs here: {exc}")
    os.chmod(root, 0o750)
    if os.geteuid() == 0:
        os.chown(root, 1000, 1000)
    os.utime(root, ns=(1_600_000_000_123_456_789, 1_500_000_000_987_654_321))
    second, changed, _ = _backup(repo, root, "b2", first, watches, "b1")
    assert changed is not None, _why(watches, root)
    restore_tree(repo, second, tmp_path / "out", progress=Progress())
    assert _snapshot_with_root(tmp_path / "out") == _snapshot_with_root(root)


def test_a_restore_total_after_a_journal_incremental_is_the_whole_tree(
        tmp_path: Path, watches: TreeWatches) -> None:
    root, repo, first = _first_backup(tmp_path, watches)
    _elsewhere(f"open({str(root / 'top')!r}, 'a').write('x' * 1000)")
    second, changed, result = _backup(repo, root, "b2", first, watches, "b1")
    assert changed is not None, _why(watches, root)
    files = [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]
    assert second.size == sum(p.stat().st_size for p in files)
    assert result.stats["bytes_scanned"] < second.size
    assert tree_module.restore_size(repo, second, [b"d1"]) == sum(
        p.stat().st_size for p in (root / "d1").iterdir())
