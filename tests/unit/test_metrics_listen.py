"""The /metrics listener's setting: HOST:PORT, off, port 0, and a taken port."""

from __future__ import annotations

import logging
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter

from agent import config as agent_config
from agent.main import parser as agent_parser
from cbr.metrics import MetricsServer, parse_listen
from controller import config as controller_config


@pytest.mark.parametrize(("text", "parsed"), [
    ("off", None), ("OFF", None), (" off ", None), ("127.0.0.1:0", ("127.0.0.1", 0)),
    ("0.0.0.0:9464", ("0.0.0.0", 9464)), ("[::1]:9465", ("::1", 9465)),
    ("localhost:80", ("localhost", 80))])
def test_the_setting_is_host_and_port_or_off(text: str, parsed: tuple[str, int] | None) -> None:
    assert parse_listen(text) == parsed


@pytest.mark.parametrize("text", ["", "9464", ":9464", "host:", "host:http", "host:70000",
                                  "on"])
def test_anything_else_is_refused_with_the_expected_form(text: str) -> None:
    with pytest.raises(ValueError, match=r"is not HOST:PORT .* or 'off'"):
        parse_listen(text)


def test_the_controller_listens_on_loopback_by_default_and_takes_flag_and_env() -> None:
    assert controller_config.load([], environ={}).metrics_listen == "127.0.0.1:9464"
    assert controller_config.load(["--metrics-listen", "off"], environ={}).metrics_listen == "off"
    assert controller_config.load([], environ={"CBR_METRICS_LISTEN": "127.0.0.1:0"}) \
        .metrics_listen == "127.0.0.1:0"


def test_a_bad_controller_setting_stops_it_naming_the_setting(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        controller_config.load(["--metrics-listen", "9464"], environ={})
    assert exc.value.code == 2
    assert "bad value for metrics_listen" in capsys.readouterr().err


def test_the_agent_listens_on_loopback_by_default_and_the_flag_overrides(tmp_path: Path) -> None:
    parsed = agent_config.parse({"agent": {"state_dir": str(tmp_path)}})
    assert parsed.metrics_listen == "127.0.0.1:9465"
    off = agent_config.parse({"agent": {"state_dir": str(tmp_path), "metrics_listen": "off"}})
    assert off.metrics_listen == "off"
    args = agent_parser().parse_args(["--metrics-listen", "127.0.0.1:0", "run"])
    assert args.metrics_listen == "127.0.0.1:0"


def test_a_bad_agent_setting_is_refused_where_it_is(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(agent_config.ConfigError, match=r"\[agent\]: metrics_listen: "):
        agent_config.parse({"agent": {"state_dir": str(tmp_path), "metrics_listen": "x"}})
    with pytest.raises(SystemExit):
        agent_parser().parse_args(["--metrics-listen", "nowhere", "run"])
    assert "--metrics-listen" in capsys.readouterr().err


def _registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("cbr_test_things", "Things.", registry=registry).inc(3)
    return registry


def test_port_0_picks_a_free_port_and_logs_where(caplog: pytest.LogCaptureFixture) -> None:
    server = MetricsServer(_registry(), logging.getLogger("cbr.test"))
    with caplog.at_level(logging.INFO, "cbr.test"):
        port = server.start("127.0.0.1:0", "metrics_listen")
    try:
        assert port > 0
        assert server.url == f"http://127.0.0.1:{port}/metrics"
        assert f"metrics on http://127.0.0.1:{port}/metrics" in caplog.text
        with urllib.request.urlopen(server.url, timeout=10) as answer:
            assert "cbr_test_things_total 3.0" in answer.read().decode()
    finally:
        server.stop()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_off_starts_nothing(caplog: pytest.LogCaptureFixture) -> None:
    server = MetricsServer(_registry(), logging.getLogger("cbr.test"))
    with caplog.at_level(logging.INFO, "cbr.test"):
        assert server.start("off", "metrics_listen") == 0
    assert server.url == ""
    assert "metrics off (metrics_listen)" in caplog.text
    server.stop()


def test_a_taken_port_is_an_error_naming_the_setting() -> None:
    first = MetricsServer(_registry(), logging.getLogger("cbr.test"))
    port = first.start("127.0.0.1:0", "metrics_listen")
    try:
        second = MetricsServer(_registry(), logging.getLogger("cbr.test"))
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port} for metrics "
                                          r"\(--metrics-listen\): the port is in use.*"
                                          "choose another --metrics-listen"):
            second.start(f"127.0.0.1:{port}", "--metrics-listen")
    finally:
        first.stop()
