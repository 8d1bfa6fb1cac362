"""`cbr backup create` says when a resource was not backed up, and fails."""

from __future__ import annotations

import pytest

from cbr.v1 import common_pb2, vault_pb2
from cli.main import main
from tests.api.test_listing import _inventory
from tests.support.inproc import RunningController


def test_a_backup_whose_agent_is_offline_exits_1_and_shows_the_skip_once(
        sqlite_api: RunningController, capsys: pytest.CaptureFixture[str]) -> None:
    ids = _inventory(sqlite_api)
    client = sqlite_api.client()
    vault = client.vaults.CreateVault(vault_pb2.CreateVaultRequest(
        name="files", object_type=common_pb2.OBJECT_TYPE_TURBO, size_gb=10)).vault
    client.vaults.AddVaultResources(vault_pb2.AddVaultResourcesRequest(
        vault_id=vault.id, resources=[vault_pb2.ResourceSpec(id=ids["share"])]))
    capsys.readouterr()
    code = main(["--endpoint", sqlite_api.endpoint, "--access-key", sqlite_api.access_key,
                 "--secret-key", sqlite_api.secret_key, "--insecure",
                 "backup", "create", "--vault", vault.id, "--wait"])
    out, err = capsys.readouterr()
    assert code == 1
    assert "1 of 1 resources were not backed up" in err
    assert out.count("is offline") == 1  # one table of skipped resources, not two
