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


def test_cbr_error_codes_are_written_only_in_cbr_errors() -> None:
    """One place says which code means what (issue 21): elsewhere a code is
    ``errors.SomeError.code``, so a renumbering or a typo cannot drift."""
    import re

    literal = re.compile(r"[\"']BackupService\.\d{4}[\"']")
    found = [f"{path.relative_to(ROOT)}:{n}"
             for top in ("cbr", "cli", "controller", "agent", "scripts")
             for path in sorted((ROOT / top).rglob("*.py"))
             if path != ROOT / "cbr" / "errors.py" and "/v1/" not in path.as_posix()
             for n, line in enumerate(path.read_text().splitlines(), 1)
             if literal.search(line)]
    assert found == [], "CBR code strings outside cbr/errors.py: " + ", ".join(found)


def test_the_wall_clock_is_read_only_in_cbr_clock() -> None:
    """One clock (issue 21): lock staleness, journal retention, expiries and
    schedules can all run on a FakeClock only if nothing reads time itself."""
    import re

    reads = re.compile(r"\bdatetime\.(now|utcnow|today)\(|\btime\.time\(\)|\bdate\.today\(")
    found = [f"{path.relative_to(ROOT)}:{n}"
             for top in ("cbr", "cli", "controller", "agent")
             for path in sorted((ROOT / top).rglob("*.py"))
             if path != ROOT / "cbr" / "clock.py"
             for n, line in enumerate(path.read_text().splitlines(), 1)
             if reads.search(line)]
    assert found == [], "wall-clock reads outside cbr/clock.py: " + ", ".join(found)


# Which packages a package's modules must never import (docs/architecture.md).
FLOORS = {
    "cbr": ("controller", "agent", "cli"),
    "cbr.storage": ("cbr.repo", "controller", "agent", "cli"),
    # The vault format's floors (cbr/repo/__init__.py): content, objects, the
    # repository, maintenance, replication.
    "cbr.repo.content": ("cbr.repo.objects", "cbr.repo.maintenance", "cbr.repo.repository",
                         "cbr.repo.replicate"),
    "cbr.repo.objects": ("cbr.repo.maintenance", "cbr.repo.repository", "cbr.repo.replicate"),
    "cbr.repo.maintenance": ("cbr.repo.replicate",),
    "cli": ("controller", "agent"),
    "agent": ("controller", "cli"),
    "controller": ("agent", "cli"),
    "controller.persistence": ("controller.services", "controller.api", "controller.agents",
                               "controller.jobs", "controller.metrics"),
    "controller.services": ("controller.api", "controller.agents", "controller.jobs",
                            "controller.metrics", "console"),
    # The metrics read the state through the services; the hub, the jobs and
    # the API feed them.
    "controller.metrics": ("controller.api", "controller.agents", "controller.jobs"),
    "controller.agents": ("controller.api", "controller.jobs"),
    "controller.jobs": ("controller.api", "console"),
    "controller.api": ("console",),
    # The console reaches the controller through its API (console.api), as the
    # CLI does; it reads no table and runs no job itself.
    "console": ("agent", "cli", "controller.persistence", "controller.jobs",
                "controller.agents", "sqlalchemy"),
}


def test_no_floor_imports_a_higher_one() -> None:
    import ast

    found = []
    for package, forbidden in FLOORS.items():
        for path in sorted((ROOT / package.replace(".", "/")).rglob("*.py")):
            if "/v1/" in path.as_posix():
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                         [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                for name in names:
                    if any(name == f or name.startswith(f + ".") for f in forbidden):
                        found.append(f"{path.relative_to(ROOT)} imports {name}")
    assert found == [], "imports from a lower floor to a higher one: " + "; ".join(found)


# The servicers are thin (docs/architecture.md): decode, call a service, encode.
# convert.py encodes ORM rows, so it alone reads the models. The rest of
# controller/api/ (interceptors, server, caller, base) needs no database type.
ENCODES_ROWS = {"convert.py"}


def test_servicers_build_no_queries() -> None:
    """Queries and rules live in controller/services/ (issue 21); a servicer
    that imports sqlalchemy or the models has started to build one."""
    import ast

    found = []
    for path in sorted((ROOT / "controller" / "api").glob("*.py")):
        if path.name in ENCODES_ROWS:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [f"{node.module}.{a.name}" for a in node.names]
                     if isinstance(node, ast.ImportFrom) and node.module else [])
            for name in names:
                if name == "sqlalchemy" or name.startswith(("sqlalchemy.",
                                                             "controller.persistence.models",
                                                             "controller.persistence.operations")):
                    found.append(f"{path.relative_to(ROOT)} imports {name}")
    assert found == [], "servicers that import sqlalchemy or the ORM models: " + "; ".join(found)


MAX_LINES = 600
FIRST_PARTY = ("agent", "controller", "cli", "cbr", "console", "scripts", "bench", "tests")
NOT_FIRST_PARTY_DIRS = {".venv", "build", "__pycache__", "node_modules"}


def test_no_first_party_file_is_over_600_lines() -> None:
    """A file a newcomer can read whole (issue 21): a longer one holds more
    than one concern, and is split along them. Generated stubs and migration
    scripts do not count."""
    migrations = ROOT / "controller" / "persistence" / "migrations" / "versions"
    lines = {path.relative_to(ROOT).as_posix(): len(path.read_text().splitlines())
             for top in FIRST_PARTY
             for path in sorted((ROOT / top).rglob("*.py"))
             if not path.match("*_pb2*.py")
             and not NOT_FIRST_PARTY_DIRS & set(path.relative_to(ROOT).parts)
             and not path.is_relative_to(migrations)}
    over = [f"{name} ({n})" for name, n in sorted(lines.items()) if n > MAX_LINES]
    assert over == [], f"first-party files over {MAX_LINES} lines: " + ", ".join(over)
