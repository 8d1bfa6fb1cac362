"""Cross-cloud replication end to end: two clouds, each a real controller with
its own database, accounts and storage; a host agent on the source, an importer
and a host agent on the target. Backups replicate, only missing chunks cross,
replicas restore on the target byte for byte, and the rules refuse with the
reference's codes.
"""

from __future__ import annotations

import random
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from agent.replication import PUTS_IN_FLIGHT
from cbr import errors
from cbr.client import Client, error_from_rpc
from cbr.repo.config import CHUNKER_MAX
from cbr.repo.content.store import UPLOADS_IN_FLIGHT
from cbr.repo.replicate import PUT_BYTES
from cbr.v1 import (
    agent_pb2,
    backup_pb2,
    common_pb2,
    credential_pb2,
    iam_pb2,
    key_pb2,
    policy_pb2,
    replication_pb2,
    task_pb2,
    vault_pb2,
)
from tests.integration.test_data_path import (
    FAST,
    Host,
    MiB,
    _backup,
    _sha,
    _start,
    _tree,
    _wait_task,
    _write_at,
)
from tests.support.processes import (
    AgentFactory,
    AgentProcess,
    ControllerFactory,
    ControllerProcess,
    enroll,
    wait_until,
)
from tests.support.proxy import CuttingProxy
from tests.support.seaweed import SeaweedServer

pytestmark = pytest.mark.integration

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
            source_args: tuple[str, ...] = (), **importer: str) -> Clouds:
    """Two clouds; with ``storage``, each keeps its vaults in its own S3 bucket."""
    a_args, a_env = storage("a") if storage is not None else ([], None)
    b_args, b_env = storage("b") if storage is not None else ([], None)
    source = _start(tmp_path / "a", controller_factory, agent_factory,
                    extra_args=["--cloud-name", "cloud-a", "--region", "region-a", *a_args,
                                *source_args],
                    env=a_env)
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


@pytest.fixture
def clouds(tmp_path: Path, controller_factory: ControllerFactory,
           agent_factory: AgentFactory) -> Clouds:
    return _clouds(tmp_path, controller_factory, agent_factory)


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


def _target_restore(clouds: Clouds, backup_id: str, path: Path) -> None:
    task_id = clouds.target.client.backups.RestoreBackup(backup_pb2.RestoreBackupRequest(
        backup_id=backup_id, target_agent_id=clouds.target.host_agent_id,
        target_path=str(path))).task_id
    task = _wait_task(clouds.target.client, task_id)
    assert task.status == task_pb2.TASK_STATUS_SUCCESS, task.error_info


def _replicate_incrementally_and_restore(clouds: Clouds, tmp_path: Path) -> None:
    src = clouds.source
    images, share = src.files["images"], src.files["share"]
    server = _backup(src, "server", "web-1")
    tree = _backup(src, "turbo", "share")
    want_sys, want_data, want_tree = _sha(images / "sys.img"), _sha(images / "data.img"), \
        _tree(share)

    task, record = _replicate(clouds, server.id, "server")
    first_wire = int(task.extra_info["bytes_sent"])
    assert first_wire > 3 * MiB  # the data crossed
    # One true final figure (issue 20: it was the last progress report's),
    # and a finished task says so.
    assert task.extra_info["bytes_sent"] == task.extra_info["wire_bytes"]
    assert task.extra_info["message"] == "finished"
    tree_task, _ = _replicate(clouds, tree.id, "turbo")
    assert int(tree_task.extra_info["bytes_total"]) >= 3 * MiB  # the share's files
    assert int(tree_task.extra_info["bytes_sent"]) > 3 * MiB

    # The replica is a backup of the target's catalog, marked as a replica.
    replica = clouds.target.client.backups.GetBackup(
        backup_pb2.GetBackupRequest(backup_id=record.destination_backup_id)).backup
    assert replica.image_type == backup_pb2.IMAGE_TYPE_REPLICATION
    assert replica.vault_id == clouds.target.vaults["server"]
    assert replica.stored_bytes > 3 * MiB  # what the import added to the target's storage

    # Change the data, back up and replicate again: only the new chunks cross.
    rng = random.Random(11)
    _write_at(images / "data.img", 2 * MiB, rng.randbytes(256 * 1024))
    (share / "docs" / "new.bin").write_bytes(rng.randbytes(512 * 1024))
    server2 = _backup(src, "server", "web-1")
    tree2 = _backup(src, "turbo", "share")
    task2, record2 = _replicate(clouds, server2.id, "server")
    # Only the new chunks cross: what the incremental backup stored, and
    # message overhead (the disk's block size makes the 256 KiB change 1 MiB).
    wire2 = int(task2.extra_info["bytes_sent"])
    new_bytes = server2.stored_bytes + sum(c.stored_bytes for c in server2.children)
    assert wire2 <= 1.1 * new_bytes + 64 * 1024, (wire2, new_bytes)
    assert wire2 < first_wire / 4
    _, tree_record2 = _replicate(clouds, tree2.id, "turbo")

    # Replicas restore on the target as the source was at backup time.
    out = tmp_path / "b" / "restored"
    out.mkdir()
    _target_restore(clouds, record.destination_backup_id, out / "server1")
    assert _sha(out / "server1" / "system.img") == want_sys
    assert _sha(out / "server1" / "data.img") == want_data
    # An image from the replica: its system disk, registered on the target.
    made = clouds.target.client.backups.CreateImage(backup_pb2.CreateImageRequest(
        backup_id=record.destination_backup_id, name="web-1-image",
        target_agent_id=clouds.target.host_agent_id, target_path=str(out / "web-1.img")))
    task = _wait_task(clouds.target.client, made.task_id)
    assert task.status == task_pb2.TASK_STATUS_SUCCESS, task.error_info
    image = clouds.target.client.backups.GetImage(backup_pb2.GetImageRequest(
        image_id=made.image.id)).image
    assert image.status == backup_pb2.IMAGE_STATUS_AVAILABLE
    assert (image.source_backup_id, image.source_cloud) == (server.id, "cloud-a")
    assert _sha(out / "web-1.img") == want_sys
    _target_restore(clouds, record2.destination_backup_id, out / "server2")
    assert _sha(out / "server2" / "data.img") == _sha(images / "data.img")
    _target_restore(clouds, tree_record2.destination_backup_id, out / "share2")
    assert _tree(out / "share2") == _tree(share)
    assert want_tree != _tree(share)

    # Both sides keep a record; the target's names the source backup.
    listed = clouds.target.client.replication.ListReplicationRecords(
        replication_pb2.ListReplicationRecordsRequest(source_backup_id=server.id))
    [target_record] = listed.replication_records
    assert target_record.status == SUCCESS
    assert target_record.destination_backup_id == record.destination_backup_id


def test_server_and_file_system_backups_replicate_incrementally_and_restore_on_the_target(
        clouds: Clouds, tmp_path: Path) -> None:
    _replicate_incrementally_and_restore(clouds, tmp_path)


def test_replication_between_clouds_whose_vaults_are_on_s3(
        tmp_path: Path, seaweed: SeaweedServer, controller_factory: ControllerFactory,
        agent_factory: AgentFactory) -> None:
    creds = seaweed.credentials()

    def on_s3(cloud: str) -> tuple[list[str], dict[str, str] | None]:
        url = (f"s3://{seaweed.bucket_name()}/{cloud}?endpoint={seaweed.endpoint}"
               "&region=us-east-1&addressing_style=path&create_bucket=1")
        return (["--storage-url", url], {"CBR_STORAGE_ACCESS_KEY": creds["access_key"],
                                          "CBR_STORAGE_SECRET_KEY": creds["secret_key"]})

    clouds = _clouds(tmp_path, controller_factory, agent_factory, storage=on_s3)
    vault = clouds.target.client.vaults.GetVault(vault_pb2.GetVaultRequest(
        vault_id=clouds.target.vaults["server"])).vault
    assert vault.storage_url.startswith("s3://")
    _replicate_incrementally_and_restore(clouds, tmp_path)


def _refused(call: Any) -> errors.CbrError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    err = error_from_rpc(info.value)
    assert err is not None, info.value
    return err


def test_replication_rules_refuse_with_the_reference_codes(clouds: Clouds) -> None:
    src = clouds.source
    disk = _backup(src, "disk", "vol-1")
    server = _backup(src, "server", "web-1")

    def replicate(backup_id: str, region: str = "region-b", kind: str = "server") -> Any:
        return lambda: src.client.replication.ReplicateBackup(
            replication_pb2.ReplicateBackupRequest(
                backup_id=backup_id, credential_id=clouds.credential_id,
                destination_region=region, destination_vault_id=clouds.target.vaults[kind]))

    # The target publishes which of its regions take replicas.
    caps = clouds.target.client.replication.GetReplicationCapabilities(
        replication_pb2.GetReplicationCapabilitiesRequest())
    assert caps.cloud == "cloud-b"
    assert {r.id: r.replication_supported for r in caps.regions} == {"region-b": True,
                                                                      "region-c": False}
    # Rule 1: disk backups do not replicate.
    assert _refused(replicate(disk.id)).code == "BackupService.1002"
    # Rule 4: only to regions that accept replicas.
    assert _refused(replicate(server.id, "region-c")).code == "BackupService.1005"
    # The vault must hold the backup's type.
    assert _refused(replicate(server.id, kind="turbo")).code == "BackupService.6102"
    # Rule 6: one replica per region.
    _replicate(clouds, server.id, "server")
    assert _refused(replicate(server.id)).code == "BackupService.1009"
    # ... and again by hand once the replica is deleted on the target.
    [target_record] = clouds.target.client.replication.ListReplicationRecords(
        replication_pb2.ListReplicationRecordsRequest(source_backup_id=server.id)
    ).replication_records
    delete = clouds.target.client.backups.DeleteBackup(backup_pb2.DeleteBackupRequest(
        backup_id=target_record.destination_backup_id))
    _wait_task(clouds.target.client, delete.task_id)
    _replicate(clouds, server.id, "server")


def test_credentials_are_checked_against_the_target(clouds: Clouds) -> None:
    target = clouds.target
    user = target.client.iam.CreateUser(iam_pb2.CreateUserRequest(name="replicator")).user
    for action in ("cbr:vaults:get", "cbr:backups:get", "cbr:tasks:get", "cbr:backups:import",
                   "cbr:backups:delete", "cbr:snapshotMetadata:create",
                   "cbr::updateSnapshotMetadata", "cbr:thirdAuth:create"):
        target.client.iam.CreateGrant(iam_pb2.CreateGrantRequest(user_id=user.id,
                                                                  action=action))
    key = target.client.iam.CreateAccessKey(iam_pb2.CreateAccessKeyRequest(
        user_id=user.id)).access_key

    def create(name: str, **kw: Any) -> Any:
        fields = {"name": name, "target_cloud": "cloud-b",
                  "target_endpoint": target.controller.api_endpoint,
                  "target_ca_certificate": target.controller.ca_pem.decode(),
                  "target_account_id": target.account_id,
                  "access_key_id": key.access_key_id,
                  "secret_access_key": key.secret_access_key, **kw}
        return lambda: clouds.source.client.credentials.CreateCredential(
            credential_pb2.CreateCredentialRequest(**fields))

    # Rule 11: the missing ninth action is named.
    err = _refused(create("partial"))
    assert isinstance(err, errors.PermissionDenied)
    assert "cbr::listThirdAuth" in err.message
    target.client.iam.CreateGrant(iam_pb2.CreateGrantRequest(user_id=user.id,
                                                              action="cbr:thirdAuth:list"))
    # A new grant takes effect within the access-key cache's two seconds.
    made = wait_until(lambda: create("full")().credential, ignore=(grpc.RpcError,),
                      timeout=10, message="the credential is accepted")
    assert made.access_key_id == key.access_key_id
    # The key's account and cloud must be the ones named.
    assert _refused(create("wrong-cloud", target_cloud="cloud-z")).code == "BackupService.9900"
    assert _refused(create("wrong-secret", secret_access_key="x" * 40)).status \
        == grpc.StatusCode.UNAUTHENTICATED
    # Rule 12: the target account never changes; the secret is never returned.
    err = _refused(lambda: clouds.source.client.credentials.UpdateCredential(
        credential_pb2.UpdateCredentialRequest(credential_id=made.id,
                                               target_account_id="someone-else")))
    assert err.code == "BackupService.9900"
    shown = clouds.source.client.credentials.GetCredential(
        credential_pb2.GetCredentialRequest(credential_id=made.id)).credential
    assert "secret" not in str(shown).lower()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_cut_streams_and_a_killed_importer_resume_without_resending(
        tmp_path: Path, controller_factory: ControllerFactory,
        agent_factory: AgentFactory) -> None:
    port = _free_port()
    proxy = CuttingProxy(("127.0.0.1", port), cut_after=[40 * MiB])
    try:
        clouds = _clouds(tmp_path, controller_factory, agent_factory,
                         listen=f"127.0.0.1:{port}", advertise=proxy.endpoint)
        images = clouds.source.files["images"]
        # Large enough that the puts in flight when a stream breaks (what a
        # fault may cost, see below) are small beside the backup, as they are
        # beside any real one.
        rng = random.Random(5)
        for offset in (8 * MiB, 152 * MiB):  # 288 MiB, in two (randbytes stops at 256)
            _write_at(images / "sys.img", offset, rng.randbytes(144 * MiB))
        server = _backup(clouds.source, "server", "web-1")
        chunk_bytes = server.stored_bytes + sum(c.stored_bytes for c in server.children)
        killed = threading.Event()

        def kill_importer() -> None:
            clouds.target.importer.kill()
            killed.set()
            clouds.target.importer.start()

        # The first stream is cut at 40 MiB, the target controller restarts at
        # 70 MiB (the importer keeps its grant), the importer is killed at 100 MiB.
        proxy.when_total_exceeds(70 * MiB, clouds.target.controller.restart)
        proxy.when_total_exceeds(100 * MiB, kill_importer)
        task, record = _replicate(clouds, server.id, "server")
        assert proxy.cuts >= 1 and killed.is_set()
        assert int(task.extra_info["attempts"]) >= 3, task.extra_info
        sent = int(task.extra_info["bytes_sent"])
        assert sent < 1.2 * chunk_bytes, (sent, chunk_bytes)
        # What a broken stream may cost: the puts sent and not yet answered,
        # and, when the importer dies, the answered ones whose packs were
        # still uploading (each put is closed into packs of its own, indexed
        # once stored), each at most PUT_BYTES plus its last chunk;
        # everything else crosses once.
        window = (PUTS_IN_FLIGHT + 1 + UPLOADS_IN_FLIGHT) * (PUT_BYTES + CHUNKER_MAX)
        assert sent - chunk_bytes < (proxy.cuts + 1) * window, (sent, chunk_bytes, proxy.cuts)
        out = tmp_path / "b" / "restored"
        _target_restore(clouds, record.destination_backup_id, out)
        assert _sha(out / "system.img") == _sha(images / "sys.img")
        assert _sha(out / "data.img") == _sha(images / "data.img")
    finally:
        proxy.close()


def _encrypted_vault(client: Client, name: str, obj: int, key_id: str, *,
                     replication: bool, members: list[str] | None = None) -> str:
    return str(client.vaults.CreateVault(vault_pb2.CreateVaultRequest(
        name=name, object_type=obj, size_gb=100, encrypted=True, kms_key_id=key_id,
        protect_type=vault_pb2.PROTECT_TYPE_REPLICATION if replication
        else vault_pb2.PROTECT_TYPE_BACKUP,
        resources=[vault_pb2.ResourceSpec(id=m) for m in members or []])).vault.id)


def test_encryption_rules_hold_across_clouds(clouds: Clouds, tmp_path: Path) -> None:
    src, target = clouds.source, clouds.target
    share = src.protectables["share"].id
    src_key = src.client.keys.CreateKey(key_pb2.CreateKeyRequest(alias="src")).key
    src.client.vaults.RemoveVaultResources(vault_pb2.RemoveVaultResourcesRequest(
        vault_id=src.vaults["turbo"], resource_ids=[share]))
    src.vaults["sealed"] = _encrypted_vault(src.client, "v-sealed", common_pb2.OBJECT_TYPE_TURBO,
                                            src_key.id, replication=False, members=[share])
    k1 = target.client.keys.CreateKey(key_pb2.CreateKeyRequest(alias="k1")).key
    k2 = target.client.keys.CreateKey(key_pb2.CreateKeyRequest(alias="k2")).key
    target.vaults["turbo-k1"] = _encrypted_vault(target.client, "r-turbo-k1",
                                                 common_pb2.OBJECT_TYPE_TURBO, k1.id,
                                                 replication=True)
    target.vaults["turbo-k2"] = _encrypted_vault(target.client, "r-turbo-k2",
                                                 common_pb2.OBJECT_TYPE_TURBO, k2.id,
                                                 replication=True)
    target.vaults["server-k1"] = _encrypted_vault(target.client, "r-server-k1",
                                                  common_pb2.OBJECT_TYPE_SERVER, k1.id,
                                                  replication=True)
    tree = _backup(src, "sealed", "share")

    def replicate(backup_id: str, kind: str) -> Any:
        return lambda: src.client.replication.ReplicateBackup(
            replication_pb2.ReplicateBackupRequest(
                backup_id=backup_id, credential_id=clouds.credential_id,
                destination_region="region-b", destination_vault_id=target.vaults[kind]))

    # Rule 10: an encrypted backup goes only to an encrypted vault.
    assert _refused(replicate(tree.id, "turbo")).code == "BackupService.7007"
    # Decrypted at the source, encrypted again with the target's key.
    _, record = _replicate(clouds, tree.id, "turbo-k1")
    out = tmp_path / "b" / "restored"
    task_id = target.client.backups.RestoreBackup(backup_pb2.RestoreBackupRequest(
        backup_id=record.destination_backup_id, target_agent_id=target.host_agent_id,
        target_path=str(out), encrypted=True)).task_id
    task = _wait_task(target.client, task_id)
    assert task.status == task_pb2.TASK_STATUS_SUCCESS, task.error_info
    assert _tree(out) == _tree(src.files["share"])
    # Rule 8: the resource's later backups go only to vaults with that same key.
    tree2 = _backup(src, "sealed", "share")
    assert _refused(replicate(tree2.id, "turbo-k2")).code == "BackupService.7007"
    # ... and a vault replication that would break it skips that backup.
    [task_id] = src.client.replication.ReplicateVault(replication_pb2.ReplicateVaultRequest(
        vault_id=src.vaults["sealed"], credential_id=clouds.credential_id,
        destination_region="region-b", destination_vault_id=target.vaults["turbo-k2"])).task_ids
    task = _wait_task(src.client, task_id)  # rule 3: no backup went, so the task is skipped
    assert task.status == task_pb2.TASK_STATUS_SKIPPED
    assert "BackupService.7007" in task.extra_info["reason"]
    [skipped] = src.client.replication.ListReplicationRecords(
        replication_pb2.ListReplicationRecordsRequest(
            source_backup_id=tree2.id)).replication_records
    assert skipped.status == replication_pb2.REPLICATION_STATUS_SKIP
    assert skipped.fail_code == "BackupService.7007"
    # Rule 8 the other way: after an unencrypted replica, no encrypted vault.
    server = _backup(src, "server", "web-1")
    _replicate(clouds, server.id, "server")
    server2 = _backup(src, "server", "web-1")
    assert _refused(replicate(server2.id, "server-k1")).code == "BackupService.7007"
    # Rule 9: a key shared in from another account cannot encrypt a replication vault.
    other = target.client.iam.CreateAccount(iam_pb2.CreateAccountRequest(
        name="other", admin_user_name="other-admin"))
    target.client.keys.ShareKey(key_pb2.ShareKeyRequest(key_id=k1.id,
                                                         account_id=other.account.id))
    other_client = Client(target.controller.api_endpoint, other.access_key.access_key_id,
                          other.access_key.secret_access_key,
                          root_certificates=target.controller.ca_pem)
    try:
        err = _refused(lambda: _encrypted_vault(other_client, "shared",
                                                common_pb2.OBJECT_TYPE_TURBO, k1.id,
                                                replication=True))
        assert err.code == "BackupService.7005"
    finally:
        other_client.close()


def _credential(client: Client, name: str, cloud: str, controller: ControllerProcess,
                account_id: str, access_key: str, secret_key: str) -> str:
    return str(client.credentials.CreateCredential(credential_pb2.CreateCredentialRequest(
        name=name, target_cloud=cloud, target_endpoint=controller.api_endpoint,
        target_account_id=account_id, access_key_id=access_key,
        secret_access_key=secret_key,
        target_ca_sha256=controller.endpoints["ca_sha256"])).credential.id)


def test_vault_replication_goes_once_per_region_and_backups_to_one_account(
        clouds: Clouds) -> None:
    src, target = clouds.source, clouds.target
    # Rule 3: an empty vault is skipped, not failed.
    empty = src.client.vaults.CreateVault(vault_pb2.CreateVaultRequest(
        name="v-empty", object_type=common_pb2.OBJECT_TYPE_SERVER, size_gb=10)).vault
    [task_id] = src.client.replication.ReplicateVault(replication_pb2.ReplicateVaultRequest(
        vault_id=empty.id, credential_id=clouds.credential_id, destination_region="region-b",
        destination_vault_id=target.vaults["server"])).task_ids
    assert _wait_task(src.client, task_id).status == task_pb2.TASK_STATUS_SKIPPED

    first = _backup(src, "server", "web-1")

    def replicate_vault() -> list[str]:
        return list(src.client.replication.ReplicateVault(replication_pb2.ReplicateVaultRequest(
            vault_id=src.vaults["server"], credential_id=clouds.credential_id,
            destination_region="region-b",
            destination_vault_id=target.vaults["server"])).task_ids)

    [task_id] = replicate_vault()
    assert _wait_task(src.client, task_id).status == task_pb2.TASK_STATUS_SUCCESS
    [record] = wait_until(lambda: [r for r in src.client.replication.ListReplicationRecords(
        replication_pb2.ListReplicationRecordsRequest(source_backup_id=first.id)
    ).replication_records if r.status == SUCCESS], message="the record settles")
    # Rule 6: once a vault went to a region, its backups never go there again
    # by vault replication, even after the replica is deleted; new ones do.
    delete = target.client.backups.DeleteBackup(backup_pb2.DeleteBackupRequest(
        backup_id=record.destination_backup_id))
    _wait_task(target.client, delete.task_id)
    [skipped] = replicate_vault()  # rule 3: nothing to do is a skipped task, saying why
    task = _wait_task(src.client, skipped)
    assert task.status == task_pb2.TASK_STATUS_SKIPPED
    assert "gone to region-b already" in task.extra_info["reason"]
    second = _backup(src, "server", "web-1")
    [task_id] = replicate_vault()
    assert _wait_task(src.client, task_id).status == task_pb2.TASK_STATUS_SUCCESS

    # Rule 5: a backup replicates to one account only.
    other = target.client.iam.CreateAccount(iam_pb2.CreateAccountRequest(
        name="second", admin_user_name="second-admin"))
    other_cred = _credential(src.client, "to-b-second", "cloud-b", target.controller,
                             other.account.id, other.access_key.access_key_id,
                             other.access_key.secret_access_key)
    err = _refused(lambda: src.client.replication.ReplicateBackup(
        replication_pb2.ReplicateBackupRequest(
            backup_id=second.id, credential_id=other_cred, destination_region="region-b",
            destination_vault_id=target.vaults["server"])))
    assert err.code == "BackupService.1011"


def test_replicas_go_back_to_their_source_but_not_onward(
        clouds: Clouds, controller_factory: ControllerFactory, agent_factory: AgentFactory,
        tmp_path: Path) -> None:
    src, target = clouds.source, clouds.target
    (tmp_path / "a-importer").mkdir()
    _start_agent(tmp_path / "a-importer", src.controller, agent_factory, "a-importer",
                 "importer")
    server = _backup(src, "server", "web-1")
    _, record = _replicate(clouds, server.id, "server")
    # The target's account gets credentials for the source cloud and a third cloud.
    src_account = src.client.iam.GetCallerIdentity(iam_pb2.GetCallerIdentityRequest()).account.id
    creds = src.controller.admin_credentials
    back = _credential(target.client, "back-to-a", "cloud-a", src.controller, src_account,
                       creds["access_key"], creds["secret_key"])
    third = controller_factory("third", extra_args=[*FAST, "--cloud-name", "cloud-c",
                                                    "--region", "region-c"])
    third_creds = third.admin_credentials
    third_account = third.client().iam.GetCallerIdentity(
        iam_pb2.GetCallerIdentityRequest()).account.id
    onward = _credential(target.client, "to-c", "cloud-c", third, third_account,
                         third_creds["access_key"], third_creds["secret_key"])
    home_vault = _replication_vault(src.client, "a-returns", common_pb2.OBJECT_TYPE_SERVER,
                                    "region-a")
    # Rule 7: not onward to a third cloud ...
    err = _refused(lambda: target.client.replication.ReplicateBackup(
        replication_pb2.ReplicateBackupRequest(
            backup_id=record.destination_backup_id, credential_id=onward,
            destination_region="region-c", destination_vault_id="any")))
    assert err.code == "BackupService.1002"
    # ... but back to the source, where the copy restores like the original.
    resp = target.client.replication.ReplicateBackup(replication_pb2.ReplicateBackupRequest(
        backup_id=record.destination_backup_id, credential_id=back,
        destination_region="region-a", destination_vault_id=home_vault))
    task = _wait_task(target.client, resp.task_id, timeout=120)
    assert task.status == task_pb2.TASK_STATUS_SUCCESS, task.error_info
    returned = wait_until(lambda: (r := target.client.replication.GetReplicationRecord(
        replication_pb2.GetReplicationRecordRequest(
            replication_record_id=resp.replication_record_id)).replication_record).status
        == SUCCESS and r, message="the record settles")
    copy = src.client.backups.GetBackup(backup_pb2.GetBackupRequest(
        backup_id=returned.destination_backup_id)).backup
    assert copy.image_type == backup_pb2.IMAGE_TYPE_REPLICATION
    assert copy.vault_id == home_vault
    out = tmp_path / "a" / "returned"
    task_id = src.client.backups.RestoreBackup(backup_pb2.RestoreBackupRequest(
        backup_id=copy.id, target_agent_id=src.agent_id, target_path=str(out))).task_id
    assert _wait_task(src.client, task_id).status == task_pb2.TASK_STATUS_SUCCESS
    assert _sha(out / "system.img") == _sha(src.files["images"] / "sys.img")


def test_a_replication_policy_follows_the_vault_backups_and_runs_on_demand(
        clouds: Clouds) -> None:
    src, target = clouds.source, clouds.target
    daily = "FREQ=DAILY;INTERVAL=1;BYHOUR=3;BYMINUTE=0"
    backup_policy = src.client.policies.CreatePolicy(policy_pb2.CreatePolicyRequest(
        name="nightly", operation_type=policy_pb2.POLICY_OPERATION_TYPE_BACKUP, enabled=True,
        trigger=policy_pb2.Trigger(pattern=[daily]),
        operation_definition=policy_pb2.OperationDefinition(max_backups=10))).policy
    replication_policy = src.client.policies.CreatePolicy(policy_pb2.CreatePolicyRequest(
        name="to-b", operation_type=policy_pb2.POLICY_OPERATION_TYPE_REPLICATION, enabled=True,
        trigger=policy_pb2.Trigger(pattern=[daily]),
        operation_definition=policy_pb2.OperationDefinition(
            max_backups=1, destination_region="region-b",
            destination_project_id=target.account_id,
            credential_id=clouds.credential_id))).policy
    vault = src.vaults["server"]
    src.client.vaults.AssociateVaultPolicy(vault_pb2.AssociateVaultPolicyRequest(
        vault_id=vault, policy_id=backup_policy.id))
    src.client.vaults.AssociateVaultPolicy(vault_pb2.AssociateVaultPolicyRequest(
        vault_id=vault, policy_id=replication_policy.id,
        destination_vault_id=target.vaults["server"]))

    def records() -> list[Any]:
        return list(src.client.replication.ListReplicationRecords(
            replication_pb2.ListReplicationRecordsRequest(vault_id=vault)).replication_records)

    # A policy backup is replicated as soon as it is available.
    [checkpoint_id] = src.client.policies.RunPolicyNow(policy_pb2.RunPolicyNowRequest(
        policy_id=backup_policy.id)).checkpoint_ids
    auto = wait_until(lambda: src.client.backups.GetCheckpoint(backup_pb2.GetCheckpointRequest(
        checkpoint_id=checkpoint_id)).checkpoint.backup_ids, message="the checkpoint's backup")
    [record] = wait_until(lambda: [r for r in records() if r.status == SUCCESS],
                          timeout=60, message="the policy backup is replicated")
    assert record.source_backup_id == auto[0] and record.auto_trigger
    # A manual backup waits for the replication policy's run, which sends
    # only what has not gone to the region yet.
    manual = _backup(src, "server", "web-1")
    [task_id] = src.client.policies.RunPolicyNow(policy_pb2.RunPolicyNowRequest(
        policy_id=replication_policy.id)).task_ids
    assert _wait_task(src.client, task_id).status == task_pb2.TASK_STATUS_SUCCESS
    wait_until(lambda: {r.source_backup_id for r in records() if r.status == SUCCESS}
               == {auto[0], manual.id}, message="both replicated")
    # Nothing new: the run is skipped, with a skipped task saying why (rule 3).
    [task_id] = src.client.policies.RunPolicyNow(policy_pb2.RunPolicyNowRequest(
        policy_id=replication_policy.id)).task_ids
    task = _wait_task(src.client, task_id)
    assert task.status == task_pb2.TASK_STATUS_SKIPPED and "already" in task.extra_info["reason"]
    runs = src.client.policies.ListPolicyRuns(policy_pb2.ListPolicyRunsRequest(
        policy_id=replication_policy.id)).runs
    assert any(r.status == "skipped" and task_id in r.detail for r in runs)
    # The policy's retention (max_backups 1) applies to the replicas it made
    # on the target, deleting through the credential: the newest stays.

    def replicas() -> set[str]:
        return {b.id for b in target.client.backups.ListBackups(backup_pb2.ListBackupsRequest(
            vault_id=target.vaults["server"],
            status=backup_pb2.BACKUP_STATUS_AVAILABLE)).backups}

    newest = next(r.destination_backup_id for r in records() if r.source_backup_id == manual.id)
    wait_until(lambda: replicas() == {newest}, timeout=30, message="retention on the target")


def test_a_replication_that_gives_up_fails_and_leaves_no_replica(
        tmp_path: Path, controller_factory: ControllerFactory,
        agent_factory: AgentFactory) -> None:
    port = _free_port()
    proxy = CuttingProxy(("127.0.0.1", port))
    try:
        clouds = _clouds(tmp_path, controller_factory, agent_factory,
                         source_args=("--replication-retry", "3"),
                         listen=f"127.0.0.1:{port}", advertise=proxy.endpoint)
        images = clouds.source.files["images"]
        _write_at(images / "sys.img", 8 * MiB, random.Random(6).randbytes(24 * MiB))
        server = _backup(clouds.source, "server", "web-1")
        # The importer dies mid-transfer and does not come back.
        proxy.when_total_exceeds(8 * MiB, clouds.target.importer.kill)
        resp = clouds.source.client.replication.ReplicateBackup(
            replication_pb2.ReplicateBackupRequest(
                backup_id=server.id, credential_id=clouds.credential_id,
                destination_region="region-b", destination_vault_id=clouds.target.vaults["server"]))
        task = _wait_task(clouds.source.client, resp.task_id, timeout=120)
        assert task.status == task_pb2.TASK_STATUS_FAILED
        assert task.error_info.code == "BackupService.8001", task.error_info
        assert "could not be reached" in task.error_info.message
        record = clouds.source.client.replication.GetReplicationRecord(
            replication_pb2.GetReplicationRecordRequest(
                replication_record_id=resp.replication_record_id)).replication_record
        assert record.status == FAIL and record.fail_code == "BackupService.8001"
        # The target aborted the import: its record failed and no replica shows.
        [target_record] = wait_until(lambda: [
            r for r in clouds.target.client.replication.ListReplicationRecords(
                replication_pb2.ListReplicationRecordsRequest(
                    source_backup_id=server.id)).replication_records if r.status == FAIL],
            timeout=30, message="the target's record fails")
        assert target_record.fail_code == "BackupService.0412"
        listed = clouds.target.client.backups.ListBackups(backup_pb2.ListBackupsRequest(
            vault_id=clouds.target.vaults["server"])).backups
        assert list(listed) == []
    finally:
        proxy.close()
