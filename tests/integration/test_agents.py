"""Agents end to end: real cbr-controller and cbr-agent processes on loopback ports.

Enrollment, protectables with their sizes, offline/online as agents die and
come back, reconnection after a controller restart with nothing lost, a task
delivered twice running once, and a deleted agent refused.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from cbr.client import Client
from cbr.v1 import agent_pb2, agent_pb2_grpc, common_pb2, protectable_pb2, task_pb2
from tests.support.processes import (
    AgentFactory,
    AgentProcess,
    ControllerFactory,
    ControllerProcess,
    enroll,
    wait_until,
)

pytestmark = pytest.mark.integration

FAST = ["--heartbeat-interval", "0.5", "--agent-offline-after", "2"]
ONLINE, OFFLINE = agent_pb2.AGENT_STATUS_ONLINE, agent_pb2.AGENT_STATUS_OFFLINE


def _host_files(root: Path) -> dict[str, Path]:
    images = root / "images"
    images.mkdir(parents=True)
    with open(images / "web1-sys.img", "wb") as fh:  # sparse, 2 GiB apparent
        fh.truncate(2 << 30)
        fh.write(b"MBR")
    (images / "web1-data.img").write_bytes(b"\1" * 65536)
    with open(images / "vol1.img", "wb") as fh:
        fh.truncate(8 << 20)
    share = root / "share"
    (share / "docs" / "old").mkdir(parents=True)
    (share / "readme.txt").write_bytes(b"r" * 300)
    (share / "docs" / "a.bin").write_bytes(b"a" * 7000)
    (share / "docs" / "old" / "b.bin").write_bytes(b"b" * 700)
    return {"images": images, "share": share}


def _write_config(path: Path, name: str, controller: ControllerProcess, files: dict[str, Path],
                  state_dir: Path) -> Path:
    images, share = files["images"], files["share"]
    path.write_text(f"""
[agent]
name = "{name}"
controller = "{controller.api_endpoint}"
state_dir = "{state_dir}"

[[servers]]
name = "web-1"
tags = {{ env = "prod" }}
  [[servers.disks]]
  name = "system"
  path = "{images / 'web1-sys.img'}"
  system = true
  [[servers.disks]]
  name = "data"
  path = "{images / 'web1-data.img'}"

[[disks]]
name = "vol-1"
path = "{images / 'vol1.img'}"

[[file_systems]]
name = "share"
path = "{share}"
""")
    return path


@dataclass
class Setup:
    controller: ControllerProcess
    client: Client
    config: Path
    agent: AgentProcess
    agent_id: str
    token: str


def _token(client: Client) -> str:
    return str(client.agents.CreateEnrollmentToken(
        agent_pb2.CreateEnrollmentTokenRequest(description="test")).token)


def _agents(client: Client) -> list[Any]:
    return list(client.agents.ListAgents(agent_pb2.ListAgentsRequest()).agents)


def _status(client: Client, agent_id: str) -> int:
    return int(client.agents.GetAgent(agent_pb2.GetAgentRequest(agent_id=agent_id)).agent.status)


def _protectables(client: Client, agent_id: str) -> dict[str, Any]:
    response = client.protectables.ListProtectables(
        protectable_pb2.ListProtectablesRequest(agent_id=agent_id))
    return {p.name: p for p in response.protectables}


def _start(tmp_path: Path, controller_factory: ControllerFactory,
           agent_factory: AgentFactory) -> Setup:
    controller = controller_factory("controller", extra_args=FAST)
    client = controller.client()
    files = _host_files(tmp_path / "host")
    config = _write_config(tmp_path / "agent.toml", "host-1", controller, files,
                           tmp_path / "agent-state")
    token = _token(client)
    done = enroll(config, token)
    assert done.returncode == 0, done.stderr
    agent = agent_factory(config, "agent")
    agent.wait_for_log("connected to")
    [registered] = wait_until(lambda: _agents(client), message="the agent is listed")
    wait_until(lambda: len(_protectables(client, registered.id)) == 3,
               message="three protectables reported")
    return Setup(controller, client, config, agent, registered.id, token)


def test_enrolled_agent_reports_its_protectables_with_sizes(
        tmp_path: Path, controller_factory: ControllerFactory,
        agent_factory: AgentFactory) -> None:
    s = _start(tmp_path, controller_factory, agent_factory)
    agent = s.client.agents.GetAgent(agent_pb2.GetAgentRequest(agent_id=s.agent_id)).agent
    assert agent.status == ONLINE
    assert agent.name == "host-1" and agent.role == agent_pb2.AGENT_ROLE_HOST
    assert agent.protectable_count == 3
    assert len(agent.certificate_fingerprint) == 64
    state = tmp_path / "agent-state"
    assert (state / "agent.key").stat().st_mode & 0o777 == 0o600
    found = _protectables(s.client, s.agent_id)
    server, disk, fs = found["web-1"], found["vol-1"], found["share"]
    assert server.type == common_pb2.OBJECT_TYPE_SERVER
    assert server.size_bytes == (2 << 30) + 65536
    assert {(d.name, d.system_disk, d.size_bytes) for d in server.disks} == {
        ("system", True, 2 << 30), ("data", False, 65536)}
    assert [(t.key, t.value) for t in server.tags] == [("env", "prod")]
    assert disk.type == common_pb2.OBJECT_TYPE_DISK and disk.size_bytes == 8 << 20
    assert fs.type == common_pb2.OBJECT_TYPE_TURBO and fs.size_bytes == 8000
    assert all(p.status == protectable_pb2.PROTECTABLE_STATUS_AVAILABLE and p.agent_online
               for p in found.values())


def test_enrollment_token_is_refused_the_second_time(
        tmp_path: Path, controller_factory: ControllerFactory) -> None:
    controller = controller_factory("controller", extra_args=FAST)
    client = controller.client()
    files = _host_files(tmp_path / "host")
    token = _token(client)
    first = _write_config(tmp_path / "a.toml", "host-a", controller, files, tmp_path / "sa")
    second = _write_config(tmp_path / "b.toml", "host-b", controller, files, tmp_path / "sb")
    assert enroll(first, token).returncode == 0
    again = enroll(second, token)
    assert again.returncode != 0
    assert "already used" in again.stderr
    assert not (tmp_path / "sb" / "identity.json").exists()
    assert [a.name for a in _agents(client)] == ["host-a"]


def test_run_with_a_token_enrolls_first_then_connects(
        tmp_path: Path, controller_factory: ControllerFactory,
        agent_factory: AgentFactory) -> None:
    controller = controller_factory("controller", extra_args=FAST)
    client = controller.client()
    files = _host_files(tmp_path / "host")
    config = _write_config(tmp_path / "agent.toml", "host-env", controller, files,
                           tmp_path / "agent-state")
    agent = agent_factory(config, "agent", env={"CBR_ENROLL_TOKEN": _token(client)})
    agent.wait_for_log("connected to", timeout=20)
    [registered] = _agents(client)
    assert registered.name == "host-env" and registered.status == ONLINE


def test_killed_agent_shows_offline_then_online_after_restart(
        tmp_path: Path, controller_factory: ControllerFactory,
        agent_factory: AgentFactory) -> None:
    s = _start(tmp_path, controller_factory, agent_factory)
    s.agent.kill()
    wait_until(lambda: _status(s.client, s.agent_id) == OFFLINE, timeout=10,
               message="the killed agent shows offline")
    unreachable = protectable_pb2.PROTECTABLE_STATUS_UNREACHABLE
    wait_until(lambda: all(p.status == unreachable
                           for p in _protectables(s.client, s.agent_id).values()),
               timeout=10, message="its protectables show unreachable")
    s.agent.start()
    wait_until(lambda: _status(s.client, s.agent_id) == ONLINE, timeout=15,
               message="the restarted agent shows online")
    assert len(_agents(s.client)) == 1


def test_silent_agent_shows_offline_while_its_stream_is_open(
        tmp_path: Path, controller_factory: ControllerFactory,
        agent_factory: AgentFactory) -> None:
    import os
    import signal

    s = _start(tmp_path, controller_factory, agent_factory)
    assert s.agent.pid is not None
    os.kill(s.agent.pid, signal.SIGSTOP)  # connection open, no heartbeats
    try:
        wait_until(lambda: _status(s.client, s.agent_id) == OFFLINE, timeout=10,
                   message="a silent agent shows offline")
    finally:
        os.kill(s.agent.pid, signal.SIGCONT)
    wait_until(lambda: _status(s.client, s.agent_id) == ONLINE, timeout=20,
               message="it is online again once it heartbeats")


def _sync(client: Client, agent_id: str) -> str:
    return str(client.agents.SyncAgent(agent_pb2.SyncAgentRequest(agent_id=agent_id)).task_id)


def _task(client: Client, task_id: str) -> Any:
    return client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=task_id)).task


def _succeeded(client: Client, task_id: str) -> bool:
    return bool(_task(client, task_id).status == task_pb2.TASK_STATUS_SUCCESS)


def test_agent_reconnects_after_controller_restart_and_nothing_is_lost(
        tmp_path: Path, controller_factory: ControllerFactory,
        agent_factory: AgentFactory) -> None:
    s = _start(tmp_path, controller_factory, agent_factory)
    task_id = _sync(s.client, s.agent_id)
    wait_until(lambda: _succeeded(s.client, task_id), timeout=15, message="sync succeeded")
    before = _protectables(s.client, s.agent_id)
    s.controller.restart()
    client = s.controller.client()
    wait_until(lambda: _status(client, s.agent_id) == ONLINE, timeout=30,
               ignore=(grpc.RpcError,), message="the agent reconnected")
    assert s.agent.running
    assert "reconnecting in" in s.agent.log_text()
    assert [a.id for a in _agents(client)] == [s.agent_id]
    after = _protectables(client, s.agent_id)
    assert {n: (p.id, p.size_bytes) for n, p in after.items()} == {
        n: (p.id, p.size_bytes) for n, p in before.items()}
    task = _task(client, task_id)
    assert task.status == task_pb2.TASK_STATUS_SUCCESS
    # The same agent identity keeps working for new commands.
    again = _sync(client, s.agent_id)
    wait_until(lambda: _succeeded(client, again), timeout=15, message="a new sync succeeded")


def test_sync_of_an_offline_agent_waits_and_runs_once_on_reconnect(
        tmp_path: Path, controller_factory: ControllerFactory,
        agent_factory: AgentFactory) -> None:
    s = _start(tmp_path, controller_factory, agent_factory)
    s.agent.stop()
    wait_until(lambda: _status(s.client, s.agent_id) == OFFLINE, timeout=10)
    task_id = _sync(s.client, s.agent_id)
    assert _task(s.client, task_id).status == task_pb2.TASK_STATUS_WAITING
    s.agent.start()
    wait_until(lambda: _succeeded(s.client, task_id), timeout=20,
               message="the waiting sync ran after the agent came back")
    assert s.agent.log_text().count(f"running task {task_id} (sync)") == 1


def test_task_delivered_twice_runs_once(
        tmp_path: Path, controller_factory: ControllerFactory,
        agent_factory: AgentFactory) -> None:
    """The controller lost the result (its state is from before the command went
    out): on reconnect it delivers the command again; the agent answers from its
    journal."""
    s = _start(tmp_path, controller_factory, agent_factory)
    task_id = _sync(s.client, s.agent_id)
    wait_until(lambda: _succeeded(s.client, task_id), timeout=15)
    s.controller.stop()
    with sqlite3.connect(s.controller.data_dir / "controller.db") as db:
        db.execute("UPDATE tasks SET status='waiting', progress=0, ended_at=NULL "
                   "WHERE id=?", (task_id,))
    s.controller.start()
    client = s.controller.client()
    wait_until(lambda: _succeeded(client, task_id), timeout=30, ignore=(grpc.RpcError,),
               message="the re-delivered task is finished from the agent's journal")
    log = s.agent.log_text()
    assert log.count(f"running task {task_id} (sync)") == 1
    assert f"task {task_id} (sync) already ran; sending its result again" in log
    assert _task(client, task_id).extra_info["protectable_count"] == "3"


def test_deleted_agent_is_refused_and_its_protectables_are_gone(
        tmp_path: Path, controller_factory: ControllerFactory,
        agent_factory: AgentFactory) -> None:
    s = _start(tmp_path, controller_factory, agent_factory)
    s.client.agents.DeleteAgent(agent_pb2.DeleteAgentRequest(agent_id=s.agent_id))
    s.agent.wait_for_log("the controller refused this agent", timeout=20)
    assert "revoked" in s.agent.log_text()
    with pytest.raises(grpc.RpcError) as info:
        s.client.agents.GetAgent(agent_pb2.GetAgentRequest(agent_id=s.agent_id))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert _agents(s.client) == []
    gone = protectable_pb2.PROTECTABLE_STATUS_GONE
    assert all(p.status == gone for p in _protectables(s.client, s.agent_id).values())


def test_connect_on_the_public_port_is_refused_with_a_pointer_to_the_agent_endpoint(
        controller: ControllerProcess) -> None:
    with controller.channel() as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            list(stub.Connect(iter([agent_pb2.ConnectRequest(hello=agent_pb2.Hello())]),
                              timeout=10))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert controller.agent_endpoint in info.value.details()


def test_agent_endpoint_refuses_a_client_without_our_certificate(
        controller: ControllerProcess) -> None:
    ca_pem = (controller.data_dir / "ca" / "ca.crt").read_bytes()
    creds = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    options = [("grpc.ssl_target_name_override", "cbr-controller")]
    with grpc.secure_channel(controller.agent_endpoint, creds, options=options) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            list(stub.Connect(iter([agent_pb2.ConnectRequest(hello=agent_pb2.Hello())]),
                              timeout=10))
    assert info.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED)
