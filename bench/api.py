"""``scripts/bench api``: signed unary calls per second and latency, with agents connected.

What it does, in one run:

1. starts a real ``cbr-controller`` on loopback (temp data dir, SQLite unless
   ``--database-url``), and makes a few vaults and tasks for the reads to find;
2. starts ``--workers`` processes of ``bench.simagents`` that enroll
   ``--agents`` agents concurrently (one-time token, CSR, ``Enroll``) and hold
   one TLS ``Connect`` stream each, heartbeating at the controller's interval;
3. waits until ``ListAgents`` (status ONLINE, paged) counts every agent;
4. drives the public API open-loop at ``--rate`` calls/s for ``--duration``
   seconds with a mix of signed reads and writes, and at the same time the
   unauthenticated ``grpc.health.v1.Health/Check`` at a tenth of that rate as
   the reference: same server, same agents, same moment, but no signature
   check, no IAM and no database, so ``p99 / health p99`` is the cost of those;
5. prints a table (``--json FILE`` also writes the figures) and stops
   everything it started, however the run ends.

Open loop: call i is due at ``t0 + i / rate`` whatever happened to earlier
calls, and its latency is measured from that due time, not from when it was
actually sent. A stalled server therefore shows up in the percentiles instead
of quietly lowering the offered rate (coordinated omission).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import common, controller, ops_cost
from bench.agent_workers import (
    Worker,
    heartbeats,
    online_agents,
    split,
    wait_inventories,
    wait_online,
    worker_errors,
)
from bench.api_load import Abuse, generate, summarize
from bench.api_mix import MIX, PAGE_SIZE, make_world, never_ending_task, parse_mix
from cbr.client import Client
from controller.services import actions

TARGET_P99_MS = 20.0
# --abuse (issue 18): this many streams held open while the calls run, and
# the p99 the signed calls must keep beside them.
ABUSE_HEALTH_WATCHES = 1000
ABUSE_TASK_WATCHES = 200
TARGET_ABUSE_P99_MS = 50.0
TARGET_RATE = 200.0
AGENTS_PER_WORKER_MAX = 125


def run(args: argparse.Namespace) -> dict[str, Any]:
    """One whole benchmark run; everything started here is stopped before it returns."""
    base = Path(tempfile.mkdtemp(prefix="cbr-bench-"))
    run_id = f"{os.getpid()}"
    extra = []
    if args.heartbeat_interval:
        extra += ["--heartbeat-interval", str(args.heartbeat_interval)]
    ctl = controller.Controller(base / "controller", database_url=args.database_url,
                                extra_args=extra)
    workers: list[Worker] = []
    profiler: subprocess.Popen[bytes] | None = None
    try:
        ctl.start()
        keys = common.Keys(ctl.credentials["access_key"], ctl.credentials["secret_key"])
        client = Client(ctl.api, keys.access_key, keys.secret_key,
                        root_certificates=ctl.ca_pem)
        world = make_world(client, run_id)

        n_workers = args.workers or max(1, -(-args.agents // AGENTS_PER_WORKER_MAX))
        first = 0
        for i, count in enumerate(split(args.agents, n_workers)):
            workers.append(Worker(i, ctl.api, ctl.ca_file, first, count, run_id, keys,
                                  base / f"agents-{i}.log"))
            first += count
        patience = 60 + args.agents * 0.2
        enrolled = [w.wait_for("enrolled", patience) for w in workers]
        failed = sum(int(e["failed"]) for e in enrolled)
        if failed:
            raise RuntimeError(f"{failed} enrollments failed, e.g. "
                               f"{[m for e in enrolled for m in e['errors']][:3]}")
        enroll_s = (max(float(e["finished"]) for e in enrolled)
                    - min(float(e["started"]) for e in enrolled))
        connected = [w.wait_for("connected", patience) for w in workers]
        connect_s = max(float(c["at"]) for c in connected) - max(
            float(e["finished"]) for e in enrolled)
        online_before, waited = wait_online(client, args.agents, patience)
        if online_before < args.agents:
            raise RuntimeError(f"only {online_before} of {args.agents} agents came online "
                               f"within {waited:.0f} s")
        wait_inventories(client, args.agents, patience)
        if args.settle > 0:
            time.sleep(args.settle)

        if args.profile:
            profiler = _start_profiler(ctl.pid, args.profile, args.warmup + args.duration)
        beats0, beats0_at = heartbeats(workers)
        cpu0 = common.proc_sample(ctl.pid)
        world.page_size = args.page_size
        abuse = Abuse(ABUSE_HEALTH_WATCHES, ABUSE_TASK_WATCHES,
                      never_ending_task(client, run_id)) if args.abuse else None
        load = asyncio.run(generate(ctl.api, ctl.ca_pem, keys, world, rate=args.rate,
                                    duration=args.duration, warmup=args.warmup,
                                    seed=args.seed, mix=parse_mix(args.mix), abuse=abuse))
        cpu1 = common.proc_sample(ctl.pid)
        time.sleep(1.1)  # one more stats report from every worker
        beats1, beats1_at = heartbeats(workers)
        online_after = online_agents(client)
        disconnects, agent_errors = worker_errors(workers)
        client.close()
        if profiler is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                profiler.wait(timeout=60)

        target_p99 = TARGET_ABUSE_P99_MS if abuse is not None else TARGET_P99_MS
        signed = summarize(load.calls, load.window_s)
        health = summarize(load.health, load.window_s)
        per_method = {}
        for method, _ in MIX:
            mine = [s for s in load.calls if s.method == method.short]
            if mine:
                per_method[method.short] = summarize(mine, load.window_s)
        return {
            "calls_per_s": signed["calls_per_s"],
            "p50_ms": signed["p50_ms"],
            "p90_ms": signed["p90_ms"],
            "p99_ms": signed["p99_ms"],
            "max_ms": signed["max_ms"],
            "errors": signed["errors"],
            "error_samples": signed["error_samples"],
            "send_lag_p99_ms": signed["send_lag_p99_ms"],
            "calls": signed["calls"],
            "agents": min(online_before, online_after),
            "mix": {m.short: w for m, w in parse_mix(args.mix)},
            "page_size": args.page_size,
            "agents_online_start": online_before,
            "agents_online_end": online_after,
            "agents_requested": args.agents,
            "agent_workers": len(workers),
            "agent_disconnects": disconnects,
            "agent_errors": agent_errors,
            "enroll_s": round(enroll_s, 2),
            "enroll_per_s": round(args.agents / enroll_s, 1) if enroll_s > 0 else 0.0,
            "connect_s": round(connect_s, 2),
            "heartbeats_per_s": round((beats1 - beats0) / (beats1_at - beats0_at), 1)
            if beats1_at > beats0_at else 0.0,
            "rate": args.rate,
            "duration_s": args.duration,
            "window_s": round(load.window_s, 2),
            "health_calls_per_s": health["calls_per_s"],
            "health_p50_ms": health["p50_ms"],
            "health_p99_ms": health["p99_ms"],
            "health_errors": health["errors"],
            "p99_vs_health_p99": round(signed["p99_ms"] / health["p99_ms"], 2)
            if health["p99_ms"] > 0 else None,
            "controller_cpu_pct": round(common.cpu_percent(cpu0, cpu1), 1),
            "ops_cost": ops_cost.measure(),
            "write_share": sum(w for m, w in parse_mix(args.mix)
                               if actions.changes_state(m.name))
            / max(1, sum(w for _, w in parse_mix(args.mix))),
            "controller_rss_mb": round(cpu1.rss_mb, 1) if cpu1 else None,
            "controller_threads": cpu1.threads if cpu1 else None,
            "cpus": os.cpu_count(),
            "database": "postgresql" if args.database_url else "sqlite",
            "target": {"rate": TARGET_RATE, "p99_ms": target_p99,
                       "met": signed["p99_ms"] < target_p99
                       and signed["calls_per_s"] >= 0.98 * TARGET_RATE
                       and signed["errors"] == 0
                       and (abuse is None or (not abuse.refused and abuse.open_at_end
                                              == abuse.health_watches + abuse.task_watches))},
            "abuse": None if abuse is None else {
                "health_watches": abuse.health_watches, "task_watches": abuse.task_watches,
                "opened": abuse.opened, "refused": len(abuse.refused),
                "refused_samples": abuse.refused[:3], "open_at_end": abuse.open_at_end},
            "per_method": per_method,
            "profile": args.profile or None,
        }
    except BaseException:
        print(f"bench: the run failed; controller log tail:\n{ctl.log_tail()}", file=sys.stderr)
        for w in workers:
            with contextlib.suppress(OSError):
                tail = (base / f"agents-{w.index}.log").read_text(errors="replace")
                if tail.strip():
                    print(f"agent worker {w.index} log tail:\n{tail[-2000:]}", file=sys.stderr)
        raise
    finally:
        if profiler is not None and profiler.poll() is None:
            profiler.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                profiler.wait(timeout=30)
        for w in workers:
            w.stop()
        ctl.stop()
        if args.keep:
            print(f"bench: kept {base}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)


def _start_profiler(pid: int, out: str, seconds: float) -> subprocess.Popen[bytes] | None:
    """py-spy on the controller for the measured window (optional, for finding why).

    ``--gil`` samples only the thread holding the GIL: the controller is one
    Python process, so what holds the GIL is what everyone else waits for; and
    sampling all of its ~1000 threads (two per agent stream) at the default
    rate is more than py-spy keeps up with.
    """
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        print("bench: --profile needs py-spy (.venv/bin/pip install py-spy); skipping",
              file=sys.stderr)
        return None
    fmt = ("speedscope" if out.endswith(".json") else "flamegraph" if out.endswith(".svg")
           else "raw")
    return subprocess.Popen(
        [py_spy, "record", "-p", str(pid), "-d", str(int(seconds) + 1), "-o", out,
         "--format", fmt, "--threads", "--nonblocking", "--gil", "--rate", "50"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# -- output ----------------------------------------------------------------------------


def table(result: dict[str, Any]) -> str:
    """The figures for a person: the totals, the reference and each method."""
    r = result
    lines = [
        f"cbr bench api: {r['agents']} agents online ({r['agents_online_start']} at start, "
        f"{r['agents_online_end']} at end; {r['agent_disconnects']} stream drops), "
        f"{r['database']}, {r['cpus']} CPUs",
        f"  enrollment      {r['agents_requested']} agents in {r['enroll_s']:.2f} s "
        f"({r['enroll_per_s']:.0f}/s); all streams up {r['connect_s']:.2f} s later",
        f"  heartbeats      {r['heartbeats_per_s']:.1f}/s",
        f"  offered         {r['rate']:.0f} calls/s for {r['duration_s']:.0f} s",
        "",
        f"  {'':<22}{'calls/s':>9}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}"
        f"{'errors':>8}",
        _row("signed calls (all)", r["calls_per_s"], r["p50_ms"], r["p90_ms"], r["p99_ms"],
             r["max_ms"], r["errors"]),
    ]
    for name, m in r["per_method"].items():
        lines.append(_row(f"  {name}", m["calls_per_s"], m["p50_ms"], m["p90_ms"], m["p99_ms"],
                          m["max_ms"], m["errors"]))
    lines += [
        _row("health Check (ref)", r["health_calls_per_s"], r["health_p50_ms"], None,
             r["health_p99_ms"], None, r["health_errors"]),
        "",
        f"  signed p99 / health p99 = {r['p99_vs_health_p99']}   (generator's own send lag "
        f"p99 {r['send_lag_p99_ms']:.2f} ms, included above)",
        f"  controller      CPU {r['controller_cpu_pct']:.0f}% of one core, RSS "
        f"{r['controller_rss_mb']} MB, {r['controller_threads']} threads",
        *([ops_cost.summary(r["ops_cost"], r["controller_cpu_pct"], r["calls_per_s"],
                            r["write_share"])] if r.get("ops_cost") else []),
        f"  target          p99 < {r['target']['p99_ms']:.0f} ms at {TARGET_RATE:.0f} calls/s"
        f"{', no failed call, every stream open' if r['abuse'] else ''}: "
        f"{'met' if r['target']['met'] else 'NOT met'}",
    ]
    if r["abuse"]:
        a = r["abuse"]
        lines.insert(4, f"  held open       {a['health_watches']} unauthenticated health watches "
                        f"+ {a['task_watches']} task watches: {a['opened']} opened, "
                        f"{a['refused']} refused, {a['open_at_end']} still open at the end")
    if r["error_samples"]:
        lines.append(f"  errors, e.g.    {r['error_samples']}")
    if r["agent_errors"]:
        lines.append(f"  agent errors    {r['agent_errors']}")
    return "\n".join(lines)


def _row(label: str, rate: float, p50: float, p90: float | None, p99: float,
         mx: float | None, errors: int) -> str:
    def cell(v: float | None) -> str:
        return f"{v:>9.2f}" if v is not None else f"{'':>9}"

    return f"  {label:<22}{rate:>9.1f}{cell(p50)}{cell(p90)}{cell(p99)}{cell(mx)}{errors:>8}"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scripts/bench api", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--agents", type=int, default=500, help="simulated agents (500)")
    p.add_argument("--rate", type=float, default=TARGET_RATE,
                   help="signed calls per second offered (200)")
    p.add_argument("--duration", type=float, default=30.0, help="measured seconds (30)")
    p.add_argument("--warmup", type=float, default=2.0,
                   help="seconds at the same rate before measuring, not recorded (2)")
    p.add_argument("--settle", type=float, default=0.0,
                   help="seconds to wait after all agents are online, before the warm-up")
    p.add_argument("--json", metavar="FILE", help="also write the figures to FILE as JSON")
    p.add_argument("--database-url", default="",
                   help="the controller's state database (default: SQLite in a temp dir)")
    p.add_argument("--workers", type=int, default=0,
                   help=f"agent worker processes (default: one per {AGENTS_PER_WORKER_MAX})")
    p.add_argument("--heartbeat-interval", type=float, default=0.0,
                   help="the controller's heartbeat_interval (default: its own, 5 s)")
    p.add_argument("--seed", type=int, default=1, help="seed of the call mix")
    p.add_argument("--mix", default="",
                   help="call mix as METHOD=WEIGHT,... (default: 30%% GetVault, 30%% "
                        "GetTask, 15%% ListVaults, 15%% ListProtectables, 10%% writes)")
    p.add_argument("--page-size", type=int, default=PAGE_SIZE,
                   help=f"page_size of the List calls (default {PAGE_SIZE})")
    p.add_argument("--profile", metavar="FILE",
                   help="py-spy record the controller while measuring (.json: speedscope, "
                        ".svg: flame graph, else collapsed stacks as text)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir with the logs")
    p.add_argument("--abuse", action="store_true",
                   help=f"hold {ABUSE_HEALTH_WATCHES} unauthenticated health watches and "
                   f"{ABUSE_TASK_WATCHES} task watches open while the calls run "
                   f"(target p99 < {TARGET_ABUSE_P99_MS:g} ms, no failed call)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.agents < 1 or args.rate <= 0 or args.duration <= 0:
        raise SystemExit("bench: --agents, --rate and --duration must be positive")
    # A SIGTERM must unwind through run()'s finally, which stops the processes.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    result = run(args)
    print(table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
