"""`buf lint` (STANDARD rules, buf.yaml) must pass on protos/.

buf is installed by scripts/test into .cache/buf; elsewhere the test skips
rather than fails, except in CI where a missing buf is a broken pipeline.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.support.environment import unavailable

ROOT = Path(__file__).resolve().parents[2]


def _buf() -> str | None:
    local = ROOT / ".cache" / "buf" / "node_modules" / ".bin" / "buf"
    if local.exists():
        return str(local)
    return shutil.which("buf")


def test_buf_lint() -> None:
    buf = _buf()
    if buf is None:
        message = "buf not installed: run scripts/test (installs it into .cache/buf)"
        unavailable(message)
    result = subprocess.run(
        [buf, "lint"], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, f"buf lint found problems:\n{result.stdout}{result.stderr}"
