"""ruff and mypy over the whole tree, with the configuration in pyproject.toml.

Part of the suite so a lint failure is a test failure, locally and in CI;
deselect with ``-m "not lint"`` while iterating.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.lint


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)


def test_ruff() -> None:
    result = _run([str(BIN / "ruff"), "check", "."])
    assert result.returncode == 0, f"ruff check . failed:\n{result.stdout}{result.stderr}"


def test_mypy() -> None:
    result = _run([sys.executable, "-m", "mypy", "."])
    assert result.returncode == 0, f"mypy failed:\n{result.stdout}{result.stderr}"
