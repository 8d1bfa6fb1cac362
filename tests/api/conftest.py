"""API tests: the real public server in this process, on both databases."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.inproc import RunningController, running_controller


@pytest.fixture
def api(tmp_path: Path, database_url: str) -> Iterator[RunningController]:
    with running_controller(tmp_path, database_url) as rc:
        yield rc


@pytest.fixture
def sqlite_api(tmp_path: Path) -> Iterator[RunningController]:
    """For wire-level behaviour that does not depend on the database."""
    with running_controller(tmp_path, f"sqlite:///{tmp_path}/c.db") as rc:
        yield rc


@pytest.fixture
def local_targets_api(tmp_path: Path) -> Iterator[RunningController]:
    """A controller whose operator allows loopback destinations, for tests
    whose webhook and mail receivers listen on this host."""
    with running_controller(tmp_path, f"sqlite:///{tmp_path}/c.db",
                            "--target-allow-local", "true") as rc:
        yield rc
