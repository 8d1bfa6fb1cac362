"""Long-lived streams cannot take what calls need, and are capped."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cbr.client import error_from_rpc
from cbr.v1 import task_pb2, vault_pb2
from controller.services import tasks
from tests.support.inproc import RunningController, running_controller

# More than the API's threads (32): each open stream used to hold one.
STREAMS = 48


def _running_task(api: RunningController) -> str:
    with api.app.db.begin() as session:
        task = tasks.create_task(session, project_id=api.account_id, operation_type="backup",
                                 now=api.app.clock.now())
        return task.id


def test_open_watches_do_not_starve_calls(sqlite_api: RunningController) -> None:
    client = sqlite_api.client()
    task_id = _running_task(sqlite_api)
    channels = [grpc.insecure_channel(sqlite_api.endpoint) for _ in range(4)]
    streams: list[grpc.Future] = []
    try:
        for i in range(STREAMS):
            health = health_pb2_grpc.HealthStub(channels[i % 4])
            streams.append(health.Watch(health_pb2.HealthCheckRequest(), timeout=60))
            streams.append(client.tasks.WatchTask(task_pb2.WatchTaskRequest(task_id=task_id),
                                                  timeout=60))
        for stream in streams:
            next(stream)  # every one is open and has had its first message
        started = time.monotonic()
        for _ in range(20):
            client.vaults.ListVaults(vault_pb2.ListVaultsRequest(), timeout=5)
            health_pb2_grpc.HealthStub(channels[0]).Check(health_pb2.HealthCheckRequest(),
                                                          timeout=5)
        assert time.monotonic() - started < 10
    finally:
        for stream in streams:
            stream.cancel()
        for channel in channels:
            channel.close()


@pytest.fixture
def capped(tmp_path: Path) -> Iterator[RunningController]:
    with running_controller(tmp_path, f"sqlite:///{tmp_path}/c.db", "--max-streams", "6",
                            "--max-streams-per-peer", "4") as rc:
        yield rc


def test_streams_past_the_caps_are_refused_with_a_code_and_calls_go_on(
        capped: RunningController) -> None:
    with grpc.insecure_channel(capped.endpoint) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        held = [health.Watch(health_pb2.HealthCheckRequest()) for _ in range(4)]
        for stream in held:
            next(stream)
        refused = health.Watch(health_pb2.HealthCheckRequest())
        with pytest.raises(grpc.RpcError) as exc:
            next(refused)
        assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        err = error_from_rpc(exc.value)
        assert err is not None and err.code == "BackupService.9902"
        assert "per address" in (exc.value.details() or "")
        capped.client().vaults.ListVaults(vault_pb2.ListVaultsRequest(), timeout=5)
        held.pop().cancel()  # a closed stream frees its place
        time.sleep(0.2)
        again = health.Watch(health_pb2.HealthCheckRequest())
        assert next(again).status == health_pb2.HealthCheckResponse.SERVING
        again.cancel()
        for stream in held:
            stream.cancel()


def test_a_silent_target_cloud_holds_no_api_thread(tmp_path: Path) -> None:
    from cbr.v1 import credential_pb2

    with running_controller(tmp_path, f"sqlite:///{tmp_path}/c.db", "--api-threads", "2",
                            "--target-allow-local") as rc, socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)  # connections complete; nothing ever answers
        client = rc.client()
        request = credential_pb2.CreateCredentialRequest(
            name="c", target_cloud="b", target_endpoint=f"127.0.0.1:{silent.getsockname()[1]}",
            target_account_id="a", access_key_id="AK", secret_access_key="SK",
            target_ca_sha256="ab" * 32)
        checks = [client.credentials.CreateCredential.future(request, timeout=30)
                  for _ in range(4)]
        time.sleep(0.5)  # all four are waiting on the silent target now
        started = time.monotonic()
        client.vaults.ListVaults(vault_pb2.ListVaultsRequest(), timeout=3)
        assert time.monotonic() - started < 3
        for check in checks:
            with pytest.raises(grpc.RpcError) as exc:
                check.result()
            assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
