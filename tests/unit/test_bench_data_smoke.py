"""`scripts/bench data` at a tiny scale: it runs end to end and reports every case."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_data_smoke(tmp_path: Path) -> None:
    out = tmp_path / "data.json"
    done = subprocess.run(
        [str(ROOT / "scripts" / "bench"), "data", "--scale", "0.01", "--no-restic",
         "--work-dir", str(tmp_path / "work"), "--json", str(out)],
        capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "PYTHON": "python3"})
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads(out.read_text())
    for name in ("disk_full", "disk_incremental", "tree_full", "tree_incremental",
                 "restore_disk", "restore_tree"):
        assert results[name]["ours_s"] > 0
    assert "disk_incremental_cbt" in results
    assert results["stored_bytes"]["ours"] > 0
    assert 0 < results["agent_peak_rss_mib"] < 1000
    assert not (tmp_path / "work").exists()
