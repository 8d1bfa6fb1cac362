"""The demo's steps after start-up: the data path, a policy, and the replication.

Each step drives the clouds only through the `cbr` commands of
``quickstart_clouds`` and checks what it restored with ``quickstart_files``,
so the printed transcript is exactly what a user would type and see.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from quickstart_clouds import agent_config, cbr, cbr_json, enroll_and_run, human, say, wait_for
from quickstart_files import same_disk, same_tree, sparse_copy


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
