"""What an agent's series say after the commands it ran."""

from __future__ import annotations

import pytest

from agent import metrics
from cbr.v1 import agent_pb2


def _get(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def _backup(scanned: int, new: int, sent: int, *methods: str) -> agent_pb2.BackupResult:
    result = agent_pb2.BackupResult(bytes_scanned=scanned, bytes_new=new, bytes_sent=sent)
    for method in methods:
        result.backups.add(backup_id="b", change_detection=method)
    return result


def test_a_backup_counts_its_method_bytes_and_dedup_ratio() -> None:
    before = {name: _get(name) for name in ("cbr_agent_backup_read_bytes_total",
                                            "cbr_agent_backup_new_bytes_total",
                                            "cbr_agent_backup_stored_bytes_total")}
    journal = _get("cbr_agent_backup_change_detection_total", method="journal")
    cbt = _get("cbr_agent_backup_change_detection_total", method="cbt")
    ok = _get("cbr_agent_commands_total", action="backup", outcome="success")
    command = agent_pb2.BackupCommand(resource_name="share")
    metrics.command_ended("backup", True, command, _backup(1000, 250, 100, "journal"))
    metrics.command_ended("backup", True, command, _backup(4000, 1000, 400, "cbt", "cbt"))
    assert _get("cbr_agent_backup_change_detection_total", method="journal") == journal + 1
    assert _get("cbr_agent_backup_change_detection_total", method="cbt") == cbt + 2
    assert _get("cbr_agent_backup_read_bytes_total") == \
        before["cbr_agent_backup_read_bytes_total"] + 5000
    assert _get("cbr_agent_backup_new_bytes_total") == \
        before["cbr_agent_backup_new_bytes_total"] + 1250
    assert _get("cbr_agent_backup_stored_bytes_total") == \
        before["cbr_agent_backup_stored_bytes_total"] + 500
    assert _get("cbr_agent_last_backup_dedup_ratio", resource="share") == pytest.approx(0.75)
    assert _get("cbr_agent_commands_total", action="backup", outcome="success") == ok + 2


def test_a_backup_that_read_nothing_has_ratio_0_and_a_failure_counts_no_bytes() -> None:
    command = agent_pb2.BackupCommand(resource_name="empty")
    metrics.command_ended("backup", True, command, _backup(0, 0, 0))
    assert _get("cbr_agent_last_backup_dedup_ratio", resource="empty") == 0.0
    read = _get("cbr_agent_backup_read_bytes_total")
    failed = _get("cbr_agent_commands_total", action="backup", outcome="failed")
    metrics.command_ended("backup", False, command, None)
    assert _get("cbr_agent_backup_read_bytes_total") == read
    assert _get("cbr_agent_commands_total", action="backup", outcome="failed") == failed + 1


def test_every_action_is_counted_from_the_start_and_unknown_ones_are_folded() -> None:
    for action in ("backup", "restore", "replicate", "import", "sync"):
        assert metrics.REGISTRY.get_sample_value(
            "cbr_agent_commands_total", {"action": action, "outcome": "failed"}) is not None
    unknown = _get("cbr_agent_commands_total", action="unknown", outcome="failed")
    metrics.command_ended("from-a-newer-controller", False, None, None)
    assert _get("cbr_agent_commands_total", action="unknown", outcome="failed") == unknown + 1
