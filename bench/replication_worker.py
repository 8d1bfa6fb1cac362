"""Both ends of a replication, each in its own process, for ``scripts/bench replication``.

The importer and the sender run as separate processes, as they do in
production (two agents in two clouds): each has its own interpreter and GIL,
so the time one spends in Python never stalls the other, and the parent can
time the sender from the outside the way it times ``restic copy``.

    python -m bench.replication_worker init VAULT VAULT_ID
    python -m bench.replication_worker serve PLAN
    python -m bench.replication_worker send PLAN SOURCE_VAULT PORT STEP
    python -m bench.replication_worker new-chunks VAULT --old ID... --new ID...

``PLAN`` is a JSON file the parent writes: the target vault (path and id),
the TLS certificate and key, and per step (``first``, ``incremental``) the
grants: import token, replication id and ``{source backup: replica id}``.
The token travels in that file (mode 0600), never on a command line.

``serve`` prints ``{"event": "listening", "port": N, "cpu_s": S}`` once it
accepts streams and serves until SIGTERM, then prints ``{"event": "stopped",
"cpu_s": S}``. ``send`` and ``new-chunks`` print one JSON
object as their last line: see each function.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import resource
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.importer import ImporterServicer, ImportGrant, ImportGrants, server_options, token_digest
from agent.memory import pin_mmap_threshold
from agent.replication import GrpcReplicaTarget
from bench.common import emit
from bench.data_worker import peak_rss_mib
from cbr.repo import Repository
from cbr.repo.maintenance.locks import Lock
from cbr.repo.maintenance.walk import iter_reachable
from cbr.repo.replicate import ReplicaSource, backup_manifests, replica_manifests, replicate
from cbr.storage.local import LocalBackend
from cbr.v1 import agent_pb2, importer_pb2_grpc

GRPC_MESSAGE_PREFIX = 5
"""Bytes gRPC puts before every message on a stream (compressed flag and
length): counted with each request, since they cross the wire too."""

SOURCE = ReplicaSource(cloud="bench-source", region="local", project_id="bench")


def make_tls(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key (P-256, as the
    agents' certificates), so the stream pays for TLS as it does between clouds."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench-importer")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "importer.crt", directory / "importer.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


def _init(vault: Path, vault_id: str) -> dict[str, Any]:
    Repository.init(LocalBackend(vault), vault_id=vault_id, encrypted=False).close()
    return {}


def _serve(plan: dict[str, Any]) -> None:
    """Holds every grant of the plan at once: the parent starts one importer
    per step, before the step's timing begins (an importer agent is running
    long before a replication reaches it)."""
    grants = ImportGrants()
    expires = dt.datetime.now(dt.UTC) + dt.timedelta(hours=12)
    storage = agent_pb2.StorageAccess(url=plan["target"])
    for step in plan["steps"].values():
        for grant in step:
            grants.expect(ImportGrant(
                replication_id=grant["replication_id"], token_sha256=token_digest(grant["token"]),
                vault_id=plan["target_vault_id"], storage=storage,
                replica_ids=frozenset(grant["replicas"].values()), expires_at=expires))
    server = grpc.server(ThreadPoolExecutor(4), options=server_options())
    importer_pb2_grpc.add_ImporterServiceServicer_to_server(ImporterServicer(grants), server)
    creds = grpc.ssl_server_credentials(
        [(Path(plan["tls_key"]).read_bytes(), Path(plan["tls_cert"]).read_bytes())])
    port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    emit("listening", port=port, cpu_s=_cpu_s())
    stop.wait()
    server.stop(5).wait()
    emit("stopped", cpu_s=_cpu_s())


def _cpu_s() -> float:
    """User and system CPU seconds of this process so far: with the wall
    time, whether a side was busy or waiting for the other."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _send(plan: dict[str, Any], source: Path, port: int, step: str) -> dict[str, Any]:
    """Replicates each backup of the step over its own Import stream, one after
    the other, in one process (as one ``restic copy`` copies its snapshots).

    Reports ``request_bytes`` (every request's serialized size plus gRPC's
    message prefix; no HTTP/2 or TLS framing), the engine's stats summed over
    the backups, and the peak RSS."""
    creds = grpc.ssl_channel_credentials(root_certificates=Path(plan["tls_cert"]).read_bytes())
    channel = grpc.secure_channel(f"127.0.0.1:{port}", creds)
    backend = LocalBackend(source)
    totals: dict[str, int] = {}
    sent = requests = 0
    with Lock.acquire(backend, kind="restore"):
        repo = Repository.open(backend)
        try:
            for grant in plan["steps"][step]:
                for backup_id, replica_id in grant["replicas"].items():
                    manifests = backup_manifests(repo, backup_id)
                    replicas = replica_manifests(manifests, {backup_id: replica_id},
                                                 vault_id=plan["target_vault_id"],
                                                 checkpoint_id="bench", source=SOURCE)
                    with GrpcReplicaTarget(channel, grant["token"], timeout_s=3600) as target:
                        stats = replicate(repo, manifests, target, replicas=replicas)
                    sent += target.request_bytes + GRPC_MESSAGE_PREFIX * target.requests
                    requests += target.requests
                    for key, value in vars(stats).items():
                        if isinstance(value, int):  # not the manifests' digests
                            totals[key] = totals.get(key, 0) + value
        finally:
            repo.close()
            channel.close()
    return {"stats": totals, "request_bytes": sent, "requests": requests}


def _new_chunks(vault: Path, old: list[str], new: list[str]) -> dict[str, Any]:
    """The blobs the ``new`` backups reach and the ``old`` ones do not (what an
    incremental replica must carry, since the target holds the old ones), with
    the sum of their stored lengths: in an unencrypted vault that is the
    chunk's wire form (the zstd frame or the raw bytes), in an encrypted one
    28 bytes more per blob (nonce and tag, section 5)."""
    repo = Repository.open(LocalBackend(vault))
    try:
        def reach(ids: list[str]) -> set[tuple[bytes, bytes]]:
            found: set[tuple[bytes, bytes]] = set()
            seen: set[bytes] = set()
            for backup_id in ids:
                for m in backup_manifests(repo, backup_id):
                    found.update((m.chunk_key_id, cid) for _t, cid in iter_reachable(repo, m, seen))
            return found

        before = reach(old)
        added = reach(new) - before
        stored = raw = 0
        for key_id, chunk_id in added:
            loc = repo.index.lookup(key_id, chunk_id)
            if loc is None:
                raise SystemExit(f"chunk {chunk_id.hex()} is reachable but not indexed")
            stored += loc.stored_length
            raw += loc.raw_length
        overhead = 28 * len(added) if repo.config.encrypted else 0
        return {"chunks": len(added), "stored_bytes": stored, "raw_bytes": raw,
                "wire_form_bytes": stored - overhead, "chunks_before": len(before)}
    finally:
        repo.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.replication_worker")
    sub = p.add_subparsers(dest="op", required=True)
    s = sub.add_parser("init")
    s.add_argument("vault", type=Path)
    s.add_argument("vault_id")
    s = sub.add_parser("serve")
    s.add_argument("plan", type=Path)
    s = sub.add_parser("send")
    s.add_argument("plan", type=Path)
    s.add_argument("source", type=Path)
    s.add_argument("port", type=int)
    s.add_argument("step")
    s = sub.add_parser("new-chunks")
    s.add_argument("vault", type=Path)
    s.add_argument("--old", nargs="+", required=True)
    s.add_argument("--new", nargs="+", required=True)
    a = p.parse_args(argv)
    pin_mmap_threshold()  # as `cbr-agent run` does before any work
    started = time.perf_counter()
    out: dict[str, Any]
    if a.op == "init":
        out = _init(a.vault, a.vault_id)
    elif a.op == "serve":
        _serve(json.loads(a.plan.read_text()))
        return 0
    elif a.op == "send":
        out = _send(json.loads(a.plan.read_text()), a.source, a.port, a.step)
    else:
        out = _new_chunks(a.vault, a.old, a.new)
    out["seconds"] = time.perf_counter() - started
    out["cpu_s"] = _cpu_s()
    out["peak_rss_mib"] = peak_rss_mib()
    sys.stdout.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
