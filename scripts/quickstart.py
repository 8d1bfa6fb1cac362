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
import json
import shutil
import sys
import time
from pathlib import Path

from quickstart_clouds import (
    ENV,
    agent_config,
    cbr,
    cbr_json,
    controller,
    enroll_and_run,
    human,
    keep_running,
    metrics_urls,
    say,
    show_metrics,
    stop_all,
    stop_kept,
    wait_for,
)
from quickstart_console import console
from quickstart_files import make_samples
from quickstart_ops import report, start_webhook
from quickstart_steps import data_path, policies, replication

ROOT = Path(__file__).resolve().parent.parent
NEEDS_MIB = 1024
"""What a run takes on disk, measured (800 MiB), with room: sparse images
stay sparse, restores too."""


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

        wait_for("the agents' metrics listeners", lambda: len(metrics_urls(work)) >= 4)
        show_metrics(work)

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

        webhook = start_webhook()
        second = data_path(work, images, vault_ids)
        policies(vault_ids)
        replication(work, images, vault_ids, second)
        report(webhook)
        console(work)
        used = sum(p.stat().st_blocks * 512 for p in work.rglob("*")
                   if p.is_file() and not p.is_symlink())
        show_metrics(work)
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


if __name__ == "__main__":
    sys.exit(main())
