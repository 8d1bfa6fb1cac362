"""Pieces shared by the benchmark's processes: signing by hand, percentiles, /proc.

The load generator and the simulated agents use ``grpc.aio``, which does not
take the sync ``cbr.client.SigningInterceptor``; signing each call here with
``cbr.signing`` over the very bytes the stub will send keeps them exactly as
signed as the CLI's calls, without an aio interceptor layer on the hot path.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from cbr import signing, tls

# Environment variables that carry the admin keys to the agent workers, so the
# secret never shows in a process listing.
ENV_ACCESS_KEY = "CBR_BENCH_ACCESS_KEY"
ENV_SECRET_KEY = "CBR_BENCH_SECRET_KEY"


@dataclass(frozen=True)
class Keys:
    """An access key pair that signs calls."""

    access_key: str
    secret_key: str

    def metadata(self, method: str, request: Any) -> tuple[tuple[str, str], ...]:
        """The four x-cbr-* entries for one call of ``method`` with ``request``.

        The digest is over ``SerializeToString()``, the same bytes the generated
        serializer puts on the wire, so the controller's digest matches.
        """
        headers = signing.sign(self.access_key, self.secret_key, method,
                               request.SerializeToString(), time.time())
        return headers.metadata()


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of already sorted values, nearest-rank; 0 if empty.

    Nearest-rank rather than interpolation: a p99 is then a latency some call
    really had, which is what a target like "p99 under 20 ms" is about.
    """
    if not sorted_values:
        return 0.0
    rank = min(len(sorted_values), max(1, math.ceil(len(sorted_values) * q / 100)))
    return float(sorted_values[rank - 1])


def emit(event: str, **fields: Any) -> None:
    """One JSON line on stdout: how a worker reports to the parent process."""
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class ProcSample:
    """CPU seconds (user+system) and memory of a process at one instant."""

    at: float
    cpu_s: float
    rss_mb: float
    threads: int


def proc_sample(pid: int) -> ProcSample | None:
    """Reads /proc/<pid>; None when the process is gone or /proc is missing."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
        with open(f"/proc/{pid}/status") as fh:
            status = fh.read()
    except OSError:
        return None
    # The command name may contain spaces; the fields after it are fixed.
    fields = stat.rpartition(")")[2].split()
    cpu = (int(fields[11]) + int(fields[12])) / _CLK_TCK
    rss_kb = threads = 0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            rss_kb = int(line.split()[1])
        elif line.startswith("Threads:"):
            threads = int(line.split()[1])
    return ProcSample(time.monotonic(), cpu, rss_kb / 1024, threads)


def cpu_percent(before: ProcSample | None, after: ProcSample | None) -> float:
    """CPU use between two samples in percent of one core (200 = two cores busy)."""
    if before is None or after is None or after.at <= before.at:
        return 0.0
    return 100.0 * (after.cpu_s - before.cpu_s) / (after.at - before.at)


def aio_api_channel(api: str, ca_pem: bytes) -> grpc.aio.Channel:
    """An asyncio channel to the API over TLS, verified against its pinned CA."""
    return grpc.aio.secure_channel(api, tls.credentials(ca_pem),
                                   options=tls.channel_options(tls.SERVER_NAME))
