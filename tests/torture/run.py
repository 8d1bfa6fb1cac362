"""The differential torture test: random real mutations, a backup through a
running agent, a restore into a new place, and every entry compared with
the source (DESIGN.md, decision 13).

    scripts/torture [--rounds N] [--seed S] [--keep DIR]

It starts a controller and a ``cbr-agent`` (real processes on loopback)
protecting one tree and one disk image. Each round applies a seeded batch
of mutations (``tests.torture.mutations``), backs both up through the API
(the agent picks the change journal, reflink CBT or a hash scan, as it
would for a user), restores both into new places and compares them with
the source. Some rounds also write files while the backup runs: each such
file must restore as its old or its new content, or be flagged in the
backup. A failure prints its seed, the round, what differed and the
shortest sequence of mutations that still fails after a fresh full backup.

Where it can (root, XFS tools) the tree and the image live on a
loop-mounted XFS (reflink: CBT for the disk) and restores go to another
file system, so that the journal of the tree is not paused by them.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import random
import shutil
import stat
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from cbr.client import Client
from cbr.v1 import agent_pb2, backup_pb2, common_pb2, protectable_pb2, task_pb2, vault_pb2
from tests.support.processes import AgentFactory, ControllerFactory, enroll, wait_until
from tests.torture.compare import differences, file_digest, walk
from tests.torture.mutations import Generator, MiB, Places, Step, apply, data, initial_tree

DISK_SIZE = 24 * MiB
TREE_CAP = 48 * MiB  # above this the rounds delete the largest files first
FINAL = (task_pb2.TASK_STATUS_SUCCESS, task_pb2.TASK_STATUS_FAILED,
         task_pb2.TASK_STATUS_SKIPPED, task_pb2.TASK_STATUS_TIMEOUT)


class RoundFailed(Exception):
    def __init__(self, what: str, lines: list[str]) -> None:
        super().__init__(what)
        self.what = what
        self.lines = lines


@dataclass
class Stats:
    rounds: int = 0
    steps: int = 0
    tree_methods: Counter[str] = field(default_factory=Counter)
    disk_methods: Counter[str] = field(default_factory=Counter)
    concurrent_files: int = 0
    flagged: int = 0


class Cloud:
    """One controller and one agent protecting ``places.root`` and ``disk``."""

    def __init__(self, work: Path, places: Places, disk: Path) -> None:
        self.controllers = ControllerFactory(work / "procs")
        self.agents = AgentFactory(work / "procs")
        controller = self.controllers("controller", extra_args=[
            "--heartbeat-interval", "0.5", "--agent-offline-after", "5"])
        self.client: Client = controller.client()
        config = work / "agent.toml"
        config.write_text(f"""
[agent]
name = "torture"
controller = "{controller.api_endpoint}"
state_dir = "{work / 'agent-state'}"
restore_roots = ["{work}"]

[[disks]]
name = "disk"
path = "{disk}"

[[file_systems]]
name = "tree"
path = "{places.root}"
""")
        token = self.client.agents.CreateEnrollmentToken(
            agent_pb2.CreateEnrollmentTokenRequest()).token
        done = enroll(config, token)
        if done.returncode != 0:
            raise RuntimeError(f"enrollment failed: {done.stderr}")
        self.agent = self.agents(config, "agent")
        self.agent.wait_for_log("connected to")
        [registered] = wait_until(
            lambda: list(self.client.agents.ListAgents(agent_pb2.ListAgentsRequest()).agents))
        self.agent_id = registered.id

        def found() -> dict[str, Any]:
            listed = self.client.protectables.ListProtectables(
                protectable_pb2.ListProtectablesRequest(agent_id=registered.id)).protectables
            return {p.name: p for p in listed}

        wait_until(lambda: len(found()) == 2, message="the tree and the disk are reported")
        self.resources = {name: p.id for name, p in found().items()}
        self.vaults = {}
        for name, obj in (("tree", common_pb2.OBJECT_TYPE_TURBO),
                          ("disk", common_pb2.OBJECT_TYPE_DISK)):
            self.vaults[name] = self.client.vaults.CreateVault(vault_pb2.CreateVaultRequest(
                name=f"torture-{name}", object_type=obj, size_gb=1000,
                resources=[vault_pb2.ResourceSpec(id=self.resources[name])])).vault.id

    def wait(self, task_id: str, timeout: float = 300) -> Any:
        return wait_until(lambda: (t := self.client.tasks.GetTask(
            task_pb2.GetTaskRequest(task_id=task_id)).task).status in FINAL and t,
            timeout=timeout, interval=0.02, ignore=(grpc.RpcError,),
            message=f"task {task_id} ends")

    def start_backups(self, kinds: list[str], full: bool = False) -> dict[str, tuple[str, str]]:
        out = {}
        for kind in kinds:
            cp = self.client.backups.CreateCheckpoint(backup_pb2.CreateCheckpointRequest(
                vault_id=self.vaults[kind], full=full)).checkpoint
            if list(cp.skipped_resources):
                raise RoundFailed(f"{kind} backup skipped", [str(cp.skipped_resources)])
            [task_id] = cp.task_ids
            [backup_id] = cp.backup_ids
            out[kind] = (task_id, backup_id)
        return out

    def finish(self, started: dict[str, tuple[str, str]]) -> dict[str, Any]:
        out = {}
        for kind, (task_id, backup_id) in started.items():
            task = self.wait(task_id)
            if task.status != task_pb2.TASK_STATUS_SUCCESS:
                raise RoundFailed(f"{kind} backup failed", [str(task.error_info)])
            out[kind] = self.client.backups.GetBackup(
                backup_pb2.GetBackupRequest(backup_id=backup_id)).backup
        return out

    def restore(self, backup_id: str, target: Path) -> None:
        task_id = self.client.backups.RestoreBackup(backup_pb2.RestoreBackupRequest(
            backup_id=backup_id, target_agent_id=self.agent_id,
            target_path=str(target))).task_id
        task = self.wait(task_id)
        if task.status != task_pb2.TASK_STATUS_SUCCESS:
            raise RoundFailed("restore failed", [str(task.error_info)])

    def flagged(self, backup_id: str, path: str) -> bool:
        try:
            [entry] = self.client.backups.ListBackupFiles(backup_pb2.ListBackupFilesRequest(
                backup_id=backup_id, path=path)).files
        except (grpc.RpcError, ValueError):
            return False
        return bool(entry.changed)

    def restart_agent(self) -> None:
        """A new agent process: its change journal starts empty, so the next
        tree backup walks everything."""
        before = self.agent.log_text().count("connected to")
        self.agent.restart()
        wait_until(lambda: self.agent.log_text().count("connected to") > before,
                   timeout=60, message="the agent reconnected")

    def close(self) -> None:
        self.agents.close()
        self.controllers.close()


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(4 * MiB):
            h.update(block)
    return h.hexdigest()


def _tree_size(root: Path) -> list[tuple[int, str]]:
    return [(st.st_size, path) for path, st in walk(root) if stat.S_ISREG(st.st_mode)]


class Writer(threading.Thread):
    """Writes files while a backup runs: each rewritten whole, one write, to
    a new size (the backup sees the change in size, mtime or ctime)."""

    def __init__(self, places: Places, paths: list[str], seed: int) -> None:
        super().__init__(daemon=True)
        self.places = places
        self.paths = paths
        self.seed = seed
        self.inodes = set()
        for p in paths:
            with contextlib.suppress(OSError):
                st = os.lstat(places.path(p))
                self.inodes.add((st.st_dev, st.st_ino))
        self.before = {p: file_digest(places.path(p)) for p, st in walk(places.root)
                       if (st.st_dev, st.st_ino) in self.inodes}
        # Every content a file had while the backup ran: it was before, and
        # whatever each write left (a file written twice passes through two).
        self.states: dict[tuple[int, int], set[str | None]] = {}
        for p, st in walk(places.root):
            if (st.st_dev, st.st_ino) in self.inodes:
                self.states.setdefault((st.st_dev, st.st_ino), set()).add(self.before[p])
        self.after: dict[str, str | None] = {}

    def run(self) -> None:
        rng = random.Random(self.seed)
        for p in self.paths:
            time.sleep(rng.random() * 0.05)
            path = self.places.path(p)
            with contextlib.suppress(OSError):
                size = os.lstat(path).st_size
                fd = os.open(path, os.O_WRONLY)
                try:
                    content = data(rng.randrange(1 << 30), size + rng.randrange(1, 8192))
                    os.write(fd, content)
                    st = os.fstat(fd)
                    self.states.setdefault((st.st_dev, st.st_ino), set()).add(
                        hashlib.sha256(content).hexdigest())
                finally:
                    os.close(fd)
        self.after = {p: file_digest(self.places.path(p)) for p in self.before}


class Torture:
    def __init__(self, work: Path, seed: int, source_dir: Path, restore_dir: Path,
                 log: Callable[[str], None]) -> None:
        self.seed = seed
        self.work = work
        self.places = Places(source_dir / "tree", source_dir / "outside")
        self.disk = source_dir / "disk.img"
        self.restore_dir = restore_dir
        self.log = log
        self.stats = Stats()
        self.history: list[list[Step]] = []  # applied steps of every round, in order
        initial_tree(self.places, seed)
        with open(self.disk, "wb") as fh:
            fh.truncate(DISK_SIZE)
        apply(self.places, Step("disk_write", (0, 3 * MiB, seed)), self.disk)
        self.cloud = Cloud(work, self.places, self.disk)
        self.rng = random.Random(seed)
        self.generator = Generator(self.rng, self.places)
        self.parents: dict[str, Any] = {}

    def first_backup(self) -> None:
        self.cloud.finish(self.cloud.start_backups(["tree", "disk"]))

    def _cap(self) -> list[Step]:
        sizes = sorted(_tree_size(self.places.root), reverse=True)
        total = sum(s for s, _ in sizes)
        steps = []
        while total > TREE_CAP and sizes:
            size, path = sizes.pop(0)
            steps.append(Step("delete", (path,)))
            total -= size
        return steps

    def one_round(self, number: int) -> None:
        rng = self.rng
        steps = self._cap() + self.generator.round(rng.randrange(1, 14))
        disk_steps = self.generator.disk_round(DISK_SIZE, rng.randrange(0, 6))
        applied = [s for s in steps if apply(self.places, s)]
        applied += [s for s in disk_steps if apply(self.places, s, self.disk)]
        self.history.append(applied)
        self.stats.steps += len(applied)
        writer = None
        if rng.random() < 0.25:
            files = [p for _s, p in _tree_size(self.places.root)]
            if files:
                writer = Writer(self.places, rng.sample(files, min(3, len(files))),
                                rng.randrange(1 << 30))
        # Now and then what users meet too: a restarted agent (the journal is
        # gone: the tree is walked), a lost reflink snapshot (the disk is
        # hash-scanned), a full backup asked for.
        roll = rng.random()
        if roll < 0.03:
            self.cloud.restart_agent()
        elif roll < 0.06:
            shutil.rmtree(self.disk.parent / ".cbr-snapshots", ignore_errors=True)
        started = self.cloud.start_backups(["tree", "disk"], full=0.06 <= roll < 0.08)
        if writer is not None:
            writer.start()
        backups = self.cloud.finish(started)
        skip: list[str] = []
        if writer is not None:
            writer.join()
            # Every name of a file written (hard links share its content).
            skip = [p for p, st in walk(self.places.root)
                    if (st.st_dev, st.st_ino) in writer.inodes]
            writer.paths = skip
        self.stats.tree_methods[backups["tree"].extend_info.change_detection] += 1
        self.stats.disk_methods[backups["disk"].extend_info.change_detection] += 1
        self.check(backups, skip, writer)

    def check(self, backups: dict[str, Any], skip: list[str], writer: Writer | None) -> None:
        target = self.restore_dir / "tree"
        image = self.restore_dir / "disk.img"
        for old in (target, image):
            if old.is_dir():
                shutil.rmtree(old)
            elif old.exists():
                old.unlink()
        self.cloud.restore(backups["tree"].id, target)
        self.cloud.restore(backups["disk"].id, image)
        diffs = differences(self.places.root, target, skip)
        if writer is not None:
            for p in writer.paths:
                got = file_digest(target / p)
                self.stats.concurrent_files += 1
                st = os.lstat(self.places.path(p))
                if got in writer.states.get((st.st_dev, st.st_ino), ()):
                    continue
                if self.cloud.flagged(backups["tree"].id, p):
                    self.stats.flagged += 1
                    continue
                diffs.append(f"{p}: written during the backup, restored as neither its old "
                             "nor its new content, and not flagged")
        if diffs:
            raise RoundFailed(f"tree ({backups['tree'].extend_info.change_detection})", diffs)
        if _digest(image) != _digest(self.disk):
            raise RoundFailed(f"disk ({backups['disk'].extend_info.change_detection})",
                              ["the restored image differs from the source"])

    # -- cutting a failure down ---------------------------------------------------------

    def _reset(self, upto: int) -> None:
        """The tree and image as they were before round ``upto``."""
        for child in list(self.places.root.iterdir()):
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
        for name in os.listxattr(self.places.root):
            os.removexattr(self.places.root, name)
        os.chmod(self.places.root, 0o755)
        os.chown(self.places.root, 0, 0)
        shutil.rmtree(self.places.outside, ignore_errors=True)
        initial_tree(self.places, self.seed)
        with open(self.disk, "wb") as fh:
            fh.truncate(0)
            fh.truncate(DISK_SIZE)
        apply(self.places, Step("disk_write", (0, 3 * MiB, self.seed)), self.disk)
        for steps in self.history[:upto]:
            for s in steps:
                apply(self.places, s, self.disk)

    def fails(self, upto: int, steps: list[Step]) -> list[str] | None:
        """Whether ``steps`` alone, after a full backup of the state before
        round ``upto``, fail: the differences if so."""
        self._reset(upto)
        self.cloud.finish(self.cloud.start_backups(["tree", "disk"], full=True))
        for s in steps:
            apply(self.places, s, self.disk)
        try:
            self.check(self.cloud.finish(self.cloud.start_backups(["tree", "disk"])), [], None)
        except RoundFailed as exc:
            return exc.lines
        return None

    def shrink(self, upto: int, steps: list[Step], budget: int = 80) -> list[Step] | None:
        """The shortest subsequence of ``steps`` that still fails (ddmin)."""
        if self.fails(upto, steps) is None:
            return None
        n = 2
        checks = 1
        while len(steps) >= 2 and checks < budget:
            size = max(1, len(steps) // n)
            chunks = [steps[i:i + size] for i in range(0, len(steps), size)]
            reduced = False
            for i in range(len(chunks)):
                rest = [s for j, c in enumerate(chunks) if j != i for s in c]
                checks += 1
                if self.fails(upto, rest) is not None:
                    steps, n, reduced = rest, max(n - 1, 2), True
                    break
            if not reduced:
                if n >= len(steps):
                    break
                n = min(len(steps), 2 * n)
        return steps


@contextlib.contextmanager
def _places(base: Path) -> Iterator[tuple[Path, Path, str]]:
    """(where the sources live, where restores go, what the layout is)."""
    from tests.support.xfs import mounted_xfs

    restore = base / "restores"
    restore.mkdir()
    with contextlib.ExitStack() as stack:
        try:
            mount = stack.enter_context(mounted_xfs(base, size=1024 * MiB))
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # pytest's skip/fail outcomes of mounted_xfs
            reason = str(exc)
        else:
            yield mount, restore, "sources on a loop-mounted XFS (reflink), restores on another"
            return
        sources = base / "sources"
        sources.mkdir()
        shm = Path("/dev/shm")
        if shm.is_dir() and os.stat(shm).st_dev != os.stat(base).st_dev:
            restore = Path(tempfile.mkdtemp(prefix="cbr-torture-", dir=shm))
            stack.callback(shutil.rmtree, restore, True)
            yield sources, restore, f"no XFS ({reason}); restores on tmpfs"
            return
        yield sources, restore, f"no XFS ({reason}); restores on the same file system"


def run(rounds: int, seed: int, keep: Path | None = None, log: Callable[[str], None] = print,
        shrink: bool = True) -> Stats:
    """Runs ``rounds`` rounds; raises RoundFailed (after printing) on the first failure."""
    base = Path(tempfile.mkdtemp(prefix="cbr-torture-", dir=keep))
    torture: Torture | None = None
    started = time.monotonic()
    try:
        with _places(base) as (sources, restores, layout):
            log(f"torture: seed {seed}, {rounds} rounds; {layout}")
            torture = Torture(base, seed, sources, restores, log)
            torture.first_backup()
            for number in range(1, rounds + 1):
                try:
                    torture.one_round(number)
                except RoundFailed as exc:
                    _report(torture, number, exc, shrink, log)
                    raise
                torture.stats.rounds += 1
                if number % 50 == 0 or number == rounds:
                    s = torture.stats
                    log(f"round {number}: {s.steps} mutations; tree {dict(s.tree_methods)}; "
                        f"disk {dict(s.disk_methods)}; {s.concurrent_files} files written "
                        f"during backups ({s.flagged} flagged); "
                        f"{time.monotonic() - started:.0f} s")
            return torture.stats
    finally:
        if torture is not None:
            torture.cloud.close()
        if keep is None:
            shutil.rmtree(base, ignore_errors=True)


def _report(torture: Torture, number: int, exc: RoundFailed, shrink: bool,
            log: Callable[[str], None]) -> None:
    log(f"FAILED: seed {torture.seed}, round {number}: {exc.what}")
    for line in exc.lines[:20]:
        log(f"  {line}")
    steps = torture.history[number - 1]
    log(f"the round's {len(steps)} mutations:")
    for s in steps:
        log(f"  {s}")
    if not shrink:
        return
    smallest = torture.shrink(number - 1, steps)
    if smallest is None:
        log("they do not fail alone after a fresh full backup: the failure depends on the "
            f"rounds before; replay with: scripts/torture --seed {torture.seed} "
            f"--rounds {number}")
        return
    log(f"shortest sequence that fails after a full backup of the state before round "
        f"{number} ({len(smallest)} of {len(steps)}):")
    for s in smallest:
        log(f"  {s}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/torture", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--keep", type=Path, default=None,
                        help="work under this directory and leave it there")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 32)
    try:
        stats = run(args.rounds, seed, args.keep, lambda line: print(line, flush=True))
    except RoundFailed:
        return 1
    print(f"torture: {stats.rounds} rounds passed (seed {seed})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
