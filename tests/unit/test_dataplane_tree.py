"""File-system backup and restore on real trees: metadata, incrementals, CDC, safety."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import stat
import threading
from pathlib import Path

import pytest

from agent.dataplane import Progress, UnsafeTarget
from agent.dataplane.tree import PathNotInBackup, list_tree
from agent.dataplane.tree_backup import _TreeBackup, backup_tree
from agent.dataplane.tree_files import FileReader
from agent.dataplane.tree_restore import restore_tree
from cbr.repo import BlobType, Repository, TreeContent
from cbr.storage.local import LocalBackend

MiB = 1 << 20


def _repo(tmp_path: Path) -> Repository:
    return Repository.init(LocalBackend(tmp_path / "vault"), vault_id="v1", encrypted=False)


def _snapshot(root: Path) -> dict[bytes, tuple[object, ...]]:
    """What a restore must reproduce: type, mode, owner, mtime, content or target."""
    out: dict[bytes, tuple[object, ...]] = {}
    broot = os.fsencode(root)
    for dirpath, dirnames, filenames in os.walk(broot):
        for name in [*dirnames, *filenames]:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            rel = os.path.relpath(p, broot)
            if stat.S_ISLNK(st.st_mode):
                body: object = os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                with open(p, "rb") as fh:
                    body = fh.read()
            else:
                body = None
            mtime = st.st_mtime_ns if not stat.S_ISLNK(st.st_mode) else 0
            out[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid,
                        st.st_gid, mtime, body)
    return out


def _sample(root: Path) -> Path:
    (root / "a" / "b" / "c").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "a" / "small.txt").write_text("hello")
    (root / "a" / "b" / "big.bin").write_bytes(os.urandom(5 * MiB))
    os.symlink("../../etc/passwd", root / "a" / "escape-link")
    os.symlink("small.txt", root / "a" / "rel-link")
    os.link(root / "a" / "small.txt", root / "hard")
    (root / os.fsdecode(b"caf\xe9-latin1")).write_bytes(b"not utf-8 name")
    with open(root / "sparse.img", "wb") as fh:
        fh.truncate(20 * MiB)
        fh.seek(10 * MiB)
        fh.write(b"data in the middle")
    os.mkfifo(root / "fifo")
    os.chmod(root / "a" / "small.txt", 0o640)
    os.chmod(root / "a" / "b", 0o750)
    os.utime(root / "a" / "small.txt", ns=(1_000_000_123, 2_000_000_456))
    with contextlib.suppress(OSError):
        os.setxattr(root / "a" / "small.txt", "user.note", b"kept")
    return root


def test_a_tree_round_trips_with_its_metadata(tmp_path: Path) -> None:
    src = _sample(tmp_path / "src")
    repo = _repo(tmp_path)
    result = backup_tree(repo, src, progress=Progress())
    assert result.warnings == []
    out = tmp_path / "out"
    restored = restore_tree(repo, result.content, out, progress=Progress())
    assert _snapshot(out) == _snapshot(src)
    assert os.stat(out / "hard").st_ino == os.stat(out / "a" / "small.txt").st_ino
    assert os.stat(out / "sparse.img").st_blocks * 512 < MiB
    if "user.note" in os.listxattr(src / "a" / "small.txt"):  # the fs keeps user xattrs
        assert os.getxattr(out / "a" / "small.txt", "user.note") == b"kept"
    assert restored.stats["files"] >= 4


@pytest.mark.parametrize("target_setgid", [False, True])
def test_restored_files_get_their_mode_owner_and_times_whichever_way_they_are_made(
        tmp_path: Path, target_setgid: bool) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    root = os.geteuid() == 0
    modes = {"plain": 0o644, "exec": 0o755, "private": 0o600, "setuid": 0o4755,
             "group-writable": 0o664, "sticky": 0o1644}
    for i, (name, mode) in enumerate(modes.items()):
        for where in (src, src / "d"):
            path = where / name
            path.write_bytes(name.encode() * 10)
            os.chmod(path, mode)
            if root and i % 2:
                os.chown(path, 1234 + i, 5678 + i)
            os.utime(path, ns=(3_000_000_000 + i, 4_000_000_000 + i))
    repo = _repo(tmp_path)
    content = backup_tree(repo, src, progress=Progress()).content
    out = tmp_path / "out"
    out.mkdir()
    if target_setgid:
        os.chmod(out, 0o2775)
        if root:
            os.chown(out, -1, 4321)  # would hand its group down to new files
    restore_tree(repo, content, out, progress=Progress())
    assert _snapshot(out) == _snapshot(src)


def test_unchanged_files_are_not_read_again(tmp_path: Path) -> None:
    src = _sample(tmp_path / "src")
    repo = _repo(tmp_path)
    first = backup_tree(repo, src, progress=Progress())
    (src / "a" / "small.txt").write_text("changed")
    second = backup_tree(repo, src, parent=first.content, progress=Progress())
    assert second.stats["bytes_read"] == len("changed")
    assert second.stats["files_unchanged"] >= 3


def test_small_files_of_many_directories_go_to_the_readers_in_few_jobs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job per directory meant a thread hand-off per few files, the cost
    that bounds a tree of small files (README, "where the time goes"); the
    files of many directories share batches, and every one is still stored
    under its own directory."""
    src = tmp_path / "src"
    for d in range(60):
        (src / f"d{d:02d}").mkdir(parents=True)
        for f in range(3):
            (src / f"d{d:02d}" / f"f{f}").write_bytes(f"{d}-{f}".encode() * 10)
    jobs: list[int] = []
    original = FileReader._read_batch

    def counting(self: FileReader, items: list[tuple[bytes, os.stat_result]]) -> object:
        jobs.append(len(items))
        return original(self, items)

    monkeypatch.setattr(FileReader, "_read_batch", counting)
    repo = _repo(tmp_path)
    result = backup_tree(repo, src, progress=Progress())
    assert sum(jobs) == 180
    assert len(jobs) <= 6, jobs  # 180 files in batches of up to 64, not 60 jobs
    target = tmp_path / "restored"
    restore_tree(repo, result.content, target, progress=Progress())
    assert _snapshot(target) == _snapshot(src)


def test_extended_attributes_of_read_unchanged_and_hard_linked_files_are_kept(
    tmp_path: Path,
) -> None:
    """A file's attributes are read through the file the reader opens; a
    name that is not read (a second hard link, an unchanged file of an
    incremental, a large file) must still get its own."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "small").write_bytes(b"s" * 100)
    (src / "large").write_bytes(os.urandom(3 * MiB))
    (src / "linked").write_bytes(b"l" * 100)
    os.link(src / "linked", src / "second-name")
    try:
        for name in ("small", "large", "linked"):
            os.setxattr(src / name, "user.tag", name.encode())
    except OSError:
        pytest.skip("this file system keeps no user xattrs")
    repo = _repo(tmp_path)
    first = backup_tree(repo, src, progress=Progress())
    (src / "small").write_bytes(b"t" * 100)  # read again; the others are not
    second = backup_tree(repo, src, parent=first.content, progress=Progress())
    assert second.stats["bytes_read"] == 100
    for content in (first.content, second.content):
        stored = _entries(repo, content.root)
        for name in ("small", "large", "linked", "second-name"):
            tag = b"linked" if name == "second-name" else name.encode()
            assert stored[name.encode()]["xattrs"] == {"user.tag": tag}, name
        target = tmp_path / f"restored-{content.root.hex()[:8]}"
        restore_tree(repo, content, target, progress=Progress())
        assert os.getxattr(target / "large", "user.tag") == b"large"
        assert os.getxattr(target / "small", "user.tag") == b"small"


def _entries(repo: Repository, tree_id: bytes,
             prefix: bytes = b"") -> dict[bytes, dict[str, object]]:
    """Every entry below a tree, by path, as its stored fields (access times
    of directories and symlinks left out: listing or reading one may update
    them)."""
    from cbr.repo.objects.tree import decode_tree

    out: dict[bytes, dict[str, object]] = {}
    for e in decode_tree(repo.load_blob(tree_id)):
        fields = {f: getattr(e, f) for f in e.__slots__ if f not in ("subtree",)}
        if e.type in ("dir", "symlink"):
            fields.pop("atime")
        if e.type == "dir":
            assert e.subtree is not None
            out.update(_entries(repo, e.subtree, prefix + e.name + b"/"))
        out[prefix + e.name] = fields
    return out


def test_an_unchanged_tree_is_the_parent_tree_and_nothing_is_read(tmp_path: Path) -> None:
    src = _sample(tmp_path / "src")
    repo = _repo(tmp_path)
    first = backup_tree(repo, src, progress=Progress())
    second = backup_tree(repo, src, parent=first.content, progress=Progress())
    third = backup_tree(repo, src, parent=second.content, progress=Progress())
    assert third.content == second.content
    assert third.stats["bytes_read"] == 0 and third.stats["bytes_sent"] == 0
    # A read elsewhere moves only the access time (where the mount keeps
    # them): the new tree records it, and nothing is read.
    small = src / "a" / "small.txt"
    before = os.stat(small).st_atime_ns
    small.read_bytes()
    after = os.stat(small).st_atime_ns
    if after != before:
        fourth = backup_tree(repo, src, parent=third.content, progress=Progress())
        assert fourth.content != third.content and fourth.stats["bytes_read"] == 0
        assert isinstance(fourth.content, TreeContent)
        assert _entries(repo, fourth.content.root)[b"a/small.txt"]["atime"] == after


def test_incremental_keeps_unchanged_entries_exactly_as_a_full_decode_would(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = _sample(tmp_path / "src")
    (src / "a" / "b" / "c" / "deep.txt").write_text("deep")
    (src / "moved-from").mkdir()
    (src / "moved-from" / "x").write_text("x")
    (src / "quiet" / "deeper").mkdir(parents=True)
    (src / "quiet" / "deeper" / "f.txt").write_text("same size 1")
    repo = _repo(tmp_path)
    # A second backup first: listing a directory the first time since it
    # changed updates its access time, which would hide the fast path.
    first = backup_tree(repo, src, parent=backup_tree(repo, src, progress=Progress()).content,
                        progress=Progress())
    # Only a file's content changes here: its directories keep their stat,
    # so their stored documents are kept with new subtree ids.
    (src / "quiet" / "deeper" / "f.txt").write_text("same size 2")
    (src / "a" / "small.txt").write_text("changed")
    os.chmod(src / "a" / "b" / "c" / "deep.txt", 0o600)
    (src / "a" / "b" / "c" / "new.txt").write_text("new")
    (src / "hard").unlink()
    os.rename(src / "moved-from", src / "moved-to")
    os.unlink(src / "a" / "rel-link")
    os.symlink("elsewhere", src / "a" / "rel-link")
    with contextlib.suppress(OSError):
        os.setxattr(src / "empty", "user.added", b"1")
    fast = backup_tree(repo, src, parent=first.content, progress=Progress())
    # The same backup once more, every name through the careful path.
    monkeypatch.setattr(_TreeBackup, "_doc_holds", lambda *_args: False)
    slow = backup_tree(repo, src, parent=first.content, progress=Progress())
    assert isinstance(fast.content, TreeContent) and isinstance(slow.content, TreeContent)
    assert _entries(repo, fast.content.root) == _entries(repo, slow.content.root)
    assert fast.stats["files_unchanged"] == slow.stats["files_unchanged"]
    out = tmp_path / "out"
    restore_tree(repo, fast.content, out, progress=Progress())
    assert _snapshot(out) == _snapshot(src)


def test_inserting_bytes_mid_file_restores_only_nearby_chunks(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    data = os.urandom(40 * MiB)
    (src / "big").write_bytes(data)
    repo = _repo(tmp_path)
    first = backup_tree(repo, src, progress=Progress())
    (src / "big").write_bytes(data[:17 * MiB] + b"INSERTED" + data[17 * MiB:])
    second = backup_tree(repo, src, parent=first.content, progress=Progress())
    assert second.stats["bytes_new"] < 10 * MiB
    out = tmp_path / "out"
    restore_tree(repo, second.content, out, progress=Progress())
    assert (out / "big").read_bytes() == (src / "big").read_bytes()


def test_a_file_growing_while_read_is_flagged_not_stored_silently(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    path = src / "log"
    path.write_bytes(os.urandom(8 * MiB))
    stop = threading.Event()

    def grow() -> None:
        with open(path, "ab") as fh:
            while not stop.is_set():
                fh.write(b"x" * 4096)
                fh.flush()

    writer = threading.Thread(target=grow)
    writer.start()
    try:
        result = backup_tree(_repo(tmp_path), src, progress=Progress())
    finally:
        stop.set()
        writer.join()
    assert result.stats["files_changed_while_read"] == 1
    assert any("changed while read" in w for w in result.warnings)
    # Both reads uploaded; both count (issue 19: the second read started a
    # fresh count, and the vault's usage missed what the first one stored).
    stored = sum(p.stat().st_size for p in (tmp_path / "vault" / "data").rglob("*")
                 if p.is_file())
    assert result.stats["bytes_sent"] >= 0.9 * stored


def test_a_vanished_file_is_a_warning_not_a_failure(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "stays").write_text("x")
    repo = _repo(tmp_path)
    job = _TreeBackup(repo, Progress(), 1)
    real = job.reader._read_batch

    def vanish(items: list[tuple[bytes, os.stat_result]]) -> object:
        for path, _st in items:
            if path.endswith(b"goes"):
                os.unlink(path)  # listed, then gone before it is opened
        return real(items)

    (src / "goes").write_text("y")
    job.reader._read_batch = vanish  # type: ignore[method-assign]
    job.directory(os.fsencode(src), [], None, os.stat(src).st_dev)
    job.reader.pool.shutdown()
    assert any(w.startswith("vanished:") for w in job.warnings)


def test_one_file_and_one_subtree_restore_and_list(tmp_path: Path) -> None:
    src = _sample(tmp_path / "src")
    repo = _repo(tmp_path)
    result = backup_tree(repo, src, progress=Progress())
    names = {e.name for e in list_tree(repo, result.content, [b"a"])}
    assert {b"small.txt", b"b", b"escape-link", b"rel-link"} <= names
    [single] = list_tree(repo, result.content, [b"a", b"small.txt"])
    assert single.size == 5
    with pytest.raises(PathNotInBackup):
        list_tree(repo, result.content, [b"nope"])
    out = tmp_path / "one"
    restore_tree(repo, result.content, out, path=[b"a", b"small.txt"], progress=Progress())
    assert (out / "small.txt").read_text() == "hello"
    sub = tmp_path / "sub"
    restore_tree(repo, result.content, sub, path=[b"a", b"b"], progress=Progress())
    assert (sub / "b" / "big.bin").read_bytes() == (src / "a" / "b" / "big.bin").read_bytes()


# -- safety: nothing a backup holds writes outside the target --------------------------------


def _raw_tree(repo: Repository, entries: list[dict[str, object]]) -> bytes:
    """A tree blob written directly, bypassing every check encode_tree makes."""
    doc = json.dumps({"v": 1, "entries": entries}, sort_keys=True).encode()
    return repo.save_blob(BlobType.META, doc)


def _file(repo: Repository, name: str, body: bytes) -> dict[str, object]:
    cid = repo.save_blob(BlobType.DATA, body)
    return {"name": name, "type": "file", "mode": 0o644, "size": len(body),
            "content": [cid.hex()]}


def _outside_untouched(tmp_path: Path) -> None:
    assert sorted(p.name for p in (tmp_path / "outside").iterdir()) == ["keep"]
    assert (tmp_path / "outside" / "keep").read_text() == "original"


@pytest.mark.parametrize("name", ["..", ".", "a/b", "/etc/x", "", "nul\x00"])
def test_unsafe_names_are_refused(tmp_path: Path, name: str) -> None:
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "keep").write_text("original")
    repo = _repo(tmp_path)
    root = _raw_tree(repo, [_file(repo, name, b"evil")])
    repo.flush()
    with pytest.raises(UnsafeTarget):
        restore_tree(repo, TreeContent(root), tmp_path / "target", progress=Progress())
    _outside_untouched(tmp_path)


def test_a_name_in_base64_that_decodes_to_dotdot_is_refused(tmp_path: Path) -> None:
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "keep").write_text("original")
    repo = _repo(tmp_path)
    entry = _file(repo, "x", b"evil")
    del entry["name"]
    entry["name_b"] = base64.b64encode(b"..").decode()
    root = _raw_tree(repo, [entry])
    repo.flush()
    with pytest.raises(UnsafeTarget):
        restore_tree(repo, TreeContent(root), tmp_path / "target", progress=Progress())
    _outside_untouched(tmp_path)


def test_a_symlink_then_a_directory_through_it_cannot_escape(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("original")
    repo = _repo(tmp_path)
    inner = _raw_tree(repo, [_file(repo, "pwned", b"evil")])
    root = _raw_tree(repo, [
        {"name": "link", "type": "symlink", "target": str(outside)},
        {"name": "link", "type": "dir", "mode": 0o755, "subtree": inner.hex()},
    ])
    repo.flush()
    with pytest.raises(UnsafeTarget):
        restore_tree(repo, TreeContent(root), tmp_path / "target", progress=Progress())
    _outside_untouched(tmp_path)


def test_a_symlink_already_in_the_target_is_replaced_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("original")
    target = tmp_path / "target"
    target.mkdir()
    os.symlink(outside, target / "dir")
    os.symlink(outside / "keep", target / "file")
    repo = _repo(tmp_path)
    inner = _raw_tree(repo, [_file(repo, "keep", b"evil")])
    root = _raw_tree(repo, [
        {"name": "dir", "type": "dir", "mode": 0o755, "subtree": inner.hex()},
        _file(repo, "file", b"evil too"),
    ])
    repo.flush()
    restore_tree(repo, TreeContent(root), target, progress=Progress())
    _outside_untouched(tmp_path)
    assert (target / "dir").is_dir() and not (target / "dir").is_symlink()
    assert (target / "file").read_bytes() == b"evil too"


def test_hardlinks_pointing_outside_or_ahead_are_refused(tmp_path: Path) -> None:
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "keep").write_text("original")
    repo = _repo(tmp_path)
    for link in ([{"name": ".."}, {"name": "outside"}, {"name": "keep"}],
                 [{"name": "later"}]):
        root = _raw_tree(repo, [
            {"name": "a", "type": "hardlink", "link": link},
            _file(repo, "later", b"x"),
        ])
        repo.flush()
        with pytest.raises(UnsafeTarget):
            restore_tree(repo, TreeContent(root), tmp_path / "target", progress=Progress())
    _outside_untouched(tmp_path)
