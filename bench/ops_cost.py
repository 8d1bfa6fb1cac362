"""What the audit trail and the API metrics cost each call, measured in process.

The load run's latency on a shared 2-core machine moves by more than the few
microseconds these layers add, so ``scripts/bench api`` measures them
directly: the same trivial handler called through the audit interceptor and
the metrics interceptor against called bare, for a read (audited only when
refused) and for a write (always audited: its ids taken and its record
queued), plus the batched insert of one record. It sets them against the
controller's CPU per call in the load run beside it.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from cbr.v1 import common_pb2, vault_pb2
from controller import config as config_mod
from controller.api.auditing import _Audit
from controller.api.interceptors import wrap
from controller.api.metering import MetricsInterceptor, _Measured
from controller.main import build_app
from controller.services import audit

READ = "/cbr.v1.VaultService/GetVault"
WRITE = "/cbr.v1.VaultService/CreateVault"


class _Context:
    """Enough of a servicer context for the layers: a peer and no status."""

    def peer(self) -> str:
        return "ipv4:127.0.0.1:50000"

    def code(self) -> None:
        return None


def _per_call_us(handler: Any, request: Any, rounds: int) -> float:
    ctx = _Context()
    call = handler.unary_unary
    best = float("inf")
    for _ in range(3):  # the best of three: the machine's noise only adds
        start = time.perf_counter()
        for _ in range(rounds):
            call(request, ctx)
        best = min(best, (time.perf_counter() - start) / rounds * 1e6)
    return best


def measure(rounds: int = 20_000) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="cbr-bench-ops-") as tmp:
        cfg = config_mod.load(["--data-dir", str(Path(tmp) / "data"), "--insecure-listen",
                               "--listen", "127.0.0.1:0"], environ={})
        app = build_app(cfg)
        try:
            log = app.audit
            assert log is not None
            log.record = lambda entry: None  # type: ignore[method-assign]  # queueing timed below
            metrics = MetricsInterceptor()
            request = vault_pb2.CreateVaultRequest(name="bench", size_gb=100,
                                                   object_type=common_pb2.OBJECT_TYPE_DISK)
            response = vault_pb2.CreateVaultResponse(vault=vault_pb2.Vault(id="v" * 36))
            bare = grpc.unary_unary_rpc_method_handler(lambda req, ctx: response)
            out: dict[str, float] = {"bare_us": _per_call_us(bare, request, rounds)}
            for name, method in (("read", READ), ("write", WRITE)):
                layered = wrap(wrap(bare, _Audit(app, method)),
                               _Measured(metrics, method, True))
                out[f"{name}_us"] = _per_call_us(layered, request, rounds) - out["bare_us"]
            entries = [audit.Entry(method=WRITE, source="127.0.0.1",
                                   created_at=app.clock.now(), resource_ids=["v" * 36])
                       for _ in range(2000)]
            start = time.perf_counter()
            with app.db.begin() as session:
                audit.write(session, entries)
            out["store_us"] = (time.perf_counter() - start) / len(entries) * 1e6
            return {k: round(v, 1) for k, v in out.items()}
        finally:
            app.db.dispose()


def summary(cost: dict[str, float], cpu_pct: float, rate: float, write_share: float) -> str:
    """One line: the layers' cost per call against the controller's CPU per call."""
    per_call_cpu_us = cpu_pct / 100 * 1e6 / rate if rate > 0 else 0.0
    mean_us = (1 - write_share) * cost["read_us"] + write_share * (
        cost["write_us"] + cost["store_us"])
    share = 100 * mean_us / per_call_cpu_us if per_call_cpu_us > 0 else 0.0
    return (f"  audit+metrics   {cost['read_us']:.0f} us a read, {cost['write_us']:.0f} us + "
            f"{cost['store_us']:.0f} us stored a write: {mean_us:.0f} us a call of this mix, "
            f"{share:.1f}% of the controller's {per_call_cpu_us:.0f} us of CPU per call")
