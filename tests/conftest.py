"""Fixtures shared by every test suite.

- ``database_url``: each test using it runs twice, on a SQLite file and on a
  fresh PostgreSQL database (skipped locally, failed in CI, when PostgreSQL is
  not reachable).
- ``controller``, ``controller_factory``, ``agent_factory``: real processes from
  the venv's console scripts, stopped at teardown however the test ends; when a
  test fails, the tail of each process's log is added to the failure report.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from tests.support.pg import fresh_database
from tests.support.processes import (
    AgentFactory,
    ControllerFactory,
    ControllerProcess,
    ManagedProcess,
)
from tests.support.seaweed import SeaweedServer

_PROCESSES = pytest.StashKey[list[ManagedProcess]]()


def _registry(request: pytest.FixtureRequest) -> list[ManagedProcess]:
    """The processes a test started, kept on its item for the failure report."""
    node: pytest.Item = request.node
    return node.stash.setdefault(_PROCESSES, [])


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, None]:
    """On failure, appends the tail of every process's log to the report."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    for process in item.stash.get(_PROCESSES, []):
        tail = process.log_tail()
        if tail:
            report.sections.append(
                (f"{process.name} log ({report.when}, tail of {process.log_path})", tail)
            )


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    ]
)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A SQLAlchemy URL of an empty database: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/controller.db"
        return
    with fresh_database() as url:
        yield url


@pytest.fixture
def controller_factory(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[ControllerFactory]:
    """``controller_factory(name="controller", *, database_url=None, extra_args=(),
    api_port=0, agent_port=0, env=None, start=True) -> ControllerProcess``;
    data dir ``tmp_path/<name>``, every controller stopped at teardown."""
    factory = ControllerFactory(tmp_path, _registry(request))
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture
def controller(controller_factory: ControllerFactory) -> ControllerProcess:
    """A started controller on SQLite in ``tmp_path/controller``."""
    return controller_factory("controller")


@pytest.fixture
def agent_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AgentFactory]:
    """``agent_factory(config_path, name="agent", *, extra_args=(), env=None, start=True)
    -> AgentProcess``; every agent stopped at teardown."""
    factory = AgentFactory(tmp_path, _registry(request))
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    """One real SeaweedFS (master, volume, filer, S3) for the whole session;
    skipped locally and failed in CI when ``weed`` cannot run."""
    server = SeaweedServer(tmp_path_factory.mktemp("seaweed"))
    try:
        server.start()
        yield server
    finally:
        server.stop()
