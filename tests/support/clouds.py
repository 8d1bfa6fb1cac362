"""Two clouds for the replication tests: real controllers, agents and a credential between them.

A source cloud (the data-path host of ``test_data_path``) and a target
cloud with an importer, a host to restore on and a replication vault of
each type, so each replication test module starts from the same two clouds
and replicates a backup the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cbr.client import Client
from cbr.v1 import (
    agent_pb2,
    common_pb2,
    credential_pb2,
    iam_pb2,
    replication_pb2,
    task_pb2,
    vault_pb2,
)
from tests.integration.test_data_path import FAST, Host, _start, _wait_task
from tests.support.processes import (
    AgentFactory,
    AgentProcess,
    ControllerFactory,
    ControllerProcess,
    enroll,
    wait_until,
)

SUCCESS = replication_pb2.REPLICATION_STATUS_SUCCESS
# A cloud's storage: controller arguments and environment, by cloud name.
Storage = Callable[[str], tuple[list[str], dict[str, str] | None]]
FAIL = replication_pb2.REPLICATION_STATUS_FAIL


@dataclass
class Target:
    controller: ControllerProcess
    client: Client
    importer: AgentProcess
    host_agent_id: str
    account_id: str
    vaults: dict[str, str]


@dataclass
class Clouds:
    source: Host
    target: Target
    credential_id: str


def _agent_config(path: Path, controller: ControllerProcess, state: Path, *,
                  role: str = "host", listen: str = "127.0.0.1:0", advertise: str = "") -> Path:
    extra = f'importer_listen = "{listen}"\nimporter_advertise = "{advertise}"\n' \
        if role == "importer" else ""
    path.write_text(f"""
[agent]
name = "{path.stem}"
controller = "{controller.api_endpoint}"
state_dir = "{state}"
role = "{role}"
restore_roots = ["{path.parent}"]
{extra}""")
    return path


def _start_agent(tmp_path: Path, controller: ControllerProcess, agent_factory: AgentFactory,
                 name: str, role: str, **config: str) -> tuple[AgentProcess, str]:
    client = controller.client()
    path = _agent_config(tmp_path / f"{name}.toml", controller, tmp_path / f"{name}-state",
                         role=role, **config)
    token = client.agents.CreateEnrollmentToken(agent_pb2.CreateEnrollmentTokenRequest()).token
    done = enroll(path, token)
    assert done.returncode == 0, done.stderr
    agent = agent_factory(path, name)
    agent.wait_for_log("connected to")
    role_pb = agent_pb2.AGENT_ROLE_IMPORTER if role == "importer" else agent_pb2.AGENT_ROLE_HOST
    [found] = wait_until(lambda: [a for a in client.agents.ListAgents(
        agent_pb2.ListAgentsRequest(role=role_pb)).agents])
    return agent, found.id


def _replication_vault(client: Client, name: str, obj: int, region: str) -> str:
    return str(client.vaults.CreateVault(vault_pb2.CreateVaultRequest(
        name=name, object_type=obj, size_gb=100,
        protect_type=vault_pb2.PROTECT_TYPE_REPLICATION)).vault.id)


def _clouds(tmp_path: Path, controller_factory: ControllerFactory,
            agent_factory: AgentFactory, *, storage: Storage | None = None,
            source_args: tuple[str, ...] = (), big_mib: int = 0, **importer: str) -> Clouds:
    """Two clouds; with ``storage``, each keeps its vaults in its own S3 bucket;
    ``big_mib`` gives the source host a big disk too (slow enough to cancel)."""
    a_args, a_env = storage("a") if storage is not None else ([], None)
    b_args, b_env = storage("b") if storage is not None else ([], None)
    source = _start(tmp_path / "a", controller_factory, agent_factory,
                    extra_args=["--cloud-name", "cloud-a", "--region", "region-a", *a_args,
                                *source_args],
                    env=a_env, big_mib=big_mib)
    target_controller = controller_factory("target", extra_args=[
        *FAST, "--cloud-name", "cloud-b", "--region", "region-b",
        "--regions", "region-b,region-c:noreplication", *b_args], env=b_env)
    client = target_controller.client()
    (tmp_path / "b").mkdir()
    importer, _ = _start_agent(tmp_path / "b", target_controller, agent_factory, "importer",
                               "importer", **importer)
    _, host_id = _start_agent(tmp_path / "b", target_controller, agent_factory, "target-host",
                              "host")
    account = client.iam.GetCallerIdentity(iam_pb2.GetCallerIdentityRequest()).account.id
    vaults = {"server": _replication_vault(client, "r-server", common_pb2.OBJECT_TYPE_SERVER,
                                           "region-b"),
              "turbo": _replication_vault(client, "r-turbo", common_pb2.OBJECT_TYPE_TURBO,
                                          "region-b")}
    creds = target_controller.admin_credentials
    credential = source.client.credentials.CreateCredential(
        credential_pb2.CreateCredentialRequest(
            name="to-b", target_cloud="cloud-b", target_endpoint=target_controller.api_endpoint,
            target_account_id=account, access_key_id=creds["access_key"],
            secret_access_key=creds["secret_key"],
            target_ca_sha256=target_controller.endpoints["ca_sha256"])).credential
    return Clouds(source, Target(target_controller, client, importer, host_id, account, vaults),
                  credential.id)


def _replicate(clouds: Clouds, backup_id: str, kind: str) -> Any:
    resp = clouds.source.client.replication.ReplicateBackup(
        replication_pb2.ReplicateBackupRequest(
            backup_id=backup_id, credential_id=clouds.credential_id,
            destination_region="region-b", destination_vault_id=clouds.target.vaults[kind]))
    task = _wait_task(clouds.source.client, resp.task_id, timeout=120)
    assert task.status == task_pb2.TASK_STATUS_SUCCESS, task.error_info
    record = wait_until(lambda: (r := clouds.source.client.replication.GetReplicationRecord(
        replication_pb2.GetReplicationRecordRequest(
            replication_record_id=resp.replication_record_id)).replication_record).status
        in (SUCCESS, FAIL) and r, timeout=30, message="the record settles")
    assert record.status == SUCCESS, record
    return task, record

