"""The host decides where a restore may write, whatever the controller sent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent import restore_targets
from agent.config import AgentConfig, parse
from agent.restore_targets import TargetNotAllowed


def _config(tmp_path: Path, **agent: object) -> AgentConfig:
    disk = tmp_path / "disks" / "vol.img"
    disk.parent.mkdir(parents=True, exist_ok=True)
    disk.write_bytes(b"\0" * 4096)
    share = tmp_path / "share"
    share.mkdir(exist_ok=True)
    return parse({"agent": {"name": "h", "state_dir": str(tmp_path / "state"), **agent},
                  "disks": [{"name": "vol", "path": str(disk)}],
                  "file_systems": [{"name": "share", "path": str(share)}]})


def test_without_roots_restores_go_under_the_state_directory(tmp_path: Path) -> None:
    config = _config(tmp_path)
    assert config.effective_restore_roots == (str(tmp_path / "state" / "restores"),)
    restore_targets.ensure_default_root(config)
    root = tmp_path / "state" / "restores"
    assert root.is_dir() and (root.stat().st_mode & 0o777) == 0o700
    assert restore_targets.tree_target(config, f"{root}/a/b") == root / "a" / "b"
    with pytest.raises(TargetNotAllowed, match="restore roots"):
        restore_targets.tree_target(config, str(tmp_path / "elsewhere"))


def test_a_tree_restore_goes_under_a_root_or_into_a_protected_file_system(
        tmp_path: Path) -> None:
    roots = tmp_path / "roots"
    roots.mkdir()
    config = _config(tmp_path, restore_roots=[str(roots)])
    assert restore_targets.tree_target(config, str(roots / "x")) == roots / "x"
    assert restore_targets.tree_target(config, str(tmp_path / "share" / "sub")) \
        == tmp_path / "share" / "sub"
    for outside in ("/etc", "/", str(roots) + "x", f"{roots}/../etc", "relative"):
        with pytest.raises(restore_targets.UnsafeTarget):
            restore_targets.tree_target(config, outside)


def test_a_symlink_inside_a_root_does_not_lead_a_restore_out_of_it(tmp_path: Path) -> None:
    roots = tmp_path / "roots"
    roots.mkdir()
    (roots / "escape").symlink_to("/etc")
    config = _config(tmp_path, restore_roots=[str(roots)])
    with pytest.raises(TargetNotAllowed) as caught:
        restore_targets.tree_target(config, str(roots / "escape" / "cron.d"))
    assert caught.value.code == "BackupService.2004"
    with pytest.raises(TargetNotAllowed):
        restore_targets.disk_target(config, str(roots / "escape" / "x.img"))


def test_a_disk_restore_writes_an_image_file_or_a_disk_this_host_protects(
        tmp_path: Path) -> None:
    roots = tmp_path / "roots"
    roots.mkdir()
    config = _config(tmp_path, restore_roots=[str(roots)])
    assert restore_targets.disk_target(config, str(roots / "new.img")) == roots / "new.img"
    protected = tmp_path / "disks" / "vol.img"
    assert restore_targets.disk_target(config, str(protected)) == protected
    (roots / "dev").symlink_to("/dev/null")
    os.mkfifo(roots / "fifo")
    for target in ("/dev/null", str(roots / "dev"), str(roots / "fifo"),
                   str(tmp_path / "disks" / "other.img")):
        with pytest.raises(TargetNotAllowed):
            restore_targets.disk_target(config, target)


@pytest.mark.parametrize("roots", [["relative"], "/one", [""], [1]])
def test_bad_restore_roots_are_config_errors(tmp_path: Path, roots: object) -> None:
    from agent.config import ConfigError

    with pytest.raises(ConfigError, match="restore"):
        _config(tmp_path, restore_roots=roots)


def test_the_agent_state_is_closed_up_at_start(tmp_path: Path) -> None:
    from agent.state import IDENTITY_FILE, StateDir

    state = tmp_path / "state"
    (state / "journal").mkdir(parents=True)
    (state / "journal" / "t1.json").write_text("{}")
    (state / IDENTITY_FILE).write_text("{}")
    for path in (state, state / "journal", state / "journal" / "t1.json",
                 state / IDENTITY_FILE):
        path.chmod(0o755 if path.is_dir() else 0o644)
    StateDir(state).ensure()
    for path in (state, state / "journal", state / "journal" / "t1.json",
                 state / IDENTITY_FILE):
        assert path.stat().st_mode & 0o077 == 0, path


def test_refusals_of_a_restore_carry_their_own_codes_not_the_internal_one() -> None:
    from agent.commands.storage import failure
    from agent.dataplane import UnsafeTarget
    from agent.dataplane.tree import PathNotInBackup

    for exc, code in ((UnsafeTarget("a symlink where a directory should be"),
                       "BackupService.2005"),
                      (PathNotInBackup("/etc/nothing is not in the backup"),
                       "BackupService.2006"),
                      (TargetNotAllowed("/etc is outside"), "BackupService.2004")):
        outcome = failure(exc, "restore of backup b")
        assert (outcome.success, outcome.error_code) == (False, code)


def test_warnings_of_an_encrypted_vault_reach_the_controller_without_paths(
        caplog: pytest.LogCaptureFixture) -> None:
    from types import SimpleNamespace

    from agent.commands.storage import reported_warnings

    warnings = ["changed while read: /srv/secret/merger-plan.docx (stored as read, ...)",
                "vanished: /srv/secret/layoffs.xlsx", "socket /srv/secret/s not restored"]
    plain = SimpleNamespace(config=SimpleNamespace(encrypted=False))
    assert reported_warnings(plain, warnings, "backup b") == warnings  # type: ignore[arg-type]
    sealed = SimpleNamespace(config=SimpleNamespace(encrypted=True))
    with caplog.at_level("WARNING", logger="cbr.agent"):
        sent = reported_warnings(sealed, warnings, "backup b")  # type: ignore[arg-type]
    assert len(sent) == 3 and not any("/srv" in w or "merger" in w for w in sent)
    assert sent[0].startswith("changed while read: warning 1 of 3")
    assert sent[1].startswith("vanished: warning 2 of 3")
    assert "merger-plan.docx" in caplog.text  # the host's own log keeps the path


def test_a_failure_of_an_encrypted_vault_reaches_the_controller_without_paths() -> None:
    """Issue 19: a failed restore or backup carried the file it failed on in
    clear into the task's error message (database, ``cbr task show``)."""
    from agent.commands.storage import failure
    from agent.dataplane import UnsafeTarget
    from agent.dataplane.tree import PathNotInBackup
    from cbr.repo.errors import UnsafeName
    from cbr.storage import StorageUnavailable

    secret = [UnsafeTarget("hardlink /srv/secret/merger-plan.docx names no file"),
              UnsafeName("entry name 'merger/../..' could write outside the target"),
              PermissionError(13, "Permission denied", "/srv/secret/merger-plan.docx")]
    for exc in secret:
        plain = failure(exc, "restore of backup b")
        assert "merger" in plain.error_message  # a plain vault says it all
        sealed = failure(exc, "restore of backup b", encrypted=True)
        assert sealed.error_code == plain.error_code
        assert "merger" not in sealed.error_message and "/srv" not in sealed.error_message
        assert "agent's log" in sealed.error_message
    # What never names a file inside a backup is said in full.
    for exc in (StorageUnavailable("data/ab/abcd: connection reset"),
                PathNotInBackup("/etc/hosts is not in the backup")):
        sealed, plain = failure(exc, "w", encrypted=True), failure(exc, "w")
        assert (sealed.error_code, sealed.error_message) == \
            (plain.error_code, plain.error_message)
