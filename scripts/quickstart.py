"""The quickstart's main job, run by scripts/quickstart inside .venv.

Starts two clouds on loopback (a source with a host agent protecting sample
servers, a disk and a file tree; a target with an importer agent), then
drives them with the `cbr` CLI exactly as a user would: enroll agents, list
protectables, create a vault of each type with its resources, back
everything up, change some data, back up again (incremental), restore every
backup to a new place and compare it byte for byte with the source, verify
the vaults, then the replication to the second cloud. Every command it runs
is printed. Every process it starts is stopped when it ends, however it ends,
unless ``--keep-running`` asks to leave them up after a success
(``--stop`` stops them later).
"""

from __future__ import annotations

import argparse
import contextlib
import filecmp
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PROCS: list[subprocess.Popen[bytes]] = []


T0 = time.time()
NEEDS_MIB = 1024
"""What a run takes on disk, measured (800 MiB), with room: sparse images
stay sparse, restores too."""


def say(text: str) -> None:
    print(f"\n==> [{time.time() - T0:5.1f} s] {text}", flush=True)


def human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


POLLED: set[tuple[str, ...]] = set()


def cbr(profile: str, *args: str, quiet: bool = False, poll: bool = False) -> str:
    """Runs one `cbr` command, printing it as you would type it (every one:
    a polled command once, with a note). ``quiet`` keeps its output to
    itself (JSON the quickstart reads, or a secret)."""
    cmd = [str(BIN / "cbr"), "--profile", profile, *args]
    shown = ("cbr", "--profile", profile, *args)
    if not poll or shown not in POLLED:
        note = "   (repeated until it is done)" if poll else ""
        print("$ " + shlex.join(shown) + note, flush=True)
        POLLED.add(shown)
    out = subprocess.run(cmd, capture_output=True, text=True, env=ENV)
    if out.returncode != 0:
        raise SystemExit(f"quickstart: `cbr {' '.join(args)}` failed:\n{out.stderr}")
    if not quiet and "json" not in args:
        print(out.stdout.rstrip(), flush=True)
    return out.stdout


def cbr_json(profile: str, *args: str, quiet: bool = False, poll: bool = False) -> object:
    return json.loads(cbr(profile, *args, "--output", "json", quiet=quiet, poll=poll))


def start(name: str, cmd: list[str], log_dir: Path) -> subprocess.Popen[bytes]:
    log = open(log_dir / f"{name}.log", "wb")  # noqa: SIM115 - kept open for the child
    print("$ " + shlex.join([Path(cmd[0]).name, *cmd[1:]]) + f"   (log: {log.name})",
          flush=True)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=ENV,
                            start_new_session=True)
    PROCS.append(proc)
    return proc


def stop_all() -> None:
    for proc in reversed(PROCS):
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.time() + 10
    for proc in PROCS:
        try:
            proc.wait(max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_for(what: str, check: object, timeout: float = 60) -> object:
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = check()  # type: ignore[operator]
        if value:
            return value
        time.sleep(0.3)
    raise SystemExit(f"quickstart: timed out waiting for {what}")


def controller(name: str, work: Path, cloud: str, region: str, regions: str) -> dict[str, str]:
    data = work / name
    start(name, [str(BIN / "cbr-controller"), "--data-dir", str(data),
                 "--listen", "127.0.0.1:0", "--agent-listen", "127.0.0.1:0",
                 "--cloud-name", cloud, "--region", region, "--regions", regions,
                 # Both clouds run on this machine's loopback; allow that target.
                 "--target-allow-local", "true"],
          work / "logs")
    endpoints = wait_for(f"{name} to serve", lambda: (data / "endpoints.json").exists()
                         and json.loads((data / "endpoints.json").read_text()))
    assert isinstance(endpoints, dict)
    cbr(name, "configure", "--import-admin-credentials", str(data / "admin-credentials.json"))
    return endpoints


def make_samples(work: Path) -> Path:
    """Sparse disk images with a little data, and a small directory tree."""
    images = work / "images"
    images.mkdir(parents=True)
    for name, size in (("web-1-system", 2 << 30), ("web-1-data", 4 << 30),
                       ("db-1-system", 2 << 30), ("db-1-data", 8 << 30), ("vol-1", 1 << 30)):
        with open(images / f"{name}.img", "wb") as fh:
            fh.truncate(size)
            for offset in range(0, 512 << 20, 16 << 20):  # 32 MiB of data per disk
                fh.seek(offset)
                fh.write(os.urandom(1 << 20))
    tree = work / "share"
    for d in range(4):
        (tree / f"dir{d}" / "nested").mkdir(parents=True)
        for f in range(8):
            (tree / f"dir{d}" / f"file{f}.txt").write_text(f"sample {d}/{f}\n" * (100 * f + 1))
        (tree / f"dir{d}" / "nested" / "blob.bin").write_bytes(os.urandom(256 << 10))
    (tree / "empty-dir").mkdir()
    os.symlink("dir0/file1.txt", tree / "link-to-file1")
    return images


def agent_config(work: Path, name: str, endpoint: str, role: str, images: Path | None) -> Path:
    # Where restores to new places may go: the host refuses any other path.
    roots = {"host-1": "restored", "restore-host": "restored-on-cloud-b"}
    lines = ["[agent]", f'name = "{name}"', f'controller = "{endpoint}"',
             f'state_dir = "{work / name}"', f'role = "{role}"',
             *([f'restore_roots = ["{work / roots[name]}"]'] if name in roots else []), ""]
    if images is not None:
        for server, env in (("web-1", "prod"), ("db-1", "prod")):
            lines += ["[[servers]]", f'name = "{server}"', f'tags = {{ env = "{env}" }}',
                      "[[servers.disks]]", 'name = "system"',
                      f'path = "{images / (server + "-system.img")}"', "system = true",
                      "[[servers.disks]]", 'name = "data"',
                      f'path = "{images / (server + "-data.img")}"', ""]
        lines += ["[[disks]]", 'name = "vol-1"', f'path = "{images / "vol-1.img"}"', "",
                  "[[file_systems]]", 'name = "share"', f'path = "{work / "share"}"', ""]
    path = work / f"{name}.toml"
    path.write_text("\n".join(lines))
    return path


def enroll_and_run(profile: str, work: Path, name: str, config: Path) -> None:
    token = cbr_json(profile, "agent", "enroll-token", "--description", name)
    assert isinstance(token, dict)
    cmd = [str(BIN / "cbr-agent"), "--config", str(config), "enroll", "--token", token["token"]]
    print("$ " + shlex.join(["cbr-agent", "--config", str(config), "enroll", "--token",
                             token["token"][:18] + "..."]), flush=True)
    out = subprocess.run(cmd, capture_output=True, text=True, env=ENV)
    if out.returncode != 0:
        raise SystemExit(f"quickstart: enrollment failed:\n{out.stdout}{out.stderr}")
    start(name, [str(BIN / "cbr-agent"), "--config", str(config), "run"], work / "logs")


def data_ranges(path: Path) -> list[tuple[int, int]]:
    out, size = [], path.stat().st_size
    with open(path, "rb") as fh:
        offset = 0
        while offset < size:
            try:
                start = os.lseek(fh.fileno(), offset, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(fh.fileno(), start, os.SEEK_HOLE)
            out.append((start, end))
            offset = end
    return out


def sparse_copy(src: Path, dst: Path) -> None:
    """A copy that keeps the holes: only the data ranges are written."""
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        fo.truncate(src.stat().st_size)
        for start, end in data_ranges(src):
            fi.seek(start)
            fo.seek(start)
            left = end - start
            while left > 0:
                chunk = fi.read(min(left, 4 << 20))
                fo.write(chunk)
                left -= len(chunk)


def same_disk(a: Path, b: Path) -> bool:
    """Byte-for-byte equal, reading only where either file has data (the
    rest is holes in both, which read as zeros): a 10 GiB sparse image with
    32 MiB of data compares in a blink."""
    if a.stat().st_size != b.stat().st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        for start, end in sorted(data_ranges(a) + data_ranges(b)):
            fa.seek(start)
            fb.seek(start)
            left = end - start
            while left > 0:
                n = min(left, 4 << 20)
                if fa.read(n) != fb.read(n):
                    return False
                left -= n
    return True


def same_tree(a: Path, b: Path) -> bool:
    cmp = filecmp.dircmp(a, b)
    if cmp.left_only or cmp.right_only or cmp.diff_files or cmp.funny_files:
        return False
    return all(same_tree(a / d, b / d) for d in cmp.common_dirs)


def detection(backup: dict[str, object]) -> str:
    """How the agent found what changed: full, cbt or hash-scan (disks),
    journal or walk (file systems)."""
    info = backup.get("extend_info")
    return str(info.get("change_detection", "")) if isinstance(info, dict) else ""


def backup_all(vault_ids: dict[str, str], label: str) -> dict[str, dict[str, object]]:
    """Backs up every vault, waits, and returns the backups by resource name."""
    out: dict[str, dict[str, object]] = {}
    for vid in vault_ids.values():
        t0 = time.time()
        cbr("source", "backup", "create", "--vault", vid, "--wait")
        took = time.time() - t0
        listed = cbr_json("source", "backup", "list", "--vault", vid, quiet=True)
        assert isinstance(listed, list)
        newest: dict[str, dict[str, object]] = {}
        for b in listed:
            name = str(b["resource_name"])
            if name not in newest or str(b["created_at"]) > str(newest[name]["created_at"]):
                newest[name] = b
        for name, b in newest.items():
            children: list[dict[str, object]] = b.get("children", [])  # type: ignore[assignment]
            stored = int(str(b.get("stored_bytes", 0))) + sum(
                int(str(c.get("stored_bytes", 0))) for c in children)
            found = sorted({detection(x) for x in [b, *children]} - {""})
            print(f"{label} backup of {name}: {human(stored)} stored, "
                  f"incremental={bool(b.get('incremental'))}"
                  f"{', changes found by ' + '+'.join(found) if found else ''}, "
                  f"{took:.1f} s for the vault", flush=True)
            out[name] = b
    return out


def data_path(work: Path, images: Path, vault_ids: dict[str, str]
              ) -> dict[str, dict[str, object]]:
    say("back up every server, disk and file system")
    first = backup_all(vault_ids, "full")

    say("change some data: scattered disk writes, an edited and a new file")
    with open(images / "web-1-data.img", "r+b") as fh:
        for offset in (5 << 20, 700 << 20, 3 << 30):
            fh.seek(offset)
            fh.write(os.urandom(4096))
    (work / "share" / "dir1" / "file3.txt").write_text("changed after the first backup\n")
    (work / "share" / "new.txt").write_text("a new file\n")

    say("back up again: only the changes are sent")
    second = backup_all(vault_ids, "incremental")

    say("restore every second backup to a new place and compare byte for byte")
    out = work / "restored"
    out.mkdir()
    for name, b in second.items():
        t0 = time.time()
        target = out / name
        info: dict[str, object] = b.get("extend_info", {})  # type: ignore[assignment]
        encrypted = ["--encrypted"] if info.get("encrypted") else []
        cbr("source", "backup", "restore", str(b["id"]), "--to",
            str(target if b["resource_type"] != "OBJECT_TYPE_DISK" else out / f"{name}.img"),
            *encrypted, "--wait")
        took = time.time() - t0
        if b["resource_type"] == "OBJECT_TYPE_SERVER":
            ok = all(same_disk(target / f"{disk}.img", images / f"{name}-{disk}.img")
                     for disk in ("system", "data"))
        elif b["resource_type"] == "OBJECT_TYPE_DISK":
            ok = same_disk(out / f"{name}.img", images / f"{name}.img")
        else:
            ok = same_tree(target, work / "share")
        print(f"restore of {name}: {'identical' if ok else 'DIFFERENT'} ({took:.1f} s)",
              flush=True)
        if not ok:
            raise SystemExit(f"quickstart: the restore of {name} differs from the source")
    old = first["share"]
    cbr("source", "backup", "ls", str(old["id"]), "dir1")

    say("verify every vault, reading all data")
    for vid in vault_ids.values():
        cbr("source", "vault", "verify", vid, "--read-data", "--wait")
    cbr("source", "vault", "list")
    return second


def policies(vault_ids: dict[str, str]) -> None:
    """A nightly policy with long-term retention on the server vault: its next
    run times, then one run now and its record."""
    say("a backup policy on the server vault: scheduled runs and retention")
    policy = cbr_json("source", "policy", "create", "--name", "nightly", "--type", "backup",
                      "--pattern", "FREQ=DAILY;INTERVAL=1;BYHOUR=2;BYMINUTE=00",
                      "--max-backups", "7", "--week-backups", "4", "--month-backups", "12",
                      "--timezone", "UTC+08:00")
    assert isinstance(policy, dict)
    pid = str(policy.get("policy", policy)["id"])
    cbr("source", "vault", "associate-policy", vault_ids["server"], pid)
    shown = cbr_json("source", "policy", "show", pid, quiet=True)
    assert isinstance(shown, dict)
    runs = shown.get("policy", shown).get("next_run_times", [])
    print("next runs (UTC): " + ", ".join(str(t) for t in runs))
    cbr("source", "policy", "run-now", pid)
    cbr("source", "policy", "runs", pid)


def newest(vault_id: str, resource: str) -> dict[str, object]:
    listed = cbr_json("source", "backup", "list", "--vault", vault_id, quiet=True)
    assert isinstance(listed, list)
    mine = [b for b in listed if b["resource_name"] == resource
            and b["status"] == "BACKUP_STATUS_AVAILABLE"]
    return max(mine, key=lambda b: str(b["created_at"]))


def replicate(backup: dict[str, object], credential: str, vault: str) -> dict[str, object]:
    """One backup to the target; returns the settled record, with the bytes
    that crossed (from the task) added."""
    t0 = time.time()
    started = cbr_json("source", "backup", "replicate", str(backup["id"]), "--credential",
                       credential, "--region", "region-b1", "--vault", vault)
    assert isinstance(started, dict)
    task = wait_for("the transfer", lambda: (
        lambda t: t if isinstance(t, dict) and t.get("status") in (
            "TASK_STATUS_SUCCESS", "TASK_STATUS_FAILED") else None)(
            cbr_json("source", "task", "show", str(started["task_id"]), quiet=True,
                     poll=True)),
        timeout=600)
    assert isinstance(task, dict)
    if task.get("status") != "TASK_STATUS_SUCCESS":
        raise SystemExit(f"quickstart: replication failed: {task.get('error_info')}")
    record = wait_for("the target to confirm the replica", lambda: (
        lambda r: r if isinstance(r, dict) and r.get("status") == "REPLICATION_STATUS_SUCCESS"
        else None)(cbr_json("source", "replication", "record", "show",
                            str(started["replication_record_id"]), quiet=True, poll=True)))
    assert isinstance(record, dict)
    extra: dict[str, object] = task.get("extra_info", {})  # type: ignore[assignment]
    record["wire"] = int(str(extra.get("bytes_sent", 0)))
    record["chunks"] = int(str(extra.get("chunks_sent", 0)))
    record["seconds"] = time.time() - t0
    print(f"replicated {backup['resource_name']} ({backup['id']}): "
          f"{human(int(str(record['wire'])))} crossed the network in "
          f"{record['chunks']} chunks, {float(str(record['seconds'])):.1f} s; replica "
          f"{record['destination_backup_id']}", flush=True)
    return record


def replication(work: Path, images: Path, vault_ids: dict[str, str],
                second: dict[str, dict[str, object]]) -> None:
    """The mission: replicate to the other cloud, change, replicate the
    incremental, and restore the replicas there as the source was."""
    say("the target cloud: a replication user, replication vaults, a host to restore on")
    tgt_ep = json.loads((work / "target" / "endpoints.json").read_text())
    account = cbr_json("target", "iam", "whoami", quiet=True)
    assert isinstance(account, dict)
    account_id = str(account["account"]["id"])  # type: ignore[index]
    user = cbr_json("target", "iam", "user", "create", "replicator")
    assert isinstance(user, dict)
    user_id = str(user.get("user", user)["id"])
    cbr("target", "iam", "grant", "create", user_id, "CBRFullAccess")
    key = cbr_json("target", "iam", "key", "create", user_id, quiet=True)
    assert isinstance(key, dict)
    ak = key.get("access_key", key)
    target_key = cbr_json("target", "key", "create", "--alias", "replica-key", quiet=True)
    assert isinstance(target_key, dict)
    target_key_id = str(target_key.get("key", target_key)["id"])
    vaults = {}
    for kind, name, extra in (("server", "server-replicas", []),
                              ("turbo", "file-replicas", ["--kms-key", target_key_id])):
        made = cbr_json("target", "vault", "create", "--name", name, "--type", kind,
                        "--protect-type", "replication", "--size-gb", "500", *extra)
        assert isinstance(made, dict)
        vaults[kind] = str(made.get("vault", made)["id"])
    enroll_and_run("target", work, "restore-host",
                   agent_config(work, "restore-host", tgt_ep["api"], "host", None))

    say("on the source: a credential for the target account, pinning the target's CA "
        "(checked there, over TLS)")
    cloud_b = cbr_json("target", "cloud", "show", quiet=True)
    assert isinstance(cloud_b, dict)
    target_ca = str(cloud_b.get("cloud", cloud_b)["ca_sha256"])
    # The secret goes in a file only we can read, never on a command line.
    secret_file = work / "cli-config" / "cloud-b-replicator.secret"
    fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(str(ak["secret_access_key"]) + "\n")
    cred = cbr_json("source", "credential", "create", "--name", "to-cloud-b",
                    "--target-cloud", "cloud-b", "--target-endpoint", tgt_ep["api"],
                    "--target-account-id", account_id,
                    "--target-access-key", str(ak["access_key_id"]),
                    "--target-secret-key-file", str(secret_file),
                    "--target-ca-sha256", target_ca)
    assert isinstance(cred, dict)
    cred_id = str(cred.get("credential", cred)["id"])

    say("replicate the newest server and file-system backups to cloud-b")
    frozen = work / "state-at-first-replication"
    shutil.copytree(work / "share", frozen / "share", symlinks=True)
    for disk in ("system", "data"):
        sparse_copy(images / f"web-1-{disk}.img", frozen / f"web-1-{disk}.img")
    first = {"web-1": replicate(second["web-1"], cred_id, vaults["server"]),
             "share": replicate(second["share"], cred_id, vaults["turbo"])}

    say("change the data, back up again, and replicate the incremental")
    with open(images / "web-1-system.img", "r+b") as fh:
        for offset in (1 << 20, 300 << 20):
            fh.seek(offset)
            fh.write(os.urandom(64 << 10))
    (work / "share" / "dir2" / "after-replication.txt").write_text("new on the source\n")
    cbr("source", "backup", "create", "--vault", vault_ids["server"], "--resource",
        str(second["web-1"]["resource_id"]), "--wait")
    cbr("source", "backup", "create", "--vault", vault_ids["turbo"], "--wait")
    again = {"web-1": replicate(newest(vault_ids["server"], "web-1"), cred_id,
                                vaults["server"]),
             "share": replicate(newest(vault_ids["turbo"], "share"), cred_id, vaults["turbo"])}
    cbr("source", "replication", "list")
    cbr("target", "backup", "list", "--vault", vaults["server"])

    say("on cloud-b: new servers and file systems from the replicas, compared")
    host = cbr_json("target", "agent", "list", quiet=True)
    assert isinstance(host, list)
    host_id = next(str(a["id"]) for a in host if a["name"] == "restore-host")
    out = work / "restored-on-cloud-b"
    checks = (("first", first, frozen / "web-1-", frozen / "share"),
              ("second", again, images / "web-1-", work / "share"))
    for label, records, disk_prefix, tree in checks:
        server_to = out / f"{label}-web-1"
        cbr("target", "backup", "restore", str(records["web-1"]["destination_backup_id"]),
            "--target-agent", host_id, "--to", str(server_to), "--wait")
        tree_to = out / f"{label}-share"
        cbr("target", "backup", "restore", str(records["share"]["destination_backup_id"]),
            "--target-agent", host_id, "--to", str(tree_to), "--encrypted", "--wait")
        ok = all(same_disk(server_to / f"{d}.img", Path(f"{disk_prefix}{d}.img"))
                 for d in ("system", "data")) and same_tree(tree_to, tree)
        print(f"{label} replicas restored on cloud-b: "
              f"{'identical to the source at backup time' if ok else 'DIFFERENT'}", flush=True)
        if not ok:
            raise SystemExit(f"quickstart: the {label} replicas differ from the source")
    image_file = out / "web-1-image.img"
    cbr("target", "image", "create", "--backup", str(again["web-1"]["destination_backup_id"]),
        "--name", "web-1-from-cloud-a", "--target-agent", host_id, "--to", str(image_file),
        "--wait")
    cbr("target", "image", "list")
    ok = same_disk(image_file, images / "web-1-system.img")
    print(f"image of web-1's system disk on cloud-b: {'identical' if ok else 'DIFFERENT'}",
          flush=True)
    if not ok:
        raise SystemExit("quickstart: the image differs from the source's system disk")
    total = sum(int(str(r["wire"])) for r in (*first.values(), *again.values()))
    print(f"crossed the network: first {human(sum(int(str(r['wire'])) for r in first.values()))}"
          f", incremental {human(sum(int(str(r['wire'])) for r in again.values()))}, "
          f"total {human(total)}", flush=True)


def stop_kept(work: Path) -> int:
    """Stops what an earlier ``--keep-running`` left running; how many."""
    pids_file = work / "pids.json"
    try:
        pids = [int(p) for p in json.loads(pids_file.read_text())]
    except (OSError, ValueError, TypeError):
        return 0
    alive = []
    for pid in pids:
        try:
            os.killpg(pid, signal.SIGTERM)
            alive.append(pid)
        except (ProcessLookupError, PermissionError):
            continue
    deadline = time.time() + 10
    for pid in alive:
        while time.time() < deadline:
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
    pids_file.unlink(missing_ok=True)
    return len(alive)


def keep_running(work: Path) -> None:
    (work / "pids.json").write_text(json.dumps([p.pid for p in PROCS]))
    config = work / "cli-config"
    rel = os.path.relpath(config)
    cli = os.path.relpath(BIN / "cbr")
    print(f"""
Both clouds are still running (stop them with: scripts/quickstart --stop).
Use the CLI against them, as the commands above did:

  export CBR_CONFIG_DIR={rel}
  {cli} --profile source vault list
  {cli} --profile source backup list
  {cli} --profile target backup list --output json

(or `source .venv/bin/activate` and plain `cbr`). Logs: {os.path.relpath(work / "logs")}/
""", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work-dir", default=str(ROOT / ".quickstart"),
                        help="where the demo keeps its state (wiped at start)")
    parser.add_argument("--keep-running", action="store_true",
                        help="leave both clouds running at the end, to use them with the CLI")
    parser.add_argument("--stop", action="store_true",
                        help="stop what an earlier --keep-running left running, and exit")
    args = parser.parse_args()
    work = Path(args.work_dir).resolve()
    stopped = stop_kept(work)
    if args.stop:
        print(f"stopped {stopped} processes" if stopped else "nothing was running")
        return 0
    shutil.rmtree(work, ignore_errors=True)
    (work / "logs").mkdir(parents=True)
    ENV["CBR_CONFIG_DIR"] = str(work / "cli-config")
    started = time.time()
    done = False
    try:
        say(f"sample data: sparse disk images and a file tree (the run needs about "
            f"{NEEDS_MIB} MiB free in {work})")
        images = make_samples(work)
        print(f"images in {images}, tree in {work / 'share'}")

        say("source cloud (cloud-a) and target cloud (cloud-b), each a controller")
        src = controller("source", work, "cloud-a", "region-a", "region-a")
        controller("target", work, "cloud-b", "region-b1", "region-b1,region-b2")
        cbr("source", "cloud", "show")
        cbr("target", "cloud", "show")

        say("a host agent on the source, an importer agent on the target")
        enroll_and_run("source", work, "host-1",
                       agent_config(work, "host-1", src["api"], "host", images))
        tgt_ep = json.loads((work / "target" / "endpoints.json").read_text())
        enroll_and_run("target", work, "importer-1",
                       agent_config(work, "importer-1", tgt_ep["api"], "importer", None))

        say("what the host agent can protect")
        items = wait_for("4 protectables on the source", lambda: (
            lambda got: got if isinstance(got, list) and len(got) >= 4 else None)(
                cbr_json("source", "protectable", "list", quiet=True, poll=True)))
        assert isinstance(items, list)
        cbr("source", "protectable", "list")
        cbr("source", "agent", "list")
        cbr("target", "agent", "list")
        by_type: dict[str, list[str]] = {}
        for p in items:
            by_type.setdefault(p["type"], []).append(p["id"])

        say("a key in the key service, for an encrypted vault")
        key = cbr_json("source", "key", "create", "--alias", "quickstart-key")
        assert isinstance(key, dict)
        key_id = str(key.get("key", key)["id"])
        cbr("source", "key", "list")

        say("a vault of each type, with the resources associated (files: encrypted)")
        vault_ids: dict[str, str] = {}
        for name, kind, type_key in (("servers", "server", "OBJECT_TYPE_SERVER"),
                                     ("disks", "disk", "OBJECT_TYPE_DISK"),
                                     ("files", "turbo", "OBJECT_TYPE_TURBO")):
            encrypt = ["--kms-key", key_id] if kind == "turbo" else []
            vault = cbr_json("source", "vault", "create", "--name", name, "--type", kind,
                             "--size-gb", "100", *encrypt)
            assert isinstance(vault, dict)
            vid = vault.get("vault", vault)["id"]
            vault_ids[kind] = vid
            cbr("source", "vault", "add-resources", vid, *by_type.get(type_key, []))
        cbr("source", "vault", "list")
        cbr("target", "vault", "create", "--name", "replicas", "--type", "server",
            "--protect-type", "replication", "--size-gb", "500")
        cbr("target", "vault", "list")

        second = data_path(work, images, vault_ids)
        policies(vault_ids)
        replication(work, images, vault_ids, second)
        used = sum(p.stat().st_blocks * 512 for p in work.rglob("*")
                   if p.is_file() and not p.is_symlink())
        say(f"done in {time.time() - started:.1f} s; {human(used)} of disk used in {work}")
        done = True
        return 0
    finally:
        if done and args.keep_running:
            keep_running(work)
        else:
            say("stopping everything the quickstart started")
            stop_all()
            if done:
                print("(scripts/quickstart --keep-running leaves both clouds up to try the "
                      "printed commands yourself)", flush=True)


ENV = {k: v for k, v in os.environ.items() if not k.startswith("CBR_")}

if __name__ == "__main__":
    sys.exit(main())
