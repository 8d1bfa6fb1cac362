"""The open-loop load generator of ``scripts/bench api``, and its latency summary.

Call i is due at ``t0 + i / rate`` whatever happened to earlier calls, and
its latency counts from that due time: kept in one module so that this rule
(no coordinated omission) and the health-check reference beside it are read
and changed together.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from bench import common
from bench.api_mix import MIX, Method, World, plan
from cbr.v1 import task_pb2

CALL_TIMEOUT_S = 10.0
HEALTH_SHARE = 0.1

HEALTH_CHECK = "/grpc.health.v1.Health/Check"


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
