"""The replication rules across two real clouds: each refuses with the
reference's code, checked where the reference checks it (the source, or the
target through the credential): backup types and regions, one replica per
region and one account per backup, vault replication once per region,
credentials, replicas going back to their source but not onward, and the
encryption rules.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest

from cbr import errors
from cbr.client import Client, error_from_rpc
from cbr.v1 import (
    backup_pb2,
    common_pb2,
    credential_pb2,
    iam_pb2,
    key_pb2,
    replication_pb2,
    task_pb2,
    vault_pb2,
)
from tests.integration.test_data_path import FAST, _backup, _sha, _tree, _wait_task
from tests.support.clouds import SUCCESS, Clouds, _replicate, _replication_vault, _start_agent
from tests.support.processes import AgentFactory, ControllerFactory, ControllerProcess, wait_until

pytestmark = pytest.mark.integration


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

