"""What the CLI sends: arguments parsed into request messages, no server needed."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from google.protobuf import field_mask_pb2

from cbr.v1 import (
    agent_pb2,
    backup_pb2,
    common_pb2,
    policy_pb2,
    protectable_pb2,
    replication_pb2,
    task_pb2,
    vault_pb2,
)
from cli import (
    agent_cmd,
    backup_cmd,
    credential_cmd,
    policy_cmd,
    protectable_cmd,
    replication_cmd,
    task_cmd,
    vault_cmd,
)
from cli._common import UsageError
from cli.main import build_parser, main
from controller.api.server import SERVICE_MODULES


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def _leaf_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in set(action.choices.values()):
                out.extend(_leaf_parsers(sub))
    if not out:
        out.append(parser)
    return out


def test_every_public_rpc_of_every_service_is_reachable_from_a_command() -> None:
    reachable: set[str] = set()
    for leaf in _leaf_parsers(build_parser()):
        reachable.update(leaf.get_default("rpcs") or ())
    expected: set[str] = set()
    # Every service the controller serves, so a new one cannot be forgotten here.
    for pb2 in SERVICE_MODULES:
        for service in pb2.DESCRIPTOR.services_by_name.values():
            expected.update(f"{service.name}.{m.name}" for m in service.methods)
    # The agent's own bidirectional stream is opened by cbr-agent with its certificate.
    expected.discard("AgentService.Connect")
    # A source controller makes these on the target with a credential's key.
    expected -= {"ReplicationService.PrepareImport", "ReplicationService.GetImport",
                 "ReplicationService.AbortImport"}
    assert expected - reachable == set()
    assert reachable - expected == set()


def test_vault_create_maps_short_enum_names_tags_and_resources() -> None:
    args = parse(
        "vault",
        "create",
        "--name",
        "v1",
        "--type",
        "server",
        "--consistent-level",
        "app",
        "--size-gb",
        "100",
        "--auto-expand",
        "--threshold",
        "90",
        "--tag",
        "env=prod",
        "team=a",
        "--tag",
        "x=",
        "--auto-bind",
        "--bind-rule",
        "env=prod",
        "--resource",
        "r1",
        "r2",
        "--policy",
        "p1",
        "--backup-name-prefix",
        "nightly",
        "--description",
        "d",
    )
    assert vault_cmd.build_create_request(args) == vault_pb2.CreateVaultRequest(
        name="v1",
        description="d",
        object_type=common_pb2.OBJECT_TYPE_SERVER,
        protect_type=vault_pb2.PROTECT_TYPE_BACKUP,
        consistent_level=vault_pb2.CONSISTENT_LEVEL_APP_CONSISTENT,
        size_gb=100,
        auto_expand=True,
        threshold=90,
        backup_name_prefix="nightly",
        tags=[
            common_pb2.Tag(key="env", value="prod"),
            common_pb2.Tag(key="team", value="a"),
            common_pb2.Tag(key="x", value=""),
        ],
        auto_bind=True,
        bind_rules=[common_pb2.Tag(key="env", value="prod")],
        resources=[vault_pb2.ResourceSpec(id="r1"), vault_pb2.ResourceSpec(id="r2")],
        backup_policy_id="p1",
    )


def test_vault_create_of_a_replication_vault_sets_protect_type() -> None:
    args = parse(
        "vault",
        "create",
        "--name",
        "r",
        "--type",
        "turbo",
        "--protect-type",
        "replication",
        "--size-gb",
        "5",
    )
    req = vault_cmd.build_create_request(args)
    assert req.protect_type == vault_pb2.PROTECT_TYPE_REPLICATION
    assert req.object_type == common_pb2.OBJECT_TYPE_TURBO


def test_unknown_enum_value_is_a_usage_error_listing_the_valid_names(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["vault", "create", "--name", "v", "--type", "tape", "--size-gb", "1"])
    err = capsys.readouterr().err
    assert code == 2
    assert "invalid choice: 'tape'" in err
    assert "'server', 'disk', 'turbo'" in err


def test_vault_update_mask_names_only_the_flags_given() -> None:
    args = parse("vault", "update", "v1", "--name", "new", "--no-auto-expand", "--status", "lock")
    assert vault_cmd.build_update_request(args) == vault_pb2.UpdateVaultRequest(
        vault_id="v1",
        vault=vault_pb2.Vault(name="new", auto_expand=False, status=vault_pb2.VAULT_STATUS_LOCK),
        update_mask=field_mask_pb2.FieldMask(paths=["name", "auto_expand", "status"]),
    )


def test_vault_update_with_an_empty_tag_list_clears_the_tags() -> None:
    req = vault_cmd.build_update_request(parse("vault", "update", "v1", "--tag"))
    assert list(req.update_mask.paths) == ["tags"]
    assert len(req.vault.tags) == 0


def test_vault_update_refuses_states_only_the_controller_sets(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["vault", "update", "v1", "--status", "deleting"]) == 2
    assert "choose from 'available', 'lock', 'frozen'" in capsys.readouterr().err


def test_vault_update_without_options_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        vault_cmd.build_update_request(parse("vault", "update", "v1"))


def test_vault_list_filters_become_request_fields() -> None:
    args = parse(
        "vault",
        "list",
        "--type",
        "disk",
        "--protect-type",
        "backup",
        "--status",
        "frozen",
        "--policy",
        "p",
        "--resource",
        "r",
        "--name",
        "n",
    )
    assert vault_cmd.build_list_request(args) == vault_pb2.ListVaultsRequest(
        name="n",
        object_type=common_pb2.OBJECT_TYPE_DISK,
        protect_type=vault_pb2.PROTECT_TYPE_BACKUP,
        status=vault_pb2.VAULT_STATUS_FROZEN,
        policy_id="p",
        resource_id="r",
    )


def test_add_resources_excludes_volumes_of_the_one_server() -> None:
    args = parse("vault", "add-resources", "v1", "srv1", "--exclude-volume", "d2", "d3")
    assert vault_cmd.build_add_resources_request(args) == vault_pb2.AddVaultResourcesRequest(
        vault_id="v1",
        resources=[vault_pb2.ResourceSpec(id="srv1", exclude_volumes=["d2", "d3"])],
    )


def test_add_resources_with_several_servers_needs_the_server_of_each_volume() -> None:
    args = parse("vault", "add-resources", "v1", "s1", "s2", "--exclude-volume", "s2:d9")
    req = vault_cmd.build_add_resources_request(args)
    assert [list(r.exclude_volumes) for r in req.resources] == [[], ["d9"]]
    with pytest.raises(UsageError):
        vault_cmd.build_add_resources_request(
            parse("vault", "add-resources", "v1", "s1", "s2", "--exclude-volume", "d9")
        )


def test_global_options_may_follow_the_command() -> None:
    args = parse("vault", "list", "--output", "json", "--endpoint", "h:1")
    assert args.output == "json"
    assert args.endpoint == "h:1"
    root_first = parse("--output", "json", "vault", "list")
    assert root_first.output == "json"


def test_policy_create_builds_trigger_and_operation_definition() -> None:
    args = parse(
        "policy",
        "create",
        "--name",
        "daily",
        "--type",
        "backup",
        "--pattern",
        "FREQ=DAILY;INTERVAL=1;BYHOUR=6;BYMINUTE=00",
        "--max-backups",
        "-1",
        "--retention-days",
        "30",
        "--day-backups",
        "7",
        "--timezone",
        "UTC+08:00",
        "--full-backup-interval",
        "-1",
        "--disabled",
    )
    assert policy_cmd.build_create_request(args) == policy_pb2.CreatePolicyRequest(
        name="daily",
        operation_type=policy_pb2.POLICY_OPERATION_TYPE_BACKUP,
        enabled=False,
        operation_definition=policy_pb2.OperationDefinition(
            max_backups=-1,
            retention_duration_days=30,
            day_backups=7,
            timezone="UTC+08:00",
            full_backup_interval=-1,
        ),
        trigger=policy_pb2.Trigger(pattern=["FREQ=DAILY;INTERVAL=1;BYHOUR=6;BYMINUTE=00"]),
    )


def test_replication_policy_carries_destination_and_credential() -> None:
    args = parse(
        "policy",
        "create",
        "--name",
        "rep",
        "--type",
        "replication",
        "--pattern",
        "FREQ=DAILY",
        "--destination-region",
        "r2",
        "--destination-project-id",
        "acct",
        "--credential",
        "c1",
    )
    d = policy_cmd.build_create_request(args).operation_definition
    assert (d.destination_region, d.destination_project_id, d.credential_id) == ("r2", "acct", "c1")


def test_policy_update_of_one_retention_rule_keeps_the_others() -> None:
    current = policy_pb2.Policy(
        operation_definition=policy_pb2.OperationDefinition(
            max_backups=10, retention_duration_days=30, timezone="UTC+01:00"
        )
    )
    args = parse("policy", "update", "p1", "--max-backups", "5", "--disable")
    assert policy_cmd.needs_current(args)
    req = policy_cmd.build_update_request(args, current)
    assert list(req.update_mask.paths) == ["enabled", "operation_definition"]
    assert req.policy.enabled is False
    assert req.policy.operation_definition == policy_pb2.OperationDefinition(
        max_backups=5, retention_duration_days=30, timezone="UTC+01:00"
    )


def test_policy_update_of_the_schedule_needs_no_current_policy() -> None:
    args = parse("policy", "update", "p1", "--pattern", "FREQ=WEEKLY;BYDAY=MO", "--name", "n")
    assert not policy_cmd.needs_current(args)
    req = policy_cmd.build_update_request(args)
    assert list(req.update_mask.paths) == ["name", "trigger"]
    assert list(req.policy.trigger.pattern) == ["FREQ=WEEKLY;BYDAY=MO"]


def test_a_verify_policy_with_windows_and_a_data_subset() -> None:
    args = parse("policy", "create", "--name", "check", "--type", "verify", "--pattern",
                 "FREQ=DAILY", "--read-data-subset", "1/5", "--start-window", "90",
                 "--completion-window", "600")
    req = policy_cmd.build_create_request(args)
    assert req.operation_type == policy_pb2.POLICY_OPERATION_TYPE_VERIFY
    assert req.operation_definition.read_data_subset == "1/5"
    assert (req.start_window_minutes, req.completion_window_minutes) == (90, 600)
    update = policy_cmd.build_update_request(parse("policy", "update", "p1",
                                                   "--completion-window", "900"))
    assert list(update.update_mask.paths) == ["completion_window_minutes"]
    assert update.policy.completion_window_minutes == 900


def test_checkpoint_create_and_backup_restore_requests() -> None:
    cp = backup_cmd.build_checkpoint_request(
        parse("checkpoint", "create", "v1", "--resource", "r1", "--full", "--name", "b")
    )
    assert cp == backup_pb2.CreateCheckpointRequest(
        vault_id="v1", resource_ids=["r1"], name="b", full=True
    )
    restore = backup_cmd.build_restore_request(
        parse(
            "backup", "restore", "b1", "--mapping", "db1=/dev/sdb", "db2=/img/2.raw", "--power-on"
        )
    )
    assert restore == backup_pb2.RestoreBackupRequest(
        backup_id="b1", mappings={"db1": "/dev/sdb", "db2": "/img/2.raw"}, power_on=True
    )


def test_restore_to_a_new_path_defaults_to_the_source_agent() -> None:
    req = backup_cmd.build_restore_request(parse("backup", "restore", "b1", "--to", "/x"))
    assert req.target_path == "/x" and req.target_agent_id == ""


def test_restore_naming_an_agent_needs_a_place() -> None:
    with pytest.raises(UsageError):
        backup_cmd.build_restore_request(parse("backup", "restore", "b1", "--target-agent", "a"))


def test_restore_of_one_path_of_a_file_system_backup() -> None:
    req = backup_cmd.build_restore_request(
        parse("backup", "restore", "b1", "--path", "etc/hosts", "--to", "/tmp/r")
    )
    assert req.source_path == "etc/hosts"


def test_backup_create_is_a_checkpoint_of_the_vault() -> None:
    args = parse("backup", "create", "--vault", "v1", "--resource", "r1", "r2", "--name", "n")
    req = backup_cmd.build_checkpoint_request(args)
    assert (req.vault_id, list(req.resource_ids), req.name) == ("v1", ["r1", "r2"], "n")


def test_backup_list_filters() -> None:
    req = backup_cmd.build_list_request(
        parse(
            "backup",
            "list",
            "--vault",
            "v",
            "--status",
            "waiting_protect",
            "--image-type",
            "replication",
            "--resource-type",
            "turbo",
            "--show-children",
        )
    )
    assert req == backup_pb2.ListBackupsRequest(
        vault_id="v",
        status=backup_pb2.BACKUP_STATUS_WAITING_PROTECT,
        image_type=backup_pb2.IMAGE_TYPE_REPLICATION,
        resource_type=common_pb2.OBJECT_TYPE_TURBO,
        show_children=True,
    )


def test_credential_secret_is_asked_for_when_not_given() -> None:
    args = parse(
        "credential",
        "create",
        "--name",
        "c",
        "--target-cloud",
        "b",
        "--target-endpoint",
        "b:50051",
        "--target-account-id",
        "acct",
        "--target-access-key",
        "AK",
    )
    asked: list[str] = []

    def prompt(text: str) -> str:
        asked.append(text)
        return "SK"

    req = credential_cmd.build_create_request(args, prompt)
    assert asked
    assert (req.access_key_id, req.secret_access_key, req.target_account_id) == ("AK", "SK", "acct")


def test_credential_update_of_the_access_key_sends_its_secret() -> None:
    args = parse(
        "credential", "update", "c1", "--target-access-key", "AK2", "--target-secret-key", "SK2"
    )
    req = credential_cmd.build_update_request(args, lambda _: pytest.fail("asked"))
    assert (req.access_key_id, req.secret_access_key, req.target_cloud) == ("AK2", "SK2", "")


def test_a_secret_beginning_with_a_dash_comes_from_a_file_or_after_an_equals_sign(
        tmp_path: Path) -> None:
    """Issue 20: about one secret key in 64 begins with '-', which argparse took
    for an option after --target-secret-key."""
    secret = "-x9Y2kq/AbCdEfGh"
    path = tmp_path / "sk"
    path.write_text(secret + "\n")
    base = ("credential", "create", "--name", "c", "--target-cloud", "b", "--target-endpoint",
            "b:50051", "--target-account-id", "acct", "--target-access-key", "AK")
    for extra in (("--target-secret-key-file", str(path)), (f"--target-secret-key={secret}",)):
        req = credential_cmd.build_create_request(parse(*base, *extra),
                                                  lambda _: pytest.fail("asked"))
        assert req.secret_access_key == secret
    req = credential_cmd.build_update_request(
        parse("credential", "update", "c1", "--target-secret-key-file", str(path)),
        lambda _: pytest.fail("asked"))
    assert req.secret_access_key == secret


def test_replication_requests() -> None:
    b = replication_cmd.build_replicate_backup_request(
        parse(
            "replication",
            "replicate-backup",
            "b1",
            "--credential",
            "c",
            "--destination-region",
            "r2",
            "--destination-vault-id",
            "dv",
        )
    )
    assert b == replication_pb2.ReplicateBackupRequest(
        backup_id="b1", credential_id="c", destination_region="r2", destination_vault_id="dv"
    )
    v = replication_cmd.build_replicate_vault_request(
        parse("repl", "replicate-vault", "v1", "--credential", "c", "--destination-region", "r2",
              "--vault", "dv")
    )
    assert v == replication_pb2.ReplicateVaultRequest(
        vault_id="v1", credential_id="c", destination_region="r2", destination_vault_id="dv"
    )
    # The short forms the README uses: `cbr backup replicate`, `cbr vault replicate`.
    short = replication_cmd.build_replicate_backup_request(
        parse("backup", "replicate", "b1", "--credential", "c", "--region", "r2", "--vault", "dv")
    )
    assert short == b
    assert replication_cmd.build_replicate_vault_request(
        parse("vault", "replicate", "v1", "--credential", "c", "--region", "r2", "--vault", "dv")
    ) == v
    r = replication_cmd.build_record_list_request(
        parse("replication", "record", "list", "--status", "waiting_replicate", "--backup", "b1")
    )
    assert r.status == replication_pb2.REPLICATION_STATUS_WAITING_REPLICATE
    assert r.source_backup_id == "b1"


def test_task_list_and_agent_requests() -> None:
    t = task_cmd.build_list_request(
        parse("task", "list", "--operation-type", "vault_delete", "--status", "failed")
    )
    assert t == task_pb2.ListTasksRequest(
        operation_type=task_pb2.OPERATION_TYPE_VAULT_DELETE, status=task_pb2.TASK_STATUS_FAILED
    )
    tok = agent_cmd.build_enroll_token_request(
        parse("agent", "enroll-token", "--ttl", "600", "--description", "host a")
    )
    assert tok == agent_pb2.CreateEnrollmentTokenRequest(ttl_seconds=600, description="host a")
    lst = agent_cmd.build_list_request(parse("agent", "list", "--status", "offline"))
    assert lst.status == agent_pb2.AGENT_STATUS_OFFLINE


def test_protectable_list_filters() -> None:
    req = protectable_cmd.build_list_request(
        parse(
            "protectable",
            "list",
            "--type",
            "disk",
            "--protection",
            "unprotected",
            "--status",
            "unreachable",
        )
    )
    assert (req.type, req.protection, req.status) == (
        common_pb2.OBJECT_TYPE_DISK,
        "unprotected",
        protectable_pb2.PROTECTABLE_STATUS_UNREACHABLE,
    )


def test_since_and_until_take_an_iso_time_or_an_age() -> None:
    import datetime as dt

    from cbr.clock import utc_now
    from cli._common import point_in_time

    assert point_in_time("2026-12-07T10:00:00Z") == dt.datetime(2026, 12, 7, 10, tzinfo=dt.UTC)
    assert point_in_time("2026-12-07T10:00:00") == dt.datetime(2026, 12, 7, 10, tzinfo=dt.UTC)
    parsed = point_in_time("2h")
    age = utc_now() - parsed
    assert dt.timedelta(hours=2) <= age < dt.timedelta(hours=2, minutes=5)
    with pytest.raises(argparse.ArgumentTypeError, match="not a time"):
        point_in_time("yesterday")
