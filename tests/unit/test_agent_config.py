"""The agent's TOML config: what is accepted, and the message for each mistake."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from agent import config

GOOD = """
[agent]
name = "host-1"
controller = "127.0.0.1:7400"
state_dir = "state"
[[servers]]
name = "web-1"
tags = { env = "prod" }
  [[servers.disks]]
  name = "system"
  path = "/images/web1-sys.img"
  system = true
  [[servers.disks]]
  name = "data"
  path = "/images/web1-data.img"
[[disks]]
name = "vol-1"
path = "/images/vol1.img"
[[file_systems]]
name = "share"
path = "/srv/share"
"""


def _parse(text: str) -> config.AgentConfig:
    return config.parse(tomllib.loads(text), source="t.toml", base_dir=Path("/etc/cbr"))


def test_a_full_config_loads_with_stable_local_ids(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(GOOD)
    cfg = config.load(path)
    assert cfg.state_dir == tmp_path / "state"
    assert cfg.role == "host"
    server = cfg.servers[0]
    assert server.local_id == "server:web-1"
    assert server.disk_id(server.disks[0]) == "server:web-1/disk:system"
    assert server.tags == {"env": "prod"}
    assert cfg.disks[0].local_id == "disk:vol-1"
    assert cfg.file_systems[0].local_id == "turbo:share"
    assert cfg.file_systems[0].change_journal


def test_a_file_system_can_do_without_the_change_journal() -> None:
    cfg = _parse(GOOD.replace('path = "/srv/share"', 'path = "/srv/share"\nchange_journal = false'))
    assert not cfg.file_systems[0].change_journal
    with pytest.raises(config.ConfigError, match="change_journal must be true or false"):
        _parse(GOOD.replace('path = "/srv/share"', 'path = "/srv/share"\nchange_journal = 1'))


@pytest.mark.parametrize(("change", "message"), [
    (("system = true", "system = false"), "exactly one disk must have system = true; found 0"),
    (('path = "/images/web1-data.img"', 'path = "/images/web1-data.img"\n  system = true'),
     "found 2"),
    (('path = "/srv/share"', 'path = "srv/share"'), "must be absolute"),
    (('name = "vol-1"', 'name = "web/1"'), "must not contain"),
    (('name = "data"', 'name = "system"'), "'system' is used twice"),
    (('path = "/images/vol1.img"', 'path = "/images/web1-sys.img"'), "configured twice"),
    (('state_dir = "state"', 'state_dir = "state"\nrole = "nope"'), "role must be one of"),
    (('state_dir = "state"', 'state_dir = "state"\nstat_dir = "x"'), "unknown key(s) stat_dir"),
    (('state_dir = "state"', ""), "'state_dir' is required"),
])
def test_mistakes_are_refused_with_a_clear_message(change: tuple[str, str], message: str) -> None:
    with pytest.raises(config.ConfigError) as info:
        _parse(GOOD.replace(*change, 1))
    assert message in str(info.value)


def test_duplicate_names_of_one_kind_are_refused() -> None:
    text = GOOD + '\n[[file_systems]]\nname = "share"\npath = "/srv/other"\n'
    with pytest.raises(config.ConfigError, match="'share' is used twice"):
        _parse(text)


def test_missing_or_broken_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match="no such configuration file"):
        config.load(tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_text("[agent\n")
    with pytest.raises(config.ConfigError, match="not valid TOML"):
        config.load(tmp_path / "bad.toml")
