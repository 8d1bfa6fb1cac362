"""`cbr notification` and `cbr event` against an in-process controller."""

from __future__ import annotations

import json
import threading

import pytest

from cli.main import main
from tests.support.inproc import RunningController
from tests.support.webhook import verify, webhook_receiver


def _cli(rc: RunningController, *argv: str) -> int:
    return main(["--endpoint", rc.endpoint, "--access-key", rc.access_key,
                 "--secret-key", rc.secret_key, "--insecure", *argv])


def test_create_test_and_list_a_webhook_target_from_the_command_line(
        local_targets_api: RunningController, capsys: pytest.CaptureFixture[str]) -> None:
    sqlite_api = local_targets_api
    notifier = sqlite_api.app.notifier
    assert notifier is not None
    stop = threading.Event()

    def send_when_woken() -> None:  # the controller process runs the notifier's thread
        while not stop.is_set():
            notifier.send_due()
            stop.wait(0.1)

    sender = threading.Thread(target=send_when_woken, daemon=True)
    sender.start()
    try:
        with webhook_receiver() as receiver:
            assert _cli(sqlite_api, "notification", "target", "create", "--name", "ops",
                        "--webhook-url", receiver.url, "--event-type", "backup.failed",
                        "--output", "json") == 0
            made = json.loads(capsys.readouterr().out)
            target_id, secret = made["target"]["id"], made["signing_secret"]
            assert made["target"]["event_types"] == ["backup.failed"]

            # A busy machine can take longer than the CLI's default wait (15 s)
            # to run the sender, the receiver and the CLI in this one process.
            assert _cli(sqlite_api, "notification", "target", "test", target_id,
                        "--wait", "120", "--output", "json") == 0
            delivery = json.loads(capsys.readouterr().out)
            assert delivery["status"] == "delivered"
            [request] = receiver.wait_for(1)
            assert verify(secret, request.headers["X-CBR-Signature"], request.body,
                          sqlite_api.app.clock.time())
    finally:
        stop.set()
        sender.join(5)

    assert _cli(sqlite_api, "notification", "target", "list") == 0
    table = capsys.readouterr().out
    assert "ops" in table and receiver.url in table and secret not in table
    assert _cli(sqlite_api, "notification", "deliveries", "--status", "delivered",
                "--output", "json") == 0
    [listed] = json.loads(capsys.readouterr().out)
    assert listed["id"] == delivery["id"] and listed["last_http_status"] == 200
    assert _cli(sqlite_api, "event", "list", "--since", "1h", "--output", "json") == 0
    [event] = json.loads(capsys.readouterr().out)
    assert event["event_type"] == "notification.test"
    assert _cli(sqlite_api, "notification", "target", "show", target_id) == 0
    assert secret not in capsys.readouterr().out
    assert _cli(sqlite_api, "notification", "target", "delete", target_id) == 0
    capsys.readouterr()
    assert _cli(sqlite_api, "notification", "target", "show", target_id) == 1
    assert "NOT_FOUND" in capsys.readouterr().err


def test_a_plain_http_webhook_to_another_host_is_refused_with_its_code(
        sqlite_api: RunningController, capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli(sqlite_api, "notification", "target", "create", "--name", "x",
                "--webhook-url", "http://hooks.example/x") == 1
    err = capsys.readouterr().err
    assert "INVALID_ARGUMENT" in err and "BackupService.9900" in err and "https" in err
