"""One log format for controller and agents, readable by people or shippers."""

from __future__ import annotations

import json
import logging

import pytest

from cbr import logs


def _emit(capsys: pytest.CaptureFixture[str], fmt: str) -> str:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logs.configure("cbr-test", "INFO", fmt)
        logging.getLogger("cbr.controller.hub").info("agent %s connected", "a-1")
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("cbr.agent").exception("task t-1 failed")
        logging.getLogger("cbr.agent").debug("not shown at INFO")
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    return capsys.readouterr().err


def test_text_lines_name_their_logger(capsys: pytest.CaptureFixture[str]) -> None:
    err = _emit(capsys, "text")
    assert " INFO cbr.controller.hub: agent a-1 connected" in err
    assert " ERROR cbr.agent: task t-1 failed" in err and "ValueError: boom" in err
    assert "not shown" not in err


def test_json_lines_are_one_object_each(capsys: pytest.CaptureFixture[str]) -> None:
    lines = [json.loads(line) for line in _emit(capsys, "json").splitlines()]
    assert [(d["level"], d["logger"], d["message"]) for d in lines] == [
        ("INFO", "cbr.controller.hub", "agent a-1 connected"),
        ("ERROR", "cbr.agent", "task t-1 failed")]
    assert all(d["program"] == "cbr-test" and d["time"].endswith("Z") for d in lines)
    assert "ValueError: boom" in lines[1]["exception"]


def test_an_unknown_format_is_refused_naming_the_choices() -> None:
    with pytest.raises(ValueError, match="text, json"):
        logs.log_format("xml")


def test_native_lines_on_fd_2_are_logged_in_the_same_format() -> None:
    """What gRPC's C core writes to file descriptor 2 comes out as a JSON
    line of logger grpc.core, at the level its prefix names."""
    import subprocess
    import sys

    script = (
        "import logging, os\n"
        "from cbr import logs\n"
        "logs.configure('cbr-test', 'INFO', 'json')\n"
        "pump = logs.route_native_stderr()\n"
        "os.write(2, b'E1207 10:00:00.123456   4242 ev_poll_posix.cc:593] "
        "socket failed\\n')\n"
        "os.write(2, b'something else\\n')\n"
        "logging.getLogger('cbr.agent').info('python line')\n"
        "os.close(2)\n"  # the pipe's only writer: the pump reads to its end
        "pump.join(60)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60, check=True)
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    assert {(d["logger"], d["level"], d["message"]) for d in lines} == {
        ("grpc.core", "ERROR", "socket failed (ev_poll_posix.cc:593)"),
        ("stderr", "WARNING", "something else"),
        ("cbr.agent", "INFO", "python line"),
    }
