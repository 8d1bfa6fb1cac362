"""Smoke run of ``scripts/bench console``: the benchmark works end to end, small.

Forty backups of four disks, two timed GETs a page: enough to exercise every
part (controller start, the simulated agent answering backup commands, the
seeding, the console password, signing in over HTTPS, every page, the JSON
file). It asserts what the run produced, never how fast: the 300 ms target
lives in the benchmark itself, so the exit status (which says whether it
was met) is not asserted either.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from bench.console import PAGES

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


def test_bench_console_fills_one_vault_and_fetches_every_page_signed_in(
        tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [str(ROOT / "scripts" / "bench"), "console", "--backups", "40", "--resources", "4",
         "--requests", "2", "--warmup", "1", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=180, check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("CBR_")},
    )
    assert out.exists(), f"{result.stdout}\n{result.stderr}"
    data = json.loads(out.read_text())
    assert data["backups_in_vault"] == 40 and data["tasks"] == 40
    assert [p["page"] for p in data["pages"]] == list(PAGES)
    # Signed in: every page answers, none redirects to the sign-in form (a
    # finished task's progress fragment answers 286, htmx's "stop polling").
    assert {p["status"] for p in data["pages"]} <= {200, 286}
    assert data["missing"] == []
    home = data["pages"][0]
    assert home["status"] == 200 and home["requests"] == 2 and home["p95_ms"] > 0
    assert home["connections"] == 1  # the series kept its connection
    assert "Console pages" in result.stdout
