"""The CLI against a small real gRPC server on port 0 (no controller exists here):
JSON output, paging, error lines and exit codes, and watching tasks."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from cbr import errors, signing
from cbr.v1 import task_pb2, task_pb2_grpc, vault_pb2, vault_pb2_grpc
from cli.main import main

VAULTS = [vault_pb2.Vault(id=f"v{i}", name=f"vault-{i}", size_gb=10) for i in range(5)]


def abort_with_cbr_error(context: grpc.ServicerContext, err: errors.CbrError) -> None:
    info = error_details_pb2.ErrorInfo(reason=err.code, domain=errors.ERROR_DOMAIN)
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(code=err.status.value[0], message=err.message, details=[detail])
    context.abort_with_status(rpc_status.to_status(status))


class Vaults(vault_pb2_grpc.VaultServiceServicer):
    def __init__(self) -> None:
        self.list_calls: list[vault_pb2.ListVaultsRequest] = []
        self.access_keys: list[str] = []

    def ListVaults(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.list_calls.append(request)
        self.access_keys.append(dict(context.invocation_metadata())[signing.HEADER_ACCESS_KEY])
        start = int(request.page_token or 0)
        size = request.page_size or 2
        page = VAULTS[start : start + size]
        nxt = str(start + size) if start + size < len(VAULTS) else ""
        return vault_pb2.ListVaultsResponse(
            vaults=page, next_page_token=nxt, total_count=len(VAULTS)
        )

    def GetVault(self, request: Any, context: grpc.ServicerContext) -> Any:
        for v in VAULTS:
            if v.id == request.vault_id:
                return vault_pb2.GetVaultResponse(vault=v)
        abort_with_cbr_error(context, errors.VaultNotFound(f"vault {request.vault_id}"))
        raise AssertionError("unreachable")

    def DeleteVault(self, request: Any, context: grpc.ServicerContext) -> Any:
        return vault_pb2.DeleteVaultResponse(task_id=f"task-of-{request.vault_id}")


def _task(task_id: str, status: int, progress: int, **kw: Any) -> task_pb2.Task:
    return task_pb2.Task(
        id=task_id,
        operation_type=task_pb2.OPERATION_TYPE_VAULT_DELETE,
        status=status,  # type: ignore[arg-type]
        progress=progress,
        **kw,
    )


TASK_UPDATES = {
    "task-ok": [
        _task("task-ok", task_pb2.TASK_STATUS_RUNNING, 10),
        _task("task-ok", task_pb2.TASK_STATUS_RUNNING, 60),
        _task("task-ok", task_pb2.TASK_STATUS_SUCCESS, 100),
    ],
    "task-skip": [_task("task-skip", task_pb2.TASK_STATUS_SKIPPED, 0)],
    "task-bad": [
        _task("task-bad", task_pb2.TASK_STATUS_RUNNING, 30),
        _task(
            "task-bad",
            task_pb2.TASK_STATUS_FAILED,
            30,
            error_info=task_pb2.TaskError(
                code="BackupService.0001", message="No resource is available for backup."
            ),
        ),
    ],
    # The stream drops before the end; the final state is read with GetTask.
    "task-of-v1": [_task("task-of-v1", task_pb2.TASK_STATUS_RUNNING, 50)],
}


class Tasks(task_pb2_grpc.TaskServiceServicer):
    def WatchTask(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        for task in TASK_UPDATES[request.task_id]:
            yield task_pb2.WatchTaskResponse(task=task)

    def GetTask(self, request: Any, context: grpc.ServicerContext) -> Any:
        if request.task_id == "task-of-v1":
            return task_pb2.GetTaskResponse(
                task=_task("task-of-v1", task_pb2.TASK_STATUS_SUCCESS, 100)
            )
        return task_pb2.GetTaskResponse(task=TASK_UPDATES[request.task_id][-1])


@pytest.fixture(autouse=True)
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CBR_ENDPOINT", "CBR_ACCESS_KEY", "CBR_SECRET_KEY", "CBR_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CBR_CONFIG_DIR", str(tmp_path))


@pytest.fixture
def server() -> Iterator[tuple[str, Vaults]]:
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    vaults = Vaults()
    vault_pb2_grpc.add_VaultServiceServicer_to_server(vaults, srv)
    task_pb2_grpc.add_TaskServiceServicer_to_server(Tasks(), srv)
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    try:
        yield f"127.0.0.1:{port}", vaults
    finally:
        srv.stop(0)


def cli(endpoint: str, *argv: str) -> int:
    return main(["--endpoint", endpoint, "--access-key", "AK", "--secret-key", "SK", "--insecure",
                 *argv])


def test_show_as_json_prints_the_message_with_api_field_names(
    server: tuple[str, Vaults], capsys: pytest.CaptureFixture[str]
) -> None:
    endpoint, _ = server
    assert cli(endpoint, "--output", "json", "vault", "show", "v3") == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["id"] == "v3"
    assert doc["size_gb"] == "10"  # int64 is a string in proto JSON
    assert doc["object_type"] == "OBJECT_TYPE_UNSPECIFIED"
    assert doc["auto_expand"] is False


def test_list_shows_the_first_page_and_says_how_to_get_more(
    server: tuple[str, Vaults], capsys: pytest.CaptureFixture[str]
) -> None:
    endpoint, vaults = server
    assert cli(endpoint, "vault", "list", "-o", "json") == 0
    out, err = capsys.readouterr()
    assert [v["id"] for v in json.loads(out)] == ["v0", "v1"]
    assert "showing 2 of 5" in err
    assert "--page-token 2" in err
    assert len(vaults.list_calls) == 1


def test_all_follows_page_tokens(
    server: tuple[str, Vaults], capsys: pytest.CaptureFixture[str]
) -> None:
    endpoint, vaults = server
    assert cli(endpoint, "vault", "list", "--all", "--output", "json") == 0
    out, err = capsys.readouterr()
    assert [v["id"] for v in json.loads(out)] == [f"v{i}" for i in range(5)]
    assert [c.page_token for c in vaults.list_calls] == ["", "2", "4"]
    assert err == ""


def test_table_output_lists_ids_and_names(
    server: tuple[str, Vaults], capsys: pytest.CaptureFixture[str]
) -> None:
    endpoint, _ = server
    assert cli(endpoint, "vault", "list", "--page-size", "5") == 0
    out = capsys.readouterr().out
    assert "ID" in out and "NAME" in out
    assert "vault-4" in out and "10 GB" in out


def test_calls_are_signed_with_the_key_from_the_flags_over_the_environment(
    server: tuple[str, Vaults], monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint, vaults = server
    monkeypatch.setenv("CBR_ACCESS_KEY", "AK-env")
    monkeypatch.setenv("CBR_SECRET_KEY", "SK-env")
    monkeypatch.setenv("CBR_ENDPOINT", endpoint)
    monkeypatch.setenv("CBR_INSECURE", "true")
    assert main(["vault", "list"]) == 0
    assert main(["vault", "list", "--access-key", "AK-flag"]) == 0
    assert vaults.access_keys == ["AK-env", "AK-flag"]


def test_a_refused_call_prints_one_line_with_status_and_cbr_code(
    server: tuple[str, Vaults], capsys: pytest.CaptureFixture[str]
) -> None:
    endpoint, _ = server
    assert cli(endpoint, "vault", "show", "missing") == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == "cbr: error: NOT_FOUND BackupService.6105: Vault Not Found. vault missing\n"


def test_an_unimplemented_service_is_an_error_not_a_traceback(
    server: tuple[str, Vaults], capsys: pytest.CaptureFixture[str]
) -> None:
    endpoint, _ = server
    assert cli(endpoint, "cloud", "show") == 1
    err = capsys.readouterr().err
    assert err.startswith("cbr: error: UNIMPLEMENTED")
    assert err.count("\n") == 1


def test_an_unreachable_endpoint_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, not listening: connections are refused
    code = cli(f"127.0.0.1:{port}", "--timeout", "5", "vault", "list")
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith(f"cbr: error: the controller at 127.0.0.1:{port} could not be reached")
    assert err.count("\n") == 1


@pytest.mark.parametrize(("task_id", "code"), [("task-ok", 0), ("task-skip", 0), ("task-bad", 1)])
def test_watch_exits_by_the_final_status(
    server: tuple[str, Vaults], capsys: pytest.CaptureFixture[str], task_id: str, code: int
) -> None:
    endpoint, _ = server
    assert cli(endpoint, "task", "watch", task_id) == code
    out, err = capsys.readouterr()
    assert task_id in out
    if code:
        assert (
            "cbr: error: task task-bad failed: BackupService.0001: "
            "No resource is available for backup." in err
        )


def test_watch_as_json_prints_every_update_as_a_line(
    server: tuple[str, Vaults], capsys: pytest.CaptureFixture[str]
) -> None:
    endpoint, _ = server
    assert cli(endpoint, "task", "watch", "task-ok", "--output", "json") == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["progress"] for line in lines] == [10, 60, 100]
    assert json.loads(lines[-1])["status"] == "TASK_STATUS_SUCCESS"


def test_delete_with_wait_follows_the_task_even_when_the_stream_drops(
    server: tuple[str, Vaults], capsys: pytest.CaptureFixture[str]
) -> None:
    endpoint, _ = server
    assert cli(endpoint, "-o", "json", "vault", "delete", "v1", "--wait") == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0] == {"task_id": "task-of-v1"}
    assert [(t["status"], t["progress"]) for t in lines[1:]] == [
        ("TASK_STATUS_RUNNING", 50),
        ("TASK_STATUS_SUCCESS", 100),
    ]


def test_delete_without_wait_prints_the_task_id(
    server: tuple[str, Vaults], capsys: pytest.CaptureFixture[str]
) -> None:
    endpoint, _ = server
    assert cli(endpoint, "vault", "delete", "v2") == 0
    assert "task task-of-v2" in capsys.readouterr().out


def test_tables_show_names_as_they_are_keep_ids_whole_and_pad_nothing() -> None:
    """Issue 20: "cbr:cloud:get" showed as a cloud emoji, a name's [markup]
    vanished, UUIDs were split over two lines and every line was padded."""
    import io

    from cbr.v1 import iam_pb2
    from cli._common import Output

    uuid = "277f5b64-84b4-4d9b-bfa6-e4e282f51c20"
    vaults = [vault_pb2.Vault(id=uuid, name="[red]ops[/red] :cloud: team " * 4, size_gb=1)]
    for width in ("60", "200"):
        buf = io.StringIO()
        out = Output("table", stdout=buf)
        out.console.width = int(width)  # as a narrow and a wide terminal
        out.items(vaults, [("ID", "id"), ("NAME", "name")])
        text = buf.getvalue()
        assert uuid in text and all(line == line.rstrip() for line in text.splitlines())
        assert "[red]ops[/red]" in text and ":cloud:" in text
    buf = io.StringIO()
    Output("table", stdout=buf).items(
        [iam_pb2.Grant(id="g1", action="cbr:cloud:get")], [("ACTION", "action")])
    assert "cbr:cloud:get" in buf.getvalue()


def test_waiting_shows_bytes_rate_and_time_left(monkeypatch: pytest.MonkeyPatch) -> None:
    from cli import task_cmd

    clock = iter([100.0, 110.0])
    monkeypatch.setattr(task_cmd.time, "monotonic", lambda: next(clock))
    rate = task_cmd._Rate()
    running = task_pb2.TASK_STATUS_RUNNING
    total = str(1000 * 1024 * 1024)
    first = rate.detail(task_pb2.Task(status=running, progress=10,
                                      extra_info={"bytes_total": total}))
    assert first == "100.0 MiB of 1000.0 MiB"
    second = rate.detail(task_pb2.Task(status=running, progress=20,
                                       extra_info={"bytes_total": total}))
    assert second == "200.0 MiB of 1000.0 MiB, 10.0 MiB/s, 1 min 20 s left"
    done = rate.detail(task_pb2.Task(status=task_pb2.TASK_STATUS_SUCCESS, progress=100,
                                     extra_info={"bytes_sent": str(5 * 1024 * 1024)}))
    assert done == "5.0 MiB sent"


def test_show_lists_what_it_says_is_below() -> None:
    """Issue 20: `policy show` and `replication capabilities` printed
    "5 (below)" and listed nothing."""
    import io

    from google.protobuf import timestamp_pb2

    from cbr.v1 import cloud_pb2, policy_pb2, replication_pb2
    from cli._common import Output

    buf = io.StringIO()
    Output("table", stdout=buf).show(replication_pb2.GetReplicationCapabilitiesResponse(
        cloud="cloud-b", regions=[cloud_pb2.Region(id="region-b1", replication_supported=True),
                                  cloud_pb2.Region(id="region-b2")]))
    text = buf.getvalue()
    assert "region-b1" in text and "region-b2" in text
    buf = io.StringIO()
    Output("table", stdout=buf).show(policy_pb2.Policy(id="p1", next_run_times=[
        timestamp_pb2.Timestamp(seconds=1_800_000_000 + 86400 * i) for i in range(3)]))
    text = buf.getvalue()
    assert "(below)" not in text and text.count("2027-01-1") == 3


def test_a_unique_prefix_of_an_id_stands_for_it(
    server: tuple[str, Vaults], capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 20: only whole ids were accepted."""
    import sys

    ids = ["5e0c1111-0000-4000-8000-000000000001", "5e0c2222-0000-4000-8000-000000000002",
           "7a7a0000-0000-4000-8000-000000000003"]
    monkeypatch.setattr(sys.modules[__name__], "VAULTS",
                        [vault_pb2.Vault(id=i, name=f"n{n}", size_gb=1)
                         for n, i in enumerate(ids)])
    endpoint, _ = server
    assert cli(endpoint, "--output", "json", "vault", "show", "7a7a") == 0
    assert json.loads(capsys.readouterr().out)["id"] == ids[2]
    assert cli(endpoint, "vault", "show", "5e0c") == 2  # two match: refused, naming both
    err = capsys.readouterr().err
    assert ids[0] in err and ids[1] in err and "type more" in err
    assert cli(endpoint, "vault", "show", "5e0c2") == 0
    assert cli(endpoint, "vault", "show", "beef") == 1  # none: the controller says not found
    assert "6105" in capsys.readouterr().err
