"""``scripts/bench policies``: many policy runs due at the same minute.

One controller (SQLite, its defaults) and a few simulated agents
(``bench.simagents``, real enrollment and TLS streams) that report enough
disks for one per vault. The bench makes ``--vaults`` disk vaults, each with
one disk and its own backup policy, first with a trigger hours away; then it
moves every trigger to one minute (at least ``--lead`` seconds ahead) and
measures, from that minute, how long until every run was dispatched: its run
recorded, its checkpoint made and its backup command sent to the agent. The
times come from the controller's own records (``policy_runs.created_at`` in
its SQLite file, read-only), so the bench's own polling adds nothing.

Targets (issue 5): every run dispatched within 30 s of the due minute;
the controller's peak RSS is reported (VmHWM).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import json
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import common, controller
from bench.agent_workers import Worker, split, wait_inventories, wait_online
from cbr.client import Client
from cbr.v1 import common_pb2, policy_pb2, protectable_pb2, vault_pb2

TARGET_S = 30.0
FAR_AWAY = "FREQ=DAILY;INTERVAL=1;BYHOUR={h};BYMINUTE=0"


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _peak_rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _protectables(client: Client) -> list[str]:
    ids: list[str] = []
    token = ""
    while True:
        page = client.protectables.ListProtectables(protectable_pb2.ListProtectablesRequest(
            page_size=1000, page_token=token, type=common_pb2.OBJECT_TYPE_DISK))
        ids.extend(p.id for p in page.protectables)
        token = page.next_page_token
        if not token:
            return ids


def _setup_one(client: Client, i: int, resource_id: str, hour: int) -> str:
    vault = client.vaults.CreateVault(vault_pb2.CreateVaultRequest(
        name=f"bench-{i:04d}", object_type=common_pb2.OBJECT_TYPE_DISK, size_gb=100,
        resources=[vault_pb2.ResourceSpec(id=resource_id)])).vault
    policy = client.policies.CreatePolicy(policy_pb2.CreatePolicyRequest(
        name=f"bench-{i:04d}", operation_type=policy_pb2.POLICY_OPERATION_TYPE_BACKUP,
        enabled=True, trigger=policy_pb2.Trigger(pattern=[FAR_AWAY.format(h=hour)]))).policy
    client.vaults.AssociateVaultPolicy(vault_pb2.AssociateVaultPolicyRequest(
        vault_id=vault.id, policy_id=policy.id))
    return policy.id


def _retrigger(client: Client, policy_id: str, when: dt.datetime) -> None:
    rule = f"FREQ=DAILY;INTERVAL=1;BYHOUR={when.hour};BYMINUTE={when.minute}"
    client.policies.UpdatePolicy(policy_pb2.UpdatePolicyRequest(
        policy_id=policy_id, policy=policy_pb2.Policy(trigger=policy_pb2.Trigger(
            pattern=[rule])), update_mask={"paths": ["trigger"]}))


def _dispatched(db: Path, due: dt.datetime) -> tuple[int, float]:
    """(runs dispatched for ``due``, seconds from ``due`` to the last of them)."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        rows = conn.execute("SELECT created_at FROM policy_runs WHERE status = 'dispatched' "
                            "AND manual = 0").fetchall()
    latest = 0.0
    for (created,) in rows:
        when = dt.datetime.fromisoformat(str(created))
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        latest = max(latest, (when - due).total_seconds())
    return len(rows), latest


def run(args: argparse.Namespace) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="cbr-bench-policies-"))
    ctl = controller.Controller(base / "controller")
    workers: list[Worker] = []
    try:
        ctl.start()
        keys = common.Keys(ctl.credentials["access_key"], ctl.credentials["secret_key"])
        client = Client(ctl.api, keys.access_key, keys.secret_key,
                        root_certificates=ctl.ca_pem)
        per_agent = -(-args.vaults // args.agents)
        first = 0
        for i, count in enumerate(split(args.agents, min(args.agents, 4))):
            workers.append(Worker(i, ctl.api, ctl.ca_file, first, count, f"pol{os.getpid()}", keys,
                                  base / f"agents-{i}.log", disks=per_agent))
            first += count
        online, waited = wait_online(client, args.agents, 120)
        if online < args.agents:
            raise RuntimeError(f"only {online} of {args.agents} agents online in {waited:.0f} s")
        wait_inventories(client, per_agent * args.agents, 120)
        resources = _protectables(client)[:args.vaults]
        if len(resources) < args.vaults:
            raise RuntimeError(f"only {len(resources)} disks reported for {args.vaults} vaults")
        far = (dt.datetime.now(dt.UTC).hour + 12) % 24
        t0 = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(args.threads) as pool:
            policy_ids = list(pool.map(lambda a: _setup_one(client, a[0], a[1], far),
                                       enumerate(resources)))
        setup_s = time.monotonic() - t0
        _log(f"  {args.vaults} vaults, disks and policies made in {setup_s:.1f} s")
        # Moving a trigger is one call where setting up was three: the due
        # minute leaves room for that, and --lead more.
        now = dt.datetime.now(dt.UTC)
        due = (now + dt.timedelta(seconds=args.lead + setup_s / 2 + 60)).replace(
            second=0, microsecond=0)
        t0 = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(args.threads) as pool:
            list(pool.map(lambda p: _retrigger(client, p, due), policy_ids))
        left = (due - dt.datetime.now(dt.UTC)).total_seconds()
        if left < 2:
            raise RuntimeError(f"moving the triggers took until {left:.0f} s before the due "
                               "minute; run again with a larger --lead")
        _log(f"  every trigger moved to {due:%H:%M} UTC in {time.monotonic() - t0:.1f} s; "
             f"waiting {left:.0f} s for it")
        time.sleep(max(0.0, (due - dt.datetime.now(dt.UTC)).total_seconds()))
        db = ctl.data_dir / "controller.db"
        deadline = time.monotonic() + args.timeout
        count, latest = 0, 0.0
        while time.monotonic() < deadline:
            count, latest = _dispatched(db, due)
            if count >= args.vaults:
                break
            time.sleep(0.5)
        rss = _peak_rss_mib(ctl.pid)
        client.close()
        return {
            "vaults": args.vaults, "agents": args.agents, "due": due.isoformat(),
            "dispatched": count, "all_dispatched_s": round(latest, 2) if count >= args.vaults
            else None, "controller_peak_rss_mib": round(rss, 1), "setup_s": round(setup_s, 1),
            "target": f"all dispatched within {TARGET_S:.0f} s",
            "pass": count >= args.vaults and latest <= TARGET_S,
        }
    finally:
        for w in workers:
            w.stop()
        ctl.stop()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scripts/bench policies", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vaults", type=int, default=1000, help="vaults, one policy each (1000)")
    p.add_argument("--agents", type=int, default=4, help="simulated agents sharing the disks")
    p.add_argument("--threads", type=int, default=8, help="parallel setup calls")
    p.add_argument("--lead", type=float, default=20.0,
                   help="seconds at least between moving the triggers and the due minute")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="seconds to wait for every run after the due minute")
    p.add_argument("--json", metavar="FILE", help="also write the figures to FILE as JSON")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.vaults < 1 or args.agents < 1:
        raise SystemExit("bench: --vaults and --agents must be positive")
    result = run(args)
    _log(f"  runs due at {result['due']}: {result['dispatched']} of {result['vaults']} "
         f"dispatched; last after {result['all_dispatched_s']} s "
         f"(target {TARGET_S:.0f} s: {'met' if result['pass'] else 'NOT met'}); "
         f"controller peak RSS {result['controller_peak_rss_mib']} MiB")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
