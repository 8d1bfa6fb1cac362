"""The controller process keeps its state across restarts, on SQLite and PostgreSQL,
and drives from the `cbr` CLI as a user would."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from cbr.v1 import common_pb2, vault_pb2
from tests.support.processes import ControllerFactory, ControllerProcess, console_script


def test_state_survives_a_restart(controller_factory: ControllerFactory,
                                  database_url: str) -> None:
    ctl = controller_factory(database_url=database_url)
    first = ctl.client().vaults.CreateVault(vault_pb2.CreateVaultRequest(
        name="kept", object_type=common_pb2.OBJECT_TYPE_SERVER, size_gb=10)).vault
    creds = ctl.admin_credentials
    ctl.restart()
    assert ctl.admin_credentials == creds
    got = ctl.client().vaults.GetVault(vault_pb2.GetVaultRequest(vault_id=first.id)).vault
    assert (got.name, got.created_at) == ("kept", first.created_at)
    assert ctl.log_text().count("created the administrator account") == 1


def test_admin_credentials_are_private_to_the_owner(controller: ControllerProcess) -> None:
    path = Path(controller.endpoints_path).parent / "admin-credentials.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert {"access_key", "secret_key", "account_id"} <= set(json.loads(path.read_text()))


def _others_can_reach(path: Path) -> list[str]:
    return [f"{p} {stat.S_IMODE(p.lstat().st_mode):04o}"
            for p in [path, *path.rglob("*")]
            if not p.is_symlink() and stat.S_IMODE(p.lstat().st_mode) & 0o077]


def test_the_catalog_keys_certificates_and_vault_storage_are_private(
        controller: ControllerProcess) -> None:
    client = controller.client()
    client.vaults.CreateVault(vault_pb2.CreateVaultRequest(
        name="v", object_type=common_pb2.OBJECT_TYPE_DISK, size_gb=1))
    data = controller.data_dir
    assert _others_can_reach(data) == []
    assert {"controller.db", "master.key", "root.key", "ca", "storage"} \
        <= {p.name for p in data.iterdir()}


def test_a_controller_closes_up_files_left_open_and_says_so(
        controller: ControllerProcess) -> None:
    controller.client().vaults.CreateVault(vault_pb2.CreateVaultRequest(
        name="v", object_type=common_pb2.OBJECT_TYPE_DISK, size_gb=1))
    data = controller.data_dir
    controller.stop()
    for path, mode in ((data, 0o755), (data / "controller.db", 0o644),
                       (data / "ca" / "ca.key", 0o644), (data / "storage", 0o755)):
        path.chmod(mode)
    controller.start()
    assert _others_can_reach(data) == []
    log = controller.log_text()
    assert f"{data / 'controller.db'} was readable by other users (mode 0644)" in log
    assert "ca.key was readable by other users" in log


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(console_script("cbr")), *args], capture_output=True, text=True,
                          env=env, timeout=60)


def test_the_cli_drives_vaults_end_to_end(controller: ControllerProcess, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CBR_")}
    env["CBR_CONFIG_DIR"] = str(tmp_path / "cli")
    creds = Path(controller.endpoints_path).parent / "admin-credentials.json"
    assert run_cli(env, "configure", "--import-admin-credentials", str(creds)).returncode == 0
    made = run_cli(env, "vault", "create", "--name", "cli-vault", "--type", "disk",
                   "--size-gb", "20", "--tag", "team=ops", "-o", "json")
    assert made.returncode == 0, made.stderr
    vault = json.loads(made.stdout)
    vault = vault.get("vault", vault)
    listed = run_cli(env, "vault", "list", "-o", "json")
    assert [v["name"] for v in json.loads(listed.stdout)] == ["cli-vault"]
    dup = run_cli(env, "vault", "create", "--name", "cli-vault", "--type", "disk",
                  "--size-gb", "20")
    assert dup.returncode == 1
    assert dup.stderr.strip().count("\n") == 0
    assert "ALREADY_EXISTS BackupService.6106" in dup.stderr
    deleted = run_cli(env, "vault", "delete", vault["id"], "--wait")
    assert deleted.returncode == 0, deleted.stderr
    unsigned = run_cli({**env, "CBR_SECRET_KEY": "wrong"}, "vault", "list")
    assert unsigned.returncode == 1 and "UNAUTHENTICATED" in unsigned.stderr


def test_a_second_controller_on_a_taken_port_stops_with_one_clear_line(
        controller_factory: ControllerFactory) -> None:
    first = controller_factory("first")
    for name, ports in (("same-api", {"api_port": first.api_port}),
                        ("same-agent", {"agent_port": first.agent_port})):
        second = controller_factory(name, start=False, **ports)  # type: ignore[arg-type]
        with pytest.raises(RuntimeError, match="exited with code 2"):
            second.start()
        errors = [line for line in second.log_text().splitlines()
                  if " ERROR " in line or "Traceback" in line]
        assert len(errors) == 1, errors
        assert "cannot start: cannot listen on 127.0.0.1:" in errors[0]
        assert "the port is in use" in errors[0]
    # The first one still has its ports to itself.
    first.client().vaults.ListVaults(vault_pb2.ListVaultsRequest())
