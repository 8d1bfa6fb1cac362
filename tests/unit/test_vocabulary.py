"""The controller's stored words and the wire's agree: each enum of
``controller.persistence.vocabulary`` names exactly the values of its
``cbr.v1`` enum (mapped by name in ``controller.api.convert``), both ways, and
the words the wire carries as plain strings are the ones its proto comment
names. A state added on one side only fails here."""

from __future__ import annotations

import enum
import re
from pathlib import Path

import pytest
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

from cbr.v1 import (
    agent_pb2,
    audit_pb2,
    backup_pb2,
    common_pb2,
    key_pb2,
    policy_pb2,
    protectable_pb2,
    replication_pb2,
    task_pb2,
    vault_pb2,
)
from controller.api import convert
from controller.persistence import vocabulary
from controller.persistence.vocabulary import (
    AgentRole,
    AuditResult,
    BackupStatus,
    CheckpointStatus,
    ConsistentLevel,
    DeliveryStatus,
    EventSeverity,
    EventType,
    ImageStatus,
    ImageType,
    KeyOrigin,
    KeyState,
    NotificationKind,
    ObjectType,
    OperationType,
    PolicyOperationType,
    PolicyRunStatus,
    ProtectableStatus,
    ProtectStatus,
    ProtectType,
    ReplicationStatus,
    SmtpSecurity,
    TaskStatus,
    VaultStatus,
)

PROTOS = Path(__file__).resolve().parents[2] / "protos" / "cbr" / "v1"

WIRE_ENUMS: dict[type[enum.StrEnum], EnumTypeWrapper] = {
    AgentRole: agent_pb2.AgentRole,
    ObjectType: common_pb2.ObjectType,
    ProtectableStatus: protectable_pb2.ProtectableStatus,
    VaultStatus: vault_pb2.VaultStatus,
    ProtectType: vault_pb2.ProtectType,
    ConsistentLevel: vault_pb2.ConsistentLevel,
    ProtectStatus: vault_pb2.ProtectStatus,
    PolicyOperationType: policy_pb2.PolicyOperationType,
    KeyState: key_pb2.KeyState,
    OperationType: task_pb2.OperationType,
    TaskStatus: task_pb2.TaskStatus,
    BackupStatus: backup_pb2.BackupStatus,
    ImageType: backup_pb2.ImageType,
    ImageStatus: backup_pb2.ImageStatus,
    ReplicationStatus: replication_pb2.ReplicationStatus,
    AuditResult: audit_pb2.AuditResult,
}

# Vocabularies the wire carries as a string field: (proto file, message, field).
WIRE_STRINGS: dict[type[enum.StrEnum], tuple[str, str, str]] = {
    CheckpointStatus: ("backup.proto", "Checkpoint", "status"),
    PolicyRunStatus: ("policy.proto", "PolicyRun", "status"),
    KeyOrigin: ("key.proto", "Key", "origin"),
    EventType: ("notification.proto", "Event", "event_type"),
    EventSeverity: ("notification.proto", "Event", "severity"),
    NotificationKind: ("notification.proto", "NotificationTarget", "kind"),
    DeliveryStatus: ("notification.proto", "NotificationDelivery", "status"),
    SmtpSecurity: ("notification.proto", "SmtpTarget", "security"),
}


def _vocabularies() -> set[type[enum.StrEnum]]:
    return {obj for obj in vars(vocabulary).values()
            if isinstance(obj, type) and issubclass(obj, enum.StrEnum)
            and obj is not enum.StrEnum}


def test_every_vocabulary_is_checked_against_the_wire() -> None:
    assert _vocabularies() == set(WIRE_ENUMS) | set(WIRE_STRINGS)


@pytest.mark.parametrize("words", list(WIRE_ENUMS), ids=lambda e: e.__name__)
def test_each_word_has_a_wire_number_and_each_number_a_word(
        words: type[enum.StrEnum]) -> None:
    wire = WIRE_ENUMS[words]
    assert {w.value for w in words} == set(convert.enum_choices(wire))
    for word in words:
        number = convert.enum_number(wire, word)
        assert number != 0
        assert convert.enum_name(wire, number) == word


def _field_comment(proto: str, message: str, field: str) -> str:
    """The comment lines right above ``field`` in ``message`` of a proto file."""
    text = (PROTOS / proto).read_text()
    body = re.search(rf"^message {message} {{\n(.*?)^}}", text, re.M | re.S)
    assert body is not None, f"no message {message} in {proto}"
    lines = body.group(1).splitlines()
    at = next(i for i, line in enumerate(lines)
              if re.match(rf"\s*string {field} = \d+;", line))
    comment = []
    for line in reversed(lines[:at]):
        if not line.strip().startswith("//"):
            break
        comment.insert(0, line.strip().removeprefix("//"))
    return " ".join(comment)


@pytest.mark.parametrize("words", list(WIRE_STRINGS), ids=lambda e: e.__name__)
def test_each_word_of_a_string_field_is_named_in_its_proto_comment(
        words: type[enum.StrEnum]) -> None:
    comment = _field_comment(*WIRE_STRINGS[words])
    named = set(re.findall(r"[a-z_]+(?:\.[a-z_]+)*", comment))
    assert {w.value for w in words} <= named, comment


def test_words_compare_equal_to_the_strings_stored_before_them() -> None:
    """Rows written as bare strings keep matching: equal, same hash, same text."""
    assert BackupStatus.AVAILABLE == "available"
    assert "available" in {BackupStatus.AVAILABLE}
    assert f"{TaskStatus.WAITING}" == str(TaskStatus.WAITING) == "waiting"
