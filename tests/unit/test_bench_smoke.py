"""Smoke run of ``scripts/bench api``: the benchmark works end to end, small.

Five agents, 20 calls/s for two seconds: enough to exercise every part
(controller start, real enrollment, TLS streams, the online wait, the signed
call mix, the health reference, the JSON file, the shutdown). It asserts what
the run produced, never how fast: performance targets live in the benchmark
itself, not in timed tests.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


def test_bench_api_smoke(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [str(ROOT / "scripts" / "bench"), "api", "--agents", "5", "--rate", "20",
         "--duration", "2", "--warmup", "0.5", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("CBR_")},
    )
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    data = json.loads(out.read_text())
    for key in ("calls_per_s", "p50_ms", "p99_ms", "agents"):
        assert key in data, key
    assert data["agents"] == 5
    assert data["agents_online_start"] == 5 and data["agents_online_end"] == 5
    assert data["errors"] == 0, data["error_samples"]
    assert data["health_errors"] == 0
    assert data["calls"] > 0 and data["calls_per_s"] > 0
    assert "signed calls" in result.stdout
    # The audit trail's and the metrics' own cost, measured in process.
    cost = data["ops_cost"]
    assert cost["read_us"] > 0 and cost["write_us"] > 0 and cost["store_us"] > 0
    assert "audit+metrics" in result.stdout
