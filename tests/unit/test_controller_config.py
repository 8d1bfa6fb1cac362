"""Controller settings come from flags, then environment, then TOML, then defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller import config


def test_flags_beat_environment_which_beats_the_file(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text('listen = "127.0.0.1:1"\ncloud_name = "from-file"\nregion = "file-r"\n'
                    'regions = ["file-r", "other:noreplication"]\n')
    cfg = config.load(["--config", str(toml), "--listen", "127.0.0.1:3"],
                      environ={"CBR_LISTEN": "127.0.0.1:2", "CBR_CLOUD_NAME": "from-env"})
    assert cfg.listen == "127.0.0.1:3"
    assert cfg.cloud_name == "from-env"
    assert cfg.region == "file-r"
    assert cfg.all_regions == (("file-r", True), ("other", False))
    assert (cfg.sources["listen"], cfg.sources["cloud_name"], cfg.sources["region"],
            cfg.sources["log_level"]) == ("flag", "env", "file", "default")


def test_the_config_file_can_come_from_the_environment(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text("heartbeat_interval = 2.5\n")
    cfg = config.load([], environ={"CBR_CONFIG": str(toml)})
    assert cfg.heartbeat_interval == 2.5


def test_unknown_settings_in_the_file_are_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text('lisen = "127.0.0.1:1"\n')
    with pytest.raises(SystemExit):
        config.load(["--config", str(toml)], environ={})
    err = capsys.readouterr().err
    assert "unknown settings" in err and "lisen" in err


def test_a_retired_setting_in_the_file_is_ignored_with_a_warning_naming_its_successor(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text("scheduler_grace = 600\nheartbeat_interval = 2.5\n")
    cfg = config.load(["--config", str(toml)], environ={})
    assert cfg.heartbeat_interval == 2.5
    err = capsys.readouterr().err
    assert "scheduler_grace is no longer used" in err and "start_window_minutes" in err


def test_an_import_lifetime_must_be_positive(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert config.load(["--data-dir", str(tmp_path)], environ={}).import_ttl == 24.0
    assert config.load(["--data-dir", str(tmp_path)],
                       environ={"CBR_IMPORT_TTL": "96"}).import_ttl == 96.0
    with pytest.raises(SystemExit):
        config.load(["--data-dir", str(tmp_path), "--import-ttl", "0"], environ={})
    assert "import_ttl" in capsys.readouterr().err


def test_default_database_is_sqlite_in_the_data_dir(tmp_path: Path) -> None:
    cfg = config.load(["--data-dir", str(tmp_path)], environ={})
    assert cfg.effective_database_url == f"sqlite:///{tmp_path.resolve()}/controller.db"


def test_help_documents_every_setting(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        config.load(["--help"], environ={})
    text = capsys.readouterr().out
    for setting in config.SETTINGS:
        assert setting.flag in text and setting.env in text


@pytest.mark.parametrize("content", [None, b"listen = [unclosed", b"no_such_setting = 1"],
                         ids=["missing", "bad-toml", "unknown-setting"])
def test_a_bad_config_file_stops_with_one_clear_line_and_status_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes | None) -> None:
    """Issue 20: these printed a Python traceback."""
    path = tmp_path / "controller.toml"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(SystemExit) as stopped:
        config.load(["--config", str(path)], environ={})
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("cbr-controller: ")
    assert str(path) in err
