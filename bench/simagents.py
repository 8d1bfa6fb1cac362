"""Simulated agents: real enrollment and real TLS Connect streams, many per process.

Run as ``python -m bench.simagents --api HOST:PORT --count N --first I``
(admin keys in CBR_BENCH_ACCESS_KEY / CBR_BENCH_SECRET_KEY). The benchmark
starts a few of these workers so that holding hundreds of streams costs the
measuring process nothing (no shared GIL) and each worker stays cheap:
``grpc.aio`` keeps every stream as a coroutine on one event loop instead of
the two threads per stream the sync ``agent.connection`` would need.

Each simulated agent does what ``cbr-agent`` does on the wire: a one-time
token from the signed ``AgentService.CreateEnrollmentToken``, ``Enroll`` with
a CSR of a fresh P-256 key (the CA is checked against the token's pin, as
``agent.enroll`` does), then one ``Connect`` stream on the agent endpoint with
its client certificate: Hello, an Inventory of one small disk, and a
heartbeat at the interval the controller's Welcome asks for. Keys stay in
memory: the state directory and its fsyncs are not what is measured.

Commands are read and ignored (the task stays running), unless
``--answer-backups``: then each backup command is answered at once with a
successful result that names its backups and stores nothing, so a benchmark
can fill a catalog with available backups without moving any data.

Reports go to stdout as JSON lines (``bench.common.emit``): ``enrolled``,
``connected``, then ``stats`` every second. The worker stops on SIGTERM,
SIGINT or when its stdin closes (the parent died).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from google.protobuf import timestamp_pb2

from agent.enroll import ROLE_TO_PB, token_ca_sha256
from bench.common import ENV_ACCESS_KEY, ENV_SECRET_KEY, Keys, aio_api_channel, emit
from cbr import __version__
from cbr.v1 import agent_pb2, agent_pb2_grpc, common_pb2, protectable_pb2

CREATE_TOKEN = "/cbr.v1.AgentService/CreateEnrollmentToken"
CALL_TIMEOUT_S = 60.0
CONNECT_TIMEOUT_S = 60.0
RECONNECT_DELAY_S = 1.0
DISK_BYTES = 10 * 1024**3
# The end-of-stream marker of aio reads (missing from the grpc type stubs).
EOF_MARK: Any = grpc.aio.EOF  # type: ignore[attr-defined]

# The agent's own keepalive settings (agent.connection.CHANNEL_OPTIONS), and a
# private subchannel pool so each agent has its own TCP+TLS connection, as
# separate hosts would.
CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.use_local_subchannel_pool", 1),
]


@dataclass
class Enrolled:
    """What one simulated agent keeps from enrollment."""

    index: int
    agent_id: str
    endpoint: str
    server_name: str
    key_pem: bytes
    cert_pem: bytes
    ca_pem: bytes


@dataclass
class Counters:
    """Worker-wide tallies, reported every second."""

    heartbeats: int = 0
    welcomed: int = 0
    open_streams: int = 0
    disconnects: int = 0
    errors: list[str] = field(default_factory=list)


def _csr(name: str) -> tuple[bytes, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
           .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key_pem, csr.public_bytes(serialization.Encoding.PEM).decode()


def _dial_endpoint(given: str, api: str) -> str:
    """A wildcard host in the endpoint the controller gives means 'its own host'."""
    host, _, port = given.rpartition(":")
    if host in ("", "0.0.0.0", "::", "[::]"):
        host = api.rpartition(":")[0]
    return f"{host}:{port}"


async def enroll_one(channel: grpc.aio.Channel, keys: Keys, api: str, run_id: str,
                     index: int) -> Enrolled:
    """Token, CSR, Enroll, CA pin check: one agent enrolled for real."""
    create_token = channel.unary_unary(
        CREATE_TOKEN,
        request_serializer=agent_pb2.CreateEnrollmentTokenRequest.SerializeToString,
        response_deserializer=agent_pb2.CreateEnrollmentTokenResponse.FromString)
    token_request = agent_pb2.CreateEnrollmentTokenRequest(description=f"bench {run_id}")
    token_response = await create_token(token_request, timeout=CALL_TIMEOUT_S,
                                        metadata=keys.metadata(CREATE_TOKEN, token_request))
    token = token_response.token
    name = f"bench-{run_id}-{index:04d}"
    key_pem, csr_pem = _csr(name)
    stub = agent_pb2_grpc.AgentServiceStub(channel)
    response = await stub.Enroll(agent_pb2.EnrollRequest(
        token=token, csr_pem=csr_pem, name=name, hostname=f"sim-{index:04d}",
        role=ROLE_TO_PB["host"], version=__version__), timeout=CALL_TIMEOUT_S)
    ca_pem = response.ca_certificate_pem.encode()
    ca = x509.load_pem_x509_certificate(ca_pem)
    got = hashlib.sha256(ca.public_bytes(serialization.Encoding.DER)).hexdigest()
    if got != token_ca_sha256(token):
        raise RuntimeError(f"agent {index}: the controller's CA does not match the token's pin")
    return Enrolled(index, response.agent_id, _dial_endpoint(response.agent_endpoint, api),
                    response.server_name, key_pem, response.certificate_pem.encode(), ca_pem)


def _inventory(index: int, disks: int = 1) -> Any:
    reported = []
    for d in range(disks):
        local = f"disk-{index}" if d == 0 else f"disk-{index}-{d}"
        path = f"/dev/vd{chr(ord('b') + d % 24)}{d // 24 or ''}"
        disk = protectable_pb2.ProtectableDisk(
            id=local, name="data", path=path, size_bytes=DISK_BYTES, device_type="block")
        reported.append(agent_pb2.ReportedProtectable(
            local_id=local, name=f"sim-{index:04d}-data{'' if d == 0 else f'-{d}'}",
            type=common_pb2.OBJECT_TYPE_DISK, size_bytes=DISK_BYTES, disks=[disk], path=path))
    return agent_pb2.Inventory(protectables=reported)


def _heartbeat() -> Any:
    ts = timestamp_pb2.Timestamp()
    ts.GetCurrentTime()
    return agent_pb2.ConnectRequest(heartbeat=agent_pb2.Heartbeat(sent_at=ts))


def _backup_result(command: Any) -> Any:
    """A successful result for a backup command: every backup it names, none
    of them with data (nothing was read or stored)."""
    ts = timestamp_pb2.Timestamp()
    ts.GetCurrentTime()
    backup = command.backup
    names = [backup.backup_id, *(d.backup_id for d in backup.disks if d.backup_id)]
    done = [agent_pb2.BackedUp(backup_id=name, protected_at=ts, snapshot="simulated",
                               change_detection="full") for name in names]
    return agent_pb2.ConnectRequest(result=agent_pb2.CommandResult(
        task_id=command.task_id, success=True,
        backup=agent_pb2.BackupResult(backups=done)))


async def hold_stream(agent: Enrolled, counters: Counters, stop: asyncio.Event,
                      welcomed: asyncio.Event, disks: int = 1,
                      answer_backups: bool = False) -> None:
    """One agent's Connect stream for the whole run, reconnecting if it breaks."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=agent.ca_pem, private_key=agent.key_pem,
        certificate_chain=agent.cert_pem)
    options = [*CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", agent.server_name)]
    first = True
    while not stop.is_set():
        channel = grpc.aio.secure_channel(agent.endpoint, credentials, options=options)
        call: Any = None
        try:
            stub = agent_pb2_grpc.AgentServiceStub(channel)
            call = stub.Connect()
            await call.write(agent_pb2.ConnectRequest(hello=agent_pb2.Hello(
                agent_id=agent.agent_id, version=__version__, hostname=f"sim-{agent.index:04d}")))
            await call.write(agent_pb2.ConnectRequest(inventory=_inventory(agent.index, disks)))
            response = await asyncio.wait_for(call.read(), CONNECT_TIMEOUT_S)
            if response is EOF_MARK or response.WhichOneof("message") != "welcome":
                raise RuntimeError("the stream's first response was not a Welcome")
            interval = max(0.05, response.welcome.heartbeat_interval_ms / 1000)
            counters.open_streams += 1
            if first:
                counters.welcomed += 1
                welcomed.set()
                first = False
            try:
                # grpc.aio allows one write at a time: heartbeats and answers share it.
                writing = asyncio.Lock()
                reader = asyncio.ensure_future(_drain(call, writing, answer_backups))
                # A random phase, so heartbeats spread over the interval as real
                # agents that started at different times would.
                next_beat = time.monotonic() + random.uniform(0, interval)
                while not stop.is_set() and not reader.done():
                    delay = next_beat - time.monotonic()
                    if delay > 0:
                        await _wait(stop, reader, delay)
                        continue
                    async with writing:
                        await call.write(_heartbeat())
                    counters.heartbeats += 1
                    next_beat += interval
                reader.cancel()
            finally:
                counters.open_streams -= 1
            if stop.is_set():
                break
            counters.disconnects += 1
        except Exception as exc:  # any failure of one stream: count it, dial again
            if stop.is_set():
                break
            counters.disconnects += 1
            if len(counters.errors) < 20:
                counters.errors.append(f"agent {agent.index}: {_describe(exc)}")
        finally:
            if call is not None:
                call.cancel()
            await channel.close(None)
        if not stop.is_set():
            await asyncio.sleep(RECONNECT_DELAY_S)


async def _drain(call: Any, writing: asyncio.Lock, answer_backups: bool) -> None:
    """Reads commands until the controller ends the stream, answering backups
    when asked to and ignoring the rest."""
    while True:
        message = await call.read()
        if message is EOF_MARK:
            return
        if (answer_backups and message.WhichOneof("message") == "command"
                and message.command.WhichOneof("action") == "backup"):
            async with writing:
                await call.write(_backup_result(message.command))


async def _wait(stop: asyncio.Event, reader: asyncio.Future[None], delay: float) -> None:
    """Sleeps up to ``delay``, waking early when stopping or the stream ends."""
    stopper = asyncio.ensure_future(stop.wait())
    either: set[asyncio.Future[Any]] = {stopper, reader}
    try:
        await asyncio.wait(either, timeout=delay,
                           return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return f"{type(exc).__name__}: {exc}"


async def run(args: argparse.Namespace, keys: Keys) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # A parent that dies cannot signal us; its end of our stdin closing tells us.
    threading.Thread(target=_watch_stdin, args=(loop, stop), daemon=True).start()
    emit("ready", pid=os.getpid())

    counters = Counters()
    limit = asyncio.Semaphore(args.concurrency)
    api_channel = aio_api_channel(args.api, args.ca_file.read_bytes())

    async def enroll_limited(index: int) -> Enrolled:
        async with limit:
            return await enroll_one(api_channel, keys, args.api, args.run_id, index)

    started = time.time()
    results = await asyncio.gather(
        *(enroll_limited(i) for i in range(args.first, args.first + args.count)),
        return_exceptions=True)
    finished = time.time()
    await api_channel.close(None)
    agents = [r for r in results if isinstance(r, Enrolled)]
    failures = [_describe(r) for r in results if isinstance(r, BaseException)]
    emit("enrolled", n=len(agents), failed=len(failures), errors=failures[:5],
         started=started, finished=finished)

    welcomes = [asyncio.Event() for _ in agents]
    tasks = [asyncio.ensure_future(hold_stream(a, counters, stop, w, args.disks,
                                               args.answer_backups))
             for a, w in zip(agents, welcomes, strict=True)]
    waiting = [asyncio.ensure_future(w.wait()) for w in welcomes]
    if waiting:
        await asyncio.wait(waiting, timeout=CONNECT_TIMEOUT_S)
    for w in waiting:
        w.cancel()
    emit("connected", n=counters.welcomed, at=time.time(), errors=counters.errors[:5])

    while not stop.is_set():
        emit("stats", at=time.time(), heartbeats=counters.heartbeats,
             open=counters.open_streams, disconnects=counters.disconnects,
             errors=counters.errors[-5:])
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
    await asyncio.gather(*tasks, return_exceptions=True)
    emit("stopped", heartbeats=counters.heartbeats, disconnects=counters.disconnects)
    return 0


def _watch_stdin(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    try:
        while sys.stdin.buffer.read(4096):
            pass
    except (OSError, ValueError):
        pass
    loop.call_soon_threadsafe(stop.set)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.simagents", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--api", required=True, help="HOST:PORT of the controller's public API")
    p.add_argument("--ca-file", type=Path, required=True,
                   help="the CA of the API's TLS certificate (ca/ca.crt in its data dir)")
    p.add_argument("--count", type=int, required=True, help="agents in this worker")
    p.add_argument("--first", type=int, default=0, help="index of the first agent")
    p.add_argument("--concurrency", type=int, default=8,
                   help="enrollments in flight at once in this worker")
    p.add_argument("--run-id", default="run", help="part of every agent name")
    p.add_argument("--disks", type=int, default=1, help="disks each agent reports")
    p.add_argument("--answer-backups", action="store_true",
                   help="answer each backup command at once with an empty success")
    args = p.parse_args(argv)
    keys = Keys(os.environ[ENV_ACCESS_KEY], os.environ[ENV_SECRET_KEY])
    return asyncio.run(run(args, keys))


if __name__ == "__main__":
    raise SystemExit(main())
