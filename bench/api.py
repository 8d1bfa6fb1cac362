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
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import field_mask_pb2
from grpc_health.v1 import health_pb2

from bench import common, controller
from cbr.client import Client
from cbr.v1 import (
    agent_pb2,
    backup_pb2,
    common_pb2,
    protectable_pb2,
    task_pb2,
    vault_pb2,
)

TARGET_P99_MS = 20.0
# --abuse (issue 18): this many streams held open while the calls run, and
# the p99 the signed calls must keep beside them.
ABUSE_HEALTH_WATCHES = 1000
ABUSE_TASK_WATCHES = 200
TARGET_ABUSE_P99_MS = 50.0
TARGET_RATE = 200.0
CALL_TIMEOUT_S = 10.0
FIXTURE_VAULTS = 20
FIXTURE_TASKS = 10
HEALTH_SHARE = 0.1
AGENTS_PER_WORKER_MAX = 125

HEALTH_CHECK = "/grpc.health.v1.Health/Check"


# -- the call mix ------------------------------------------------------------------


@dataclass(frozen=True)
class Method:
    """One unary method: its full name and how to (de)serialize it."""

    name: str
    request_type: Any
    response_type: Any

    @property
    def short(self) -> str:
        return self.name.rpartition("/")[2]


LIST_VAULTS = Method("/cbr.v1.VaultService/ListVaults", vault_pb2.ListVaultsRequest,
                     vault_pb2.ListVaultsResponse)
GET_VAULT = Method("/cbr.v1.VaultService/GetVault", vault_pb2.GetVaultRequest,
                   vault_pb2.GetVaultResponse)
CREATE_VAULT = Method("/cbr.v1.VaultService/CreateVault", vault_pb2.CreateVaultRequest,
                      vault_pb2.CreateVaultResponse)
UPDATE_VAULT = Method("/cbr.v1.VaultService/UpdateVault", vault_pb2.UpdateVaultRequest,
                      vault_pb2.UpdateVaultResponse)
DELETE_VAULT = Method("/cbr.v1.VaultService/DeleteVault", vault_pb2.DeleteVaultRequest,
                      vault_pb2.DeleteVaultResponse)
LIST_PROTECTABLES = Method("/cbr.v1.ProtectableService/ListProtectables",
                           protectable_pb2.ListProtectablesRequest,
                           protectable_pb2.ListProtectablesResponse)
GET_TASK = Method("/cbr.v1.TaskService/GetTask", task_pb2.GetTaskRequest,
                  task_pb2.GetTaskResponse)

# Mostly reads, as a console and scripts polling state do: single-resource
# reads (task and vault polling) most, pages of a console list (20 rows) less,
# and one call in ten writes. --mix and --page-size change it.
MIX: tuple[tuple[Method, int], ...] = (
    (GET_VAULT, 30),
    (GET_TASK, 30),
    (LIST_VAULTS, 15),
    (LIST_PROTECTABLES, 15),
    (UPDATE_VAULT, 4),
    (CREATE_VAULT, 3),
    (DELETE_VAULT, 3),
)
PAGE_SIZE = 20


@dataclass
class World:
    """What the reads and writes refer to; writes during the run add to it."""

    run_id: str
    vault_ids: list[str]
    task_ids: list[str]
    created: deque[str] = field(default_factory=deque)
    serial: int = 0
    page_size: int = PAGE_SIZE

    def request(self, method: Method, rng: random.Random) -> tuple[Method, Any]:
        """The request for one due call; a delete with nothing to delete creates instead."""
        if method is LIST_VAULTS:
            return method, vault_pb2.ListVaultsRequest(page_size=self.page_size)
        if method is GET_VAULT:
            return method, vault_pb2.GetVaultRequest(vault_id=rng.choice(self.vault_ids))
        if method is LIST_PROTECTABLES:
            return method, protectable_pb2.ListProtectablesRequest(page_size=self.page_size)
        if method is GET_TASK:
            return method, task_pb2.GetTaskRequest(task_id=rng.choice(self.task_ids))
        if method is UPDATE_VAULT:
            self.serial += 1
            return method, vault_pb2.UpdateVaultRequest(
                vault_id=rng.choice(self.vault_ids),
                vault=vault_pb2.Vault(description=f"bench update {self.serial}"),
                update_mask=field_mask_pb2.FieldMask(paths=["description"]))
        if method is DELETE_VAULT and self.created:
            return method, vault_pb2.DeleteVaultRequest(vault_id=self.created.popleft())
        self.serial += 1
        return CREATE_VAULT, _create_vault_request(f"bench-{self.run_id}-w{self.serial}")

    def absorb(self, method: Method, response: Any) -> None:
        """Remembers what a write made, so later deletes and GetTasks can use it."""
        if method is CREATE_VAULT:
            self.created.append(response.vault.id)
        elif method is DELETE_VAULT and response.task_id:
            self.task_ids.append(response.task_id)


def _create_vault_request(name: str) -> Any:
    return vault_pb2.CreateVaultRequest(
        name=name, object_type=common_pb2.OBJECT_TYPE_DISK, size_gb=100,
        description="made by scripts/bench")


def make_world(client: Client, run_id: str) -> World:
    """Vaults for GetVault/UpdateVault and finished tasks for GetTask (from deletes)."""
    vault_ids = [client.vaults.CreateVault(
        _create_vault_request(f"bench-{run_id}-fixture-{i:02d}")).vault.id
        for i in range(FIXTURE_VAULTS)]
    task_ids = []
    for i in range(FIXTURE_TASKS):
        vid = client.vaults.CreateVault(_create_vault_request(f"bench-{run_id}-gone-{i:02d}")
                                        ).vault.id
        task_ids.append(client.vaults.DeleteVault(vault_pb2.DeleteVaultRequest(vault_id=vid)
                                                  ).task_id)
    return World(run_id, vault_ids, task_ids)


def never_ending_task(client: Client, run_id: str) -> str:
    """A backup task that stays running: simulated agents take commands and
    never answer them. Task watches on it stay open."""
    [disk] = client.protectables.ListProtectables(protectable_pb2.ListProtectablesRequest(
        type=common_pb2.OBJECT_TYPE_DISK, page_size=1)).protectables
    request = _create_vault_request(f"bench-{run_id}-watched")
    request.resources.add(id=disk.id)
    vault_id = client.vaults.CreateVault(request).vault.id
    checkpoint = client.backups.CreateCheckpoint(backup_pb2.CreateCheckpointRequest(
        vault_id=vault_id)).checkpoint
    return str(checkpoint.task_ids[0])


@dataclass
class Abuse:
    """Streams held open through the measured window (--abuse)."""

    health_watches: int
    task_watches: int
    task_id: str = ""
    opened: int = 0
    refused: list[str] = field(default_factory=list)
    open_at_end: int = 0


async def _hold_streams(api: str, ca_pem: bytes, keys: common.Keys, abuse: Abuse
                        ) -> tuple[list[grpc.aio.Channel], list[Any]]:
    """Opens the watches, each on the channel of its group (a hundred per
    connection), and waits for every first message."""
    channels: list[grpc.aio.Channel] = []
    calls: list[Any] = []

    def channel_for(i: int) -> grpc.aio.Channel:
        if i % 100 == 0:
            channels.append(common.aio_api_channel(api, ca_pem))
        return channels[-1]

    watch_task = "/cbr.v1.TaskService/WatchTask"
    request = task_pb2.WatchTaskRequest(task_id=abuse.task_id)
    for i in range(abuse.health_watches + abuse.task_watches):
        channel = channel_for(i)
        if i < abuse.health_watches:
            calls.append(channel.unary_stream(
                "/grpc.health.v1.Health/Watch",
                request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                response_deserializer=health_pb2.HealthCheckResponse.FromString)(
                    health_pb2.HealthCheckRequest()))
        else:
            calls.append(channel.unary_stream(
                watch_task, request_serializer=task_pb2.WatchTaskRequest.SerializeToString,
                response_deserializer=task_pb2.WatchTaskResponse.FromString)(
                    request, metadata=keys.metadata(watch_task, request)))
    for call in calls:
        try:
            await call.read()
            abuse.opened += 1
        except grpc.aio.AioRpcError as exc:
            abuse.refused.append(f"{exc.code().name}: {exc.details()}")
    return channels, calls


def parse_mix(text: str) -> tuple[tuple[Method, int], ...]:
    """``ListVaults=25,GetVault=20`` into a mix; empty means the default MIX.

    For finding out what one method costs: ``--mix GetVault=1`` loads only it.
    """
    if not text:
        return MIX
    by_name = {m.short: m for m, _ in MIX}
    out = []
    for item in text.split(","):
        name, _, weight = item.partition("=")
        if name.strip() not in by_name:
            raise SystemExit(f"bench: --mix: unknown method {name!r}; one of {sorted(by_name)}")
        out.append((by_name[name.strip()], int(weight or 1)))
    return tuple(out)


def plan(n: int, seed: int, mix: tuple[tuple[Method, int], ...] = MIX) -> list[Method]:
    """The methods of n calls, drawn by weight with a fixed seed (same plan every run)."""
    rng = random.Random(seed)
    methods = [m for m, _ in mix]
    weights = [w for _, w in mix]
    return rng.choices(methods, weights, k=n)


# -- the load generator ------------------------------------------------------------


@dataclass
class Sample:
    method: str
    latency_s: float
    ok: bool
    error: str = ""
    # How late the generator itself sent the call (its own scheduling delay);
    # part of latency_s, reported apart so a busy generator is visible.
    lag_s: float = 0.0


@dataclass
class LoadResult:
    calls: list[Sample]
    health: list[Sample]
    window_s: float
    started: float
    ended: float


async def _call(channel: grpc.aio.Channel, keys: common.Keys | None, method: Method,
                request: Any, due: float, out: list[Sample],
                on_ok: Callable[[Method, Any], None] | None = None) -> None:
    loop = asyncio.get_running_loop()
    stub = channel.unary_unary(method.name,
                               request_serializer=method.request_type.SerializeToString,
                               response_deserializer=method.response_type.FromString)
    metadata = keys.metadata(method.name, request) if keys is not None else None
    lag = loop.time() - due
    try:
        response = await stub(request, timeout=CALL_TIMEOUT_S, metadata=metadata)
    except grpc.aio.AioRpcError as exc:
        out.append(Sample(method.short, loop.time() - due, False,
                          f"{exc.code().name}: {exc.details()}", lag))
        return
    out.append(Sample(method.short, loop.time() - due, True, lag_s=lag))
    if on_ok is not None:
        on_ok(method, response)


async def _open_loop(rate: float, count: int, start: float,
                     issue: Callable[[int, float], Any]) -> None:
    """Issues call i at start + i / rate by the clock, never waiting for earlier calls."""
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task[None]] = set()
    for i in range(count):
        due = start + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.ensure_future(issue(i, due))
        pending.add(task)
        task.add_done_callback(pending.discard)
    if pending:
        await asyncio.gather(*pending)


async def generate(api: str, ca_pem: bytes, keys: common.Keys, world: World, *, rate: float,
                   duration: float, warmup: float, seed: int,
                   mix: tuple[tuple[Method, int], ...] = MIX,
                   abuse: Abuse | None = None) -> LoadResult:
    """Warm-up (not recorded), then the measured window of signed calls plus
    health checks; with ``abuse``, while its streams are held open."""
    held: tuple[list[grpc.aio.Channel], list[Any]] = ([], [])
    if abuse is not None:
        held = await _hold_streams(api, ca_pem, keys, abuse)
    channel = common.aio_api_channel(api, ca_pem)
    await channel.channel_ready()
    loop = asyncio.get_running_loop()
    rng = random.Random(seed)
    health_rate = max(1.0, rate * HEALTH_SHARE)
    health_request = health_pb2.HealthCheckRequest(service="")
    health_method = Method(HEALTH_CHECK, health_pb2.HealthCheckRequest,
                           health_pb2.HealthCheckResponse)
    try:
        if warmup > 0:
            scratch: list[Sample] = []
            methods = plan(max(1, int(rate * warmup)), seed + 1, mix)

            async def warm(i: int, due: float) -> None:
                method, request = world.request(methods[i], rng)
                await _call(channel, keys, method, request, due, scratch, world.absorb)

            await _open_loop(rate, len(methods), loop.time() + 0.05, warm)

        calls: list[Sample] = []
        health: list[Sample] = []
        methods = plan(max(1, int(rate * duration)), seed, mix)

        async def signed(i: int, due: float) -> None:
            method, request = world.request(methods[i], rng)
            await _call(channel, keys, method, request, due, calls, world.absorb)

        async def unsigned(_i: int, due: float) -> None:
            await _call(channel, None, health_method, health_request, due, health)

        start = loop.time() + 0.05
        wall_start = time.time()
        await asyncio.gather(
            _open_loop(rate, len(methods), start, signed),
            _open_loop(health_rate, max(1, int(health_rate * duration)), start, unsigned))
        window = loop.time() - start
        if abuse is not None:
            abuse.open_at_end = sum(1 for call in held[1] if not call.done())
        return LoadResult(calls, health, window, wall_start, time.time())
    finally:
        await channel.close(None)
        for call in held[1]:
            call.cancel()
        for other in held[0]:
            await other.close(None)


# -- agent workers -----------------------------------------------------------------


class Worker:
    """One ``bench.simagents`` process and the latest of what it reported."""

    def __init__(self, index: int, api: str, ca_file: Path, first: int, count: int,
                 run_id: str, keys: common.Keys, log_path: Path, disks: int = 1) -> None:
        self.index = index
        self.count = count
        env = controller.child_env()
        env[common.ENV_ACCESS_KEY] = keys.access_key
        env[common.ENV_SECRET_KEY] = keys.secret_key
        env["PYTHONPATH"] = os.pathsep.join(
            [str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
        self._stderr = open(log_path, "ab")  # noqa: SIM115 - open while the process runs
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.simagents", "--api", api, "--ca-file", str(ca_file),
             "--count", str(count),
             "--first", str(first), "--run-id", run_id, "--disks", str(disks)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, env=env,
            start_new_session=True)
        controller.track(self.proc)
        self.events: dict[str, dict[str, Any]] = {}
        self._cond = threading.Condition()
        threading.Thread(target=self._read, name=f"worker-{index}", daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            with self._cond:
                self.events[str(event.get("event"))] = event
                self._cond.notify_all()
        with self._cond:
            self.events["exited"] = {"code": self.proc.wait()}
            self._cond.notify_all()

    def wait_for(self, event: str, timeout: float) -> dict[str, Any]:
        with self._cond:
            ok = self._cond.wait_for(
                lambda: event in self.events or "exited" in self.events, timeout)
            if event in self.events:
                return self.events[event]
        why = "exited" if ok else f"did not report {event!r} within {timeout:.0f} s"
        raise RuntimeError(f"agent worker {self.index} {why}; see its log")

    def latest(self, event: str) -> dict[str, Any]:
        with self._cond:
            return dict(self.events.get(event, {}))

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a few seconds; closes our end of its stdin."""
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        controller.untrack(self.proc)
        self._stderr.close()


def split(total: int, workers: int) -> list[int]:
    """Agents per worker: as even as possible, none empty."""
    workers = max(1, min(workers, total))
    base, extra = divmod(total, workers)
    return [base + (1 if i < extra else 0) for i in range(workers)]


def online_agents(client: Client) -> int:
    """How many agents the controller shows ONLINE, counted over every page."""
    count, token = 0, ""
    while True:
        response = client.agents.ListAgents(agent_pb2.ListAgentsRequest(
            status=agent_pb2.AGENT_STATUS_ONLINE, page_size=1000, page_token=token))
        count += len(response.agents)
        token = response.next_page_token
        if not token:
            return count


def wait_inventories(client: Client, want: int, timeout: float) -> float:
    """Polls until the agents' first reports are all recorded; seconds waited.

    An agent shows online as soon as its stream opens, but its first
    inventory is a write the controller has yet to do: measuring before they
    are all in would measure start-up, not agents heartbeating.
    """
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        reply = client.protectables.ListProtectables(
            protectable_pb2.ListProtectablesRequest(page_size=1))
        if reply.total_count >= want:
            break
        time.sleep(0.5)
    return time.monotonic() - started


def wait_online(client: Client, want: int, timeout: float) -> tuple[int, float]:
    """Polls until ``want`` agents are online; (how many were, seconds waited)."""
    started = time.monotonic()
    seen = 0
    while time.monotonic() - started < timeout:
        seen = online_agents(client)
        if seen >= want:
            break
        time.sleep(0.25)
    return seen, time.monotonic() - started


def heartbeats(workers: Sequence[Worker]) -> tuple[int, float]:
    """Heartbeats sent so far by all workers, and the oldest report time among them."""
    stats = [w.latest("stats") for w in workers]
    return (sum(int(s.get("heartbeats", 0)) for s in stats),
            min((float(s.get("at", 0.0)) for s in stats), default=0.0))


def worker_errors(workers: Sequence[Worker]) -> tuple[int, list[str]]:
    stats = [w.latest("stats") for w in workers]
    disconnects = sum(int(s.get("disconnects", 0)) for s in stats)
    messages = [m for s in stats for m in s.get("errors", [])]
    return disconnects, messages[:5]


# -- the run -------------------------------------------------------------------------


def summarize(samples: Sequence[Sample], window_s: float) -> dict[str, Any]:
    ok = sorted(s.latency_s * 1000 for s in samples if s.ok)
    errors = [s for s in samples if not s.ok]
    return {
        "calls": len(samples),
        "calls_per_s": round(len(ok) / window_s, 1) if window_s > 0 else 0.0,
        "p50_ms": round(common.percentile(ok, 50), 2),
        "p90_ms": round(common.percentile(ok, 90), 2),
        "p99_ms": round(common.percentile(ok, 99), 2),
        "max_ms": round(ok[-1], 2) if ok else 0.0,
        "errors": len(errors),
        "send_lag_p99_ms": round(common.percentile(sorted(s.lag_s * 1000 for s in samples), 99),
                                 2),
        "error_samples": sorted({f"{s.method}: {s.error}" for s in errors})[:5],
    }


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
