"""The committed stubs in cbr/v1 must be exactly what scripts/gen-protos makes.

Generated code is committed (so a clone runs without grpcio-tools); this test
catches a proto edited without regenerating, or stubs edited by hand.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STALE = "generated code is stale: run scripts/gen-protos"


def _files(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gen-protos"), str(tmp_path)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable},
        check=False,
    )
    assert result.returncode == 0, f"scripts/gen-protos failed:\n{result.stdout}{result.stderr}"

    fresh = _files(tmp_path / "cbr" / "v1")
    committed = _files(ROOT / "cbr" / "v1")
    missing = sorted(set(fresh) - set(committed))
    extra = sorted(set(committed) - set(fresh))
    differ = sorted(n for n in set(fresh) & set(committed) if fresh[n] != committed[n])
    assert not (missing or extra or differ), (
        f"{STALE} (missing: {missing}, not generated: {extra}, different: {differ})"
    )
