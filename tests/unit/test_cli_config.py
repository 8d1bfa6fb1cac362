"""Where the CLI's endpoint and keys come from, and how `cbr configure` writes them."""

from __future__ import annotations

import json
import stat
import tomllib
from pathlib import Path

import pytest

from cli._common import load_profiles, resolve_settings, save_profiles
from cli.main import build_parser, main


@pytest.fixture(autouse=True)
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("CBR_ENDPOINT", "CBR_ACCESS_KEY", "CBR_SECRET_KEY", "CBR_PROFILE", "CBR_CA_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CBR_CONFIG_DIR", str(tmp_path))
    # Not a terminal: configure must never wait for input in a test.
    monkeypatch.setattr("sys.stdin.isatty", lambda: False, raising=False)
    return tmp_path


def write_profiles(config_dir: Path, profiles: dict[str, dict[str, str]]) -> None:
    save_profiles(config_dir / "config.toml", profiles)


def test_flags_win_over_environment_which_wins_over_the_profile(config_dir: Path) -> None:
    write_profiles(
        config_dir,
        {"default": {"endpoint": "file:1", "access_key": "AK-file", "secret_key": "SK-file"}},
    )
    env = {
        "CBR_CONFIG_DIR": str(config_dir),
        "CBR_ACCESS_KEY": "AK-env",
        "CBR_SECRET_KEY": "SK-env",
    }
    args = build_parser().parse_args(["--secret-key", "SK-flag", "vault", "list"])
    s = resolve_settings(args, env)
    assert (s.endpoint, s.access_key, s.secret_key) == ("file:1", "AK-env", "SK-flag")
    assert s.sources == {
        "endpoint": "profile default",
        "access_key": "CBR_ACCESS_KEY",
        "secret_key": "flag",
    }


def test_profile_is_chosen_by_flag_then_environment(config_dir: Path) -> None:
    write_profiles(
        config_dir,
        {
            "default": {"endpoint": "d:1", "access_key": "a", "secret_key": "s"},
            "a": {"endpoint": "a:1", "access_key": "a", "secret_key": "s"},
            "b": {"endpoint": "b:1", "access_key": "b", "secret_key": "s"},
        },
    )
    env = {"CBR_CONFIG_DIR": str(config_dir), "CBR_PROFILE": "a"}
    parser = build_parser()
    assert resolve_settings(parser.parse_args(["vault", "list"]), env).endpoint == "a:1"
    by_flag = parser.parse_args(["vault", "list", "--profile", "b"])
    assert resolve_settings(by_flag, env).endpoint == "b:1"
    assert (
        resolve_settings(
            parser.parse_args(["cloud", "show"]), {"CBR_CONFIG_DIR": str(config_dir)}
        ).endpoint
        == "d:1"
    )


def test_missing_keys_fail_with_one_line_saying_how_to_configure(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["vault", "list"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("cbr: error: ")
    assert "cbr configure" in err


def test_an_unknown_named_profile_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--profile", "nope", "vault", "list"]) == 2
    assert "profile 'nope'" in capsys.readouterr().err


def test_configure_imports_admin_credentials_and_flags_override(
    config_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    creds = tmp_path / "admin-credentials.json"
    creds.write_text(
        json.dumps(
            {
                "access_key": "AK-admin",
                "secret_key": "SK-admin",
                "account_id": "acct-1",
                "endpoint": "0.0.0.0:50051",
            }
        )
    )
    code = main(["configure", "--import-admin-credentials", str(creds), "--endpoint", "ctl:50051"])
    assert code == 0, capsys.readouterr().err
    path = config_dir / "config.toml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with path.open("rb") as f:
        doc = tomllib.load(f)
    assert doc["profiles"]["default"] == {
        "endpoint": "ctl:50051",
        "access_key": "AK-admin",
        "secret_key": "SK-admin",
        "account_id": "acct-1",
    }
    assert "saved profile 'default'" in capsys.readouterr().out


def test_configure_keeps_other_profiles_and_stored_values(config_dir: Path) -> None:
    write_profiles(
        config_dir,
        {
            "default": {"endpoint": "d:1", "access_key": "a", "secret_key": "s"},
            "other": {"endpoint": "o:1", "access_key": "oa", "secret_key": "os"},
        },
    )
    assert main(["configure", "--access-key", "a2"]) == 0
    profiles = load_profiles(config_dir / "config.toml")
    assert profiles["default"] == {"endpoint": "d:1", "access_key": "a2", "secret_key": "s"}
    assert profiles["other"]["access_key"] == "oa"


def test_configure_without_a_terminal_and_missing_values_fails(
    config_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["configure", "--profile", "new", "--endpoint", "h:1"]) == 2
    assert "access_key, secret_key" in capsys.readouterr().err
    assert not (config_dir / "config.toml").exists()


def test_configure_asks_on_a_terminal_with_getpass_for_the_secret(
    config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin.isatty", lambda: True, raising=False)
    answers = iter(["h:1", "AK"])
    monkeypatch.setattr("builtins.input", lambda _prompt: next(answers))
    monkeypatch.setattr("getpass.getpass", lambda _prompt: "SK")
    assert main(["configure", "--profile", "t"]) == 0
    assert load_profiles(config_dir / "config.toml")["t"] == {
        "endpoint": "h:1",
        "access_key": "AK",
        "secret_key": "SK",
    }


def test_profile_values_with_quotes_and_odd_names_round_trip(config_dir: Path) -> None:
    profiles = {"my prod": {"endpoint": 'h"1\\x', "access_key": "a", "secret_key": "s=\n"}}
    write_profiles(config_dir, profiles)
    assert load_profiles(config_dir / "config.toml") == profiles


def test_configure_refuses_a_broken_admin_credentials_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "admin.json"
    bad.write_text("{not json")
    assert main(["configure", "--import-admin-credentials", str(bad)]) == 2
    assert "cannot read admin credentials" in capsys.readouterr().err
