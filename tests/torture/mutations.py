"""Seeded random mutations of a tree and a disk image, as concrete steps.

A step names exact paths and carries the seed of whatever data it writes,
so the same steps applied to the same state give the same state: that is
what lets a failing round be replayed, and cut down to the few steps that
still make it fail. A step whose paths no longer fit the state (a subset
of a round, during that search) is skipped, never an error.

Paths are relative to the tree's root ("" is the root itself); names
starting with ``@`` live in the *outside* directory, a sibling of the tree
on the same file system, for hard links from outside into the tree and
unrelated ones elsewhere.
"""

from __future__ import annotations

import ctypes
import errno
import os
import random
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from tests.torture.compare import walk

KiB = 1 << 10
MiB = 1 << 20
_FALLOC_PUNCH_HOLE = 0x02 | 0x01  # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]


@dataclass(frozen=True)
class Step:
    """One mutation: ``op`` and its arguments (paths, sizes, seeds)."""

    op: str
    args: tuple[object, ...]

    def __str__(self) -> str:
        return f"{self.op} " + " ".join(repr(a) if isinstance(a, str) else str(a)
                                       for a in self.args)


def data(seed: int, size: int) -> bytes:
    """Content for a seed: compressible text or random bytes, as files are."""
    rng = random.Random(seed)
    if rng.random() < 0.5:
        words = [b"alpha", b"beta", b"gamma", b"delta", b"%d" % seed, b"\n"]
        out = bytearray()
        while len(out) < size:
            out += rng.choice(words) + b" "
        return bytes(out[:size])
    return rng.randbytes(size)


class Places:
    """Where the steps act: the tree's root and the outside directory."""

    def __init__(self, root: Path, outside: Path) -> None:
        self.root = root
        self.outside = outside

    def path(self, rel: str) -> Path:
        if rel.startswith("@"):
            return self.outside / rel[1:]
        return self.root / rel if rel else self.root


def _size(rng: random.Random) -> int:
    roll = rng.random()
    if roll < 0.15:
        return 0
    if roll < 0.8:
        return rng.randrange(1, 16 * KiB)
    if roll < 0.95:
        return rng.randrange(16 * KiB, 300 * KiB)
    return rng.randrange(300 * KiB, 3 * MiB)


def _names(rng: random.Random) -> str:
    # A few names reused on purpose: renames over existing names, and
    # directories made again under the name they had.
    return rng.choice(["a", "b", "c", "d", "e", "f", "g", "x.txt", "y.bin", "data",
                       "sub", "ñame", "sp ace", f"n{rng.randrange(100)}"])


class Generator:
    """Draws steps that fit the tree as it is now."""

    def __init__(self, rng: random.Random, places: Places) -> None:
        self.rng = rng
        self.places = places

    def _scan(self) -> tuple[list[str], list[str], list[str], list[str]]:
        files, dirs, links, outside = [], [""], [], []
        for path, st in walk(self.places.root):
            if stat.S_ISLNK(st.st_mode):
                links.append(path)
            elif stat.S_ISDIR(st.st_mode):
                dirs.append(path)
            elif stat.S_ISREG(st.st_mode):
                files.append(path)
        outside = ["@" + p for p, st in walk(self.places.outside) if stat.S_ISREG(st.st_mode)]
        return sorted(files), sorted(dirs), sorted(links), outside

    def round(self, count: int) -> list[Step]:
        """``count`` steps drawn against the tree as it is (steps of one
        round are drawn together, so later ones may name what earlier ones
        removed: those are skipped when applied)."""
        files, dirs, links, outside = self._scan()
        rng = self.rng
        steps = []
        for _ in range(count):
            seed = rng.randrange(1 << 30)
            anyf = files or [""]
            anything = files + dirs[1:] + links
            where = rng.choice(dirs)
            new = os.path.join(where, _names(rng))
            ops = [
                ("create", (new, _size(rng), seed)),
                ("create", (new, _size(rng), seed)),
                ("write", (rng.choice(anyf), _size(rng), seed)),
                ("append", (rng.choice(anyf), rng.randrange(1, 64 * KiB), seed)),
                ("rewrite_same", (rng.choice(anyf), seed)),
                ("mkdir", (new,)),
                ("delete", (rng.choice(anything or [""]),)),
                ("rename", (rng.choice(anything or [""]), new)),
                ("rename", (rng.choice(anything or [""]),
                            rng.choice(anything or [""]))),  # over an existing name
                ("remake_dir", (rng.choice(dirs[1:] or [""]), seed)),
                ("file_to_dir", (rng.choice(anyf), seed)),
                ("dir_to_file", (rng.choice(dirs[1:] or [""]), seed)),
                ("hardlink", (rng.choice(anyf), new)),
                ("link_in", (f"@o{seed % 50}", new, _size(rng), seed)),
                ("write", (rng.choice(outside or ["@none"]), _size(rng), seed)),
                ("unrelated_link", (f"@u{seed % 20}", f"@v{seed % 20}", seed)),
                ("symlink", (new, rng.choice(["x.txt", "../a", "/nonexistent", "sub",
                                              rng.choice(dirs) or ".", "dangling/deeper"]))),
                ("chmod", (rng.choice([*anything, ""]), rng.choice(
                    [0o600, 0o644, 0o755, 0o700, 0o750, 0o4755, 0o1777, 0o640]))),
                ("chown", (rng.choice([*anything, ""]), rng.choice([0, 1000, 65534]),
                           rng.choice([0, 1000, 65534]))),
                ("utime", (rng.choice([*anything, ""]), rng.randrange(1 << 40) * 997,
                           rng.randrange(1 << 40) * 991)),
                ("xattr", (rng.choice(files + dirs), f"user.k{seed % 3}", seed)),
                ("rmxattr", (rng.choice(files + dirs), f"user.k{seed % 3}")),
                ("truncate", (rng.choice(anyf), rng.randrange(0, 64 * KiB))),
                ("extend", (rng.choice(anyf), rng.randrange(1, 2 * MiB))),
                ("punch", (rng.choice(anyf), rng.randrange(0, 256 * KiB),
                           rng.randrange(4 * KiB, 512 * KiB))),
                ("fifo", (new,)),
            ]
            op, args = rng.choice(ops)
            steps.append(Step(op, args))
        return steps

    def disk_round(self, size: int, count: int) -> list[Step]:
        rng = self.rng
        steps = []
        for _ in range(count):
            seed = rng.randrange(1 << 30)
            offset = rng.randrange(0, size - 1)
            length = min(size - offset, rng.choice([1, 512, 4 * KiB, 100 * KiB, MiB + 7,
                                                    3 * MiB]))
            roll = rng.random()
            op = "disk_zero" if roll < 0.15 else "disk_punch" if roll < 0.25 else "disk_write"
            steps.append(Step(op, (offset, length, seed)))
        return steps


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def apply(places: Places, step: Step, disk: Path | None = None) -> bool:
    """Applies one step; False when it did not fit the state (skipped)."""
    try:
        _apply(places, step, disk)
        return True
    except (OSError, ValueError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None and exc.errno not in (
                errno.ENOENT, errno.EEXIST, errno.ENOTDIR, errno.EISDIR, errno.ENOTEMPTY,
                errno.EINVAL, errno.EPERM, errno.ELOOP, errno.EBUSY, errno.EXDEV,
                errno.ENAMETOOLONG, errno.EOPNOTSUPP, errno.ENODATA, errno.EMLINK):
            raise
        return False


def _apply(places: Places, step: Step, disk: Path | None) -> None:
    a = step.args
    op = step.op
    if op.startswith("disk_"):
        assert disk is not None
        offset, length, seed = (int(x) for x in a)  # type: ignore[call-overload]
        fd = os.open(disk, os.O_RDWR)
        try:
            if op == "disk_write":
                os.pwrite(fd, data(seed, length), offset)
            elif op == "disk_zero":
                os.pwrite(fd, b"\0" * length, offset)
            elif _libc.fallocate(fd, _FALLOC_PUNCH_HOLE, offset, length) != 0:
                raise OSError(ctypes.get_errno(), "fallocate")
        finally:
            os.close(fd)
        return
    p = places.path(str(a[0]))
    if op in ("create", "write"):
        if op == "create" and os.path.lexists(p):
            raise FileExistsError(p)
        if op == "write" and not _regular(p):
            raise FileNotFoundError(p)
        with open(p, "wb") as fh:
            fh.write(data(int(a[2]), int(a[1])))  # type: ignore[call-overload]
    elif op == "append":
        if not _regular(p):
            raise FileNotFoundError(p)
        with open(p, "ab") as fh:
            fh.write(data(int(a[2]), int(a[1])))  # type: ignore[call-overload]
    elif op == "rewrite_same":
        # New bytes, same size and the same times: only ctime tells.
        if not _regular(p):
            raise FileNotFoundError(p)
        st = os.lstat(p)
        if st.st_size == 0:
            raise ValueError("empty")
        with open(p, "r+b") as fh:
            fh.write(data(int(a[1]) ^ 0x5A5A, st.st_size))  # type: ignore[call-overload]
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    elif op == "mkdir":
        p.mkdir()
    elif op == "delete":
        if str(a[0]) == "":
            raise ValueError("the root stays")
        _remove(p)
    elif op == "rename":
        q = places.path(str(a[1]))
        if str(a[0]) == "" or str(a[1]) == "" or str(a[1]).startswith(str(a[0]) + "/"):
            raise ValueError("not into itself")
        if p == q:
            raise ValueError("same")
        if q.is_dir() and not q.is_symlink() and not (p.is_dir() and not p.is_symlink()):
            shutil.rmtree(q)
        elif p.is_dir() and not p.is_symlink() and os.path.lexists(q) and not (
                q.is_dir() and not q.is_symlink()):
            q.unlink()
        elif q.is_dir() and not q.is_symlink() and any(q.iterdir()):
            shutil.rmtree(q)
        os.rename(p, q)
    elif op == "remake_dir":
        if str(a[0]) == "" or not p.is_dir() or p.is_symlink():
            raise ValueError("no such directory")
        names = sorted(os.listdir(p))
        shutil.rmtree(p)
        p.mkdir()
        rng = random.Random(int(a[1]))  # type: ignore[call-overload]
        for name in names[: max(0, len(names) - 1)]:
            if rng.random() < 0.7:
                (p / name).write_bytes(data(rng.randrange(1 << 30), rng.randrange(0, 8 * KiB)))
    elif op == "file_to_dir":
        if not _regular(p):
            raise FileNotFoundError(p)
        p.unlink()
        p.mkdir()
        (p / "inside").write_bytes(data(int(a[1]), 100))  # type: ignore[call-overload]
    elif op == "dir_to_file":
        if str(a[0]) == "" or not p.is_dir() or p.is_symlink():
            raise ValueError("no such directory")
        shutil.rmtree(p)
        p.write_bytes(data(int(a[1]), 200))  # type: ignore[call-overload]
    elif op == "hardlink":
        if not _regular(p):
            raise FileNotFoundError(p)
        os.link(p, places.path(str(a[1])))
    elif op == "link_in":
        # A file made outside the tree and linked into it (later steps may
        # write it through its outside name).
        places.outside.mkdir(exist_ok=True)
        if not os.path.lexists(p):
            p.write_bytes(data(int(a[3]), int(a[2])))  # type: ignore[call-overload]
        os.link(p, places.path(str(a[1])))
    elif op == "unrelated_link":
        places.outside.mkdir(exist_ok=True)
        q = places.path(str(a[1]))
        if not os.path.lexists(p):
            p.write_bytes(data(int(a[2]), 64))  # type: ignore[call-overload]
        if os.path.lexists(q):
            q.unlink()
        else:
            os.link(p, q)
    elif op == "symlink":
        os.symlink(str(a[1]), p)
    elif op == "chmod":
        if p.is_symlink():
            raise ValueError("symlinks have no mode of their own")
        os.chmod(p, int(a[1]))  # type: ignore[call-overload]
    elif op == "chown":
        os.chown(p, int(a[1]), int(a[2]), follow_symlinks=False)  # type: ignore[call-overload]
    elif op == "utime":
        os.utime(p, ns=(int(a[1]), int(a[2])), follow_symlinks=False)  # type: ignore[call-overload]
    elif op == "xattr":
        if p.is_symlink():
            raise ValueError("no user xattrs on symlinks")
        os.setxattr(p, str(a[1]), data(int(a[2]), int(a[2]) % 300))  # type: ignore[call-overload]
    elif op == "rmxattr":
        if p.is_symlink():
            raise ValueError("no user xattrs on symlinks")
        os.removexattr(p, str(a[1]))
    elif op in ("truncate", "extend"):
        if not _regular(p):
            raise FileNotFoundError(p)
        size = int(a[1])  # type: ignore[call-overload]
        os.truncate(p, size if op == "truncate" else os.lstat(p).st_size + size)
    elif op == "punch":
        if not _regular(p):
            raise FileNotFoundError(p)
        fd = os.open(p, os.O_WRONLY)
        try:
            if _libc.fallocate(fd, _FALLOC_PUNCH_HOLE, int(a[1]), int(a[2])) != 0:  # type: ignore[call-overload]
                raise OSError(ctypes.get_errno(), "fallocate")
        finally:
            os.close(fd)
    elif op == "fifo":
        os.mkfifo(p)
    else:
        raise AssertionError(f"unknown step {op}")


def initial_tree(places: Places, seed: int) -> None:
    """The tree every run starts from: a few levels of directories with
    files of every size class, hard links, symlinks and xattrs."""
    rng = random.Random(seed)
    places.root.mkdir(parents=True, exist_ok=True)
    places.outside.mkdir(parents=True, exist_ok=True)
    dirs = [""]
    for i in range(24):
        parent = rng.choice(dirs)
        d = os.path.join(parent, f"d{i}")
        places.path(d).mkdir()
        dirs.append(d)
    for i in range(120):
        where = rng.choice(dirs)
        places.path(os.path.join(where, f"f{i}")).write_bytes(
            data(rng.randrange(1 << 30), _size(rng)))
    places.path("top").write_bytes(data(seed, 5000))
    os.link(places.path("top"), places.path("d0/hard-top"))
    os.symlink("d0", places.path("to-d0"))
    os.setxattr(places.root, "user.root", b"the root's own")
