"""The health service says NOT_SERVING while the controller cannot work:
its database gone, or the process stopping."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from controller.api import health
from tests.support.inproc import RunningController, running_controller
from tests.support.pg import fresh_database, set_reachable
from tests.support.processes import wait_until

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
def fast_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(health, "PROBE_EVERY_S", 0.1)
    monkeypatch.setattr(health, "PROBE_TIMEOUT_S", 2.0)


def _status(rc: RunningController, service: str = "") -> int:
    with grpc.insecure_channel(rc.endpoint) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=10)
        return int(reply.status)


@pytest.fixture
def pg_controller(tmp_path: Path, fast_probe: None) -> Iterator[tuple[RunningController, str]]:
    with fresh_database() as url, running_controller(tmp_path, url) as rc:
        try:
            yield rc, url
        finally:
            set_reachable(url, True)


@pytest.mark.postgres
def test_health_is_not_serving_while_the_database_is_gone_and_serving_when_it_returns(
        pg_controller: tuple[RunningController, str]) -> None:
    rc, url = pg_controller
    assert _status(rc) == SERVING
    assert _status(rc, "cbr.v1.VaultService") == SERVING
    set_reachable(url, False)
    wait_until(lambda: _status(rc) == NOT_SERVING, timeout=30,
               message="health turns NOT_SERVING without the database")
    assert _status(rc, "cbr.v1.BackupService") == NOT_SERVING
    set_reachable(url, True)
    wait_until(lambda: _status(rc) == SERVING, timeout=30,
               message="health is SERVING again once the database answers")


def test_health_is_not_serving_once_the_controller_stops(tmp_path: Path,
                                                          fast_probe: None) -> None:
    with running_controller(tmp_path, f"sqlite:///{tmp_path}/c.db") as rc:
        assert _status(rc) == SERVING
        hooks = rc.server.before_stop
        assert hooks, "the API server turns health NOT_SERVING before it stops"
        for hook in hooks:
            rc.server._run(hook())  # what stop() runs first
        assert _status(rc) == NOT_SERVING
        assert _status(rc, "cbr.v1.TaskService") == NOT_SERVING


def test_services_that_need_the_vault_storage_say_not_serving_while_it_is_gone(
        tmp_path: Path, fast_probe: None) -> None:
    """An unmounted storage disk stops vaults, backups and replication, not
    tasks, policies or IAM, nor the server as a whole."""
    with running_controller(tmp_path, f"sqlite:///{tmp_path}/c.db") as rc:
        storage = rc.app.config.data_dir / "storage"
        assert _status(rc, "cbr.v1.BackupService") == SERVING
        storage.rename(tmp_path / "unmounted")
        try:
            wait_until(lambda: _status(rc, "cbr.v1.BackupService") == NOT_SERVING, timeout=30,
                       message="backups stop serving without their storage")
            assert _status(rc, "cbr.v1.VaultService") == NOT_SERVING
            assert _status(rc, "cbr.v1.ReplicationService") == NOT_SERVING
            assert _status(rc, "cbr.v1.TaskService") == SERVING
            assert _status(rc, "cbr.v1.IamService") == SERVING
            assert _status(rc) == SERVING
        finally:
            (tmp_path / "unmounted").rename(storage)
        wait_until(lambda: _status(rc, "cbr.v1.BackupService") == SERVING, timeout=30,
                   message="backups serve again once the storage is back")
