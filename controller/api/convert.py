"""Between wire messages and domain values: enums, timestamps, resources.

Domain code speaks the reference's lower-case names, the values of the enums
in ``controller.persistence.vocabulary`` (``ObjectType.SERVER`` is "server");
the wire uses proto enums whose names end in the same words
(``OBJECT_TYPE_SERVER``), so one mapping by name serves every pair
(``tests/unit/test_vocabulary.py`` checks that the two sides agree). An
unknown or unspecified enum number from a client is refused here with 9900,
naming the field and the values it accepts.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections.abc import Sequence
from typing import Any

from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper
from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp

from cbr import errors, tls
from cbr.limits import RESOURCE_TYPES
from cbr.v1 import (
    audit_pb2,
    backup_pb2,
    common_pb2,
    credential_pb2,
    iam_pb2,
    key_pb2,
    notification_pb2,
    policy_pb2,
    protectable_pb2,
    replication_pb2,
    task_pb2,
    vault_pb2,
)
from controller.persistence import models
from controller.persistence.vocabulary import PolicyOperationType, ProtectableStatus


@functools.cache
def _names(enum: EnumTypeWrapper) -> tuple[dict[int, str], dict[str, int]]:
    """number -> short name and back, computed once per enum (every response uses them)."""
    prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", enum.DESCRIPTOR.name).upper() + "_"
    by_number = {}
    for value in enum.DESCRIPTOR.values:
        short = value.name.removeprefix(prefix).lower()
        by_number[value.number] = "" if short == "unspecified" else short
    return by_number, {name: number for number, name in by_number.items() if name}


def enum_name(enum: EnumTypeWrapper, number: int) -> str:
    """OBJECT_TYPE_SERVER -> 'server'; '' for unspecified or unknown numbers."""
    return _names(enum)[0].get(number, "")


def enum_number(enum: EnumTypeWrapper, name: str) -> Any:
    if not name:
        return 0
    try:
        return _names(enum)[1][name]
    except KeyError:
        raise ValueError(f"{name!r} is not a {enum.DESCRIPTOR.name}") from None


def enum_choices(enum: EnumTypeWrapper) -> list[str]:
    return [n for n in (enum_name(enum, v.number) for v in enum.DESCRIPTOR.values) if n]


def require_enum(enum: EnumTypeWrapper, number: int, field: str, *, default: str = "",
                 allowed: tuple[str, ...] = ()) -> str:
    """The domain name of a required enum field; 9900 naming the choices otherwise."""
    if number == 0 and default:
        return default
    name = enum_name(enum, number)
    choices = list(allowed) or enum_choices(enum)
    if not name or name not in choices:
        raise errors.InvalidParameter(
            f"{field} must be one of {', '.join(choices)} (got {number}).", field=field)
    return name


def optional_enum(enum: EnumTypeWrapper, number: int, field: str) -> str:
    """For filters: '' when unset, else the name; unknown numbers refused."""
    if number == 0:
        return ""
    return require_enum(enum, number, field)


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def ts(value: dt.datetime | None) -> Timestamp | None:
    """Exact to the microsecond, and cheap: every listed row has two of these."""
    if value is None:
        return None
    delta = value - _EPOCH
    return Timestamp(seconds=delta.days * 86400 + delta.seconds,
                     nanos=delta.microseconds * 1000)


def from_ts(value: Timestamp, present: bool) -> dt.datetime | None:
    """A request's optional time: None unless the field was set."""
    if not present:
        return None
    return _EPOCH + dt.timedelta(seconds=value.seconds, microseconds=value.nanos // 1000)


def tags_to_pb(tags: list[Any]) -> list[common_pb2.Tag]:
    return [common_pb2.Tag(key=t["key"], value=t.get("value", "")) for t in tags]


def tags_from_pb(tags: Any) -> list[dict[str, str]]:
    return [{"key": t.key, "value": t.value} for t in tags]


# -- resources -----------------------------------------------------------------


def vault_resource(r: Any, last: Any = None) -> vault_pb2.VaultResource:
    """One row of ``vaults.resource_rows``, with its newest backup row."""
    out = vault_pb2.VaultResource(
        id=r.protectable_id, name=r.name,
        type=enum_number(common_pb2.ObjectType, r.object_type),
        resource_type=RESOURCE_TYPES[r.object_type],
        protect_status=enum_number(vault_pb2.ProtectStatus, r.protect_status),
        size_bytes=r.size_bytes, backup_size_bytes=r.backup_size_bytes,
        backup_count=r.backup_count, exclude_volumes=r.exclude_volumes,
        include_volumes=r.include_volumes)
    if last is not None:
        out.last_backup_id, out.last_backup_name = last.id, last.name
        out.last_backup_status = enum_number(backup_pb2.BackupStatus, last.status)
        stamp = ts(last.created_at)
        if stamp is not None:
            out.last_backup_at.CopyFrom(stamp)
    return out


def vault(v: Any, resources: list[Any], bindings: list[Any],
          last_backups: dict[str, Any] | None = None) -> vault_pb2.Vault:
    """A vault row (or model) with its resource rows and policy binding rows."""
    out = vault_pb2.Vault(
        id=v.id, name=v.name, description=v.description,
        object_type=enum_number(common_pb2.ObjectType, v.object_type),
        protect_type=enum_number(vault_pb2.ProtectType, v.protect_type),
        consistent_level=enum_number(vault_pb2.ConsistentLevel, v.consistent_level),
        status=enum_number(vault_pb2.VaultStatus, v.status), size_gb=v.size_gb,
        used_bytes=v.used_bytes, auto_expand=v.auto_expand, threshold=v.threshold,
        backup_name_prefix=v.backup_name_prefix, tags=tags_to_pb(v.tags),
        auto_bind=v.auto_bind, bind_rules=tags_to_pb(v.bind_rules),
        resources=[vault_resource(r, (last_backups or {}).get(r.protectable_id))
                   for r in resources], project_id=v.project_id,
        region=v.region, created_at=ts(v.created_at), updated_at=ts(v.updated_at),
        storage_url=v.storage_url, encrypted=bool(v.encrypted), kms_key_id=v.kms_key_id,
        threshold_exceeded=bool(v.threshold_exceeded))
    for binding in bindings:
        if binding.operation_type == PolicyOperationType.BACKUP:
            out.backup_policy_id = binding.policy_id
        else:
            out.replication_policy_id = binding.policy_id
            out.destination_vault_id = binding.destination_vault_id
    return out


def protectable(p: Any, *, agent_name: str, agent_online: bool,
                vault_id: str = "") -> protectable_pb2.Protectable:
    """A protectable row (or model)."""
    if p.gone:
        status = ProtectableStatus.GONE
    elif p.error:
        status = ProtectableStatus.ERROR
    elif not agent_online:
        status = ProtectableStatus.UNREACHABLE
    else:
        status = ProtectableStatus.AVAILABLE
    return protectable_pb2.Protectable(
        id=p.id, name=p.name, type=enum_number(common_pb2.ObjectType, p.object_type),
        resource_type=RESOURCE_TYPES[p.object_type],
        status=enum_number(protectable_pb2.ProtectableStatus, status),
        size_bytes=p.size_bytes,
        disks=[protectable_pb2.ProtectableDisk(
            id=d.get("id", ""), name=d.get("name", ""), path=d.get("path", ""),
            size_bytes=int(d.get("size_bytes", 0)), system_disk=bool(d.get("system_disk")),
            device_type=d.get("device_type", "")) for d in p.disks],
        path=p.path, agent_id=p.agent_id, agent_name=agent_name,
        agent_online=agent_online, vault_id=vault_id, tags=tags_to_pb(p.tags),
        status_message=p.error, project_id=p.project_id, created_at=ts(p.created_at),
        updated_at=ts(p.updated_at))


def task(t: Any) -> task_pb2.Task:
    """A task row (or model)."""
    return task_pb2.Task(
        id=t.id, operation_type=enum_number(task_pb2.OperationType, t.operation_type),
        status=enum_number(task_pb2.TaskStatus, t.status), progress=t.progress,
        checkpoint_id=t.checkpoint_id, policy_id=t.policy_id, vault_id=t.vault_id,
        vault_name=t.vault_name, resource_id=t.resource_id, resource_name=t.resource_name,
        agent_id=t.agent_id,
        error_info=task_pb2.TaskError(code=t.error_code, message=t.error_message)
        if t.error_code or t.error_message else None,
        extra_info={k: str(v) for k, v in t.extra_info.items()}, project_id=t.project_id,
        created_at=ts(t.created_at), started_at=ts(t.started_at), ended_at=ts(t.ended_at),
        updated_at=ts(t.updated_at), started_by_user_id=t.started_by_user_id,
        started_by_access_key_id=t.started_by_access_key_id)


def audit_record(r: Any) -> audit_pb2.AuditRecord:
    """An audit record row."""
    return audit_pb2.AuditRecord(
        id=r.id, project_id=r.project_id, user_id=r.user_id, access_key_id=r.access_key_id,
        method=r.method, action=r.action, resource_ids=list(r.resource_ids), source=r.source,
        result=enum_number(audit_pb2.AuditResult, r.result), status_code=r.status_code,
        error_code=r.error_code, error_message=r.error_message, duration_ms=r.duration_ms,
        created_at=ts(r.created_at))


def policy(p: models.Policy, vault_ids: list[str],
           next_runs: Sequence[dt.datetime] = ()) -> policy_pb2.Policy:
    od = p.operation_definition
    return policy_pb2.Policy(
        id=p.id, name=p.name,
        operation_type=enum_number(policy_pb2.PolicyOperationType, p.operation_type),
        enabled=p.enabled,
        operation_definition=policy_pb2.OperationDefinition(**od),
        trigger=policy_pb2.Trigger(pattern=p.trigger_patterns), vault_ids=vault_ids,
        project_id=p.project_id, created_at=ts(p.created_at), updated_at=ts(p.updated_at),
        next_run_times=[stamp for t in next_runs if (stamp := ts(t)) is not None],
        start_window_minutes=p.start_window_minutes,
        completion_window_minutes=p.completion_window_minutes)


def policy_run(r: models.PolicyRun) -> policy_pb2.PolicyRun:
    return policy_pb2.PolicyRun(
        policy_id=r.policy_id, vault_id=r.vault_id, scheduled_at=ts(r.scheduled_at),
        status=r.status, manual=r.manual, full=r.full, checkpoint_id=r.checkpoint_id,
        detail=r.detail, task_id=r.task_id)


def operation_definition(od: policy_pb2.OperationDefinition) -> dict[str, Any]:
    return {f.name: getattr(od, f.name) for f in od.DESCRIPTOR.fields}


def credential(c: models.Credential) -> credential_pb2.Credential:
    return credential_pb2.Credential(
        id=c.id, name=c.name, description=c.description, target_cloud=c.target_cloud,
        target_endpoint=c.target_endpoint, target_account_id=c.target_account_id,
        access_key_id=c.access_key_id, project_id=c.project_id, created_at=ts(c.created_at),
        updated_at=ts(c.updated_at),
        target_ca_sha256=tls.fingerprint(c.target_ca_pem) if c.target_ca_pem else "")


def backup(b: models.Backup, children: list[models.Backup] | None = None,
           record_ids: list[str] | None = None) -> backup_pb2.Backup:
    info = b.extend_info
    return backup_pb2.Backup(
        id=b.id, name=b.name, description=b.description, checkpoint_id=b.checkpoint_id,
        vault_id=b.vault_id, resource_id=b.resource_id, resource_name=b.resource_name,
        resource_type=enum_number(common_pb2.ObjectType, b.resource_type),
        resource_size_bytes=b.resource_size_bytes,
        status=enum_number(backup_pb2.BackupStatus, b.status),
        image_type=enum_number(backup_pb2.ImageType, b.image_type), incremental=b.incremental,
        parent_id=b.parent_id or "", children=[backup(c) for c in children or []],
        extend_info=backup_pb2.BackupExtendInfo(**{
            k: v for k, v in info.items()
            if k in backup_pb2.BackupExtendInfo.DESCRIPTOR.fields_by_name}),
        stored_bytes=b.stored_bytes, replication_record_ids=record_ids or [],
        project_id=b.project_id, protected_at=ts(b.protected_at), created_at=ts(b.created_at),
        expired_at=ts(b.expired_at), updated_at=ts(b.updated_at))


def checkpoint(c: models.Checkpoint, backup_ids: list[str],
               task_ids: list[str]) -> backup_pb2.Checkpoint:
    return backup_pb2.Checkpoint(
        id=c.id, vault_id=c.vault_id, name=c.name, description=c.description, status=c.status,
        backup_ids=backup_ids, task_ids=task_ids,
        skipped_resources=[backup_pb2.SkippedResource(**s) for s in c.skipped_resources],
        auto_trigger=c.auto_trigger, policy_id=c.policy_id, created_at=ts(c.created_at))


def image(i: models.Image) -> backup_pb2.Image:
    return backup_pb2.Image(
        id=i.id, name=i.name, description=i.description,
        status=enum_number(backup_pb2.ImageStatus, i.status), backup_id=i.backup_id,
        disk_backup_id=i.disk_backup_id, agent_id=i.agent_id, path=i.path,
        size_bytes=i.size_bytes, task_id=i.task_id, source_backup_id=i.source_backup_id,
        source_cloud=i.source_cloud, created_at=ts(i.created_at), updated_at=ts(i.updated_at))


def replication_record(r: models.ReplicationRecord, task_progress: int | None = None
                       ) -> replication_pb2.ReplicationRecord:
    """A record; ``task_progress``, when given, is its transfer task's (the larger shows)."""
    extra = r.extra_info
    progress = int(extra.get("progress", 0))
    if task_progress is not None:
        progress = max(progress, task_progress)
    return replication_pb2.ReplicationRecord(
        id=r.id, status=enum_number(replication_pb2.ReplicationStatus, r.status),
        source_region=r.source_region, source_project_id=r.source_project_id,
        source_backup_id=r.source_backup_id, source_checkpoint_id=r.source_checkpoint_id,
        destination_region=r.destination_region,
        destination_project_id=r.destination_project_id,
        destination_vault_id=r.destination_vault_id,
        destination_backup_id=r.destination_backup_id,
        destination_checkpoint_id=r.destination_checkpoint_id, vault_id=r.vault_id,
        progress=progress, fail_code=str(extra.get("fail_code", "")),
        fail_reason=str(extra.get("fail_reason", "")),
        auto_trigger=bool(extra.get("auto_trigger", False)), created_at=ts(r.created_at),
        updated_at=ts(r.updated_at))


def account(a: models.Account) -> iam_pb2.Account:
    return iam_pb2.Account(id=a.id, name=a.name, administrator=a.administrator,
                           created_at=ts(a.created_at), vault_quota_gb=a.vault_quota_gb)


def user(u: models.User) -> iam_pb2.User:
    return iam_pb2.User(id=u.id, account_id=u.account_id, name=u.name,
                        created_at=ts(u.created_at), password_set=bool(u.password_hash))


def access_key(k: models.AccessKey, secret: str = "") -> iam_pb2.AccessKey:
    return iam_pb2.AccessKey(access_key_id=k.id, user_id=k.user_id, secret_access_key=secret,
                             active=k.active, created_at=ts(k.created_at),
                             last_used_at=ts(k.last_used_at))


def grant(g: models.Grant) -> iam_pb2.Grant:
    return iam_pb2.Grant(id=g.id, user_id=g.user_id, action=g.action,
                         created_at=ts(g.created_at))




def key(view: Any) -> key_pb2.Key:
    """A key as one account sees it (a ``controller.services.keys.KeyView``)."""
    k = view.key
    return key_pb2.Key(
        id=k.id, alias=k.alias, description=k.description,
        state=enum_number(key_pb2.KeyState, view.state), project_id=k.project_id,
        shared_in=view.shared_in, shared_with=view.shared_with, origin=k.origin,
        created_at=ts(k.created_at), updated_at=ts(k.updated_at),
        deletion_at=ts(k.deletion_at))


def notification_target(t: models.NotificationTarget) -> notification_pb2.NotificationTarget:
    """A target without its secret: the signing secret is told once, at
    creation; an SMTP password never."""
    out = notification_pb2.NotificationTarget(
        id=t.id, name=t.name, kind=t.kind, event_types=list(t.event_types or []),
        enabled=t.enabled, project_id=t.project_id, created_at=ts(t.created_at),
        updated_at=ts(t.updated_at))
    if t.kind == "webhook":
        out.webhook.CopyFrom(notification_pb2.WebhookTarget(
            url=t.url, ca_sha256=tls.fingerprint(t.ca_pem) if t.ca_pem else ""))
    else:
        out.smtp.CopyFrom(notification_pb2.SmtpTarget(
            host=t.smtp_host, port=t.smtp_port, security=t.smtp_security,
            from_address=t.smtp_from, to_addresses=list(t.smtp_to or []),
            username=t.smtp_username, password_set=bool(t.secret_sealed)))
    return out


def notification_delivery(d: models.NotificationDelivery
                          ) -> notification_pb2.NotificationDelivery:
    return notification_pb2.NotificationDelivery(
        id=d.id, event_id=d.event_id, target_id=d.target_id, event_type=d.event_type,
        status=d.status, attempts=d.attempts, next_attempt_at=ts(d.next_attempt_at),
        last_error=d.last_error, last_http_status=d.last_http_status,
        delivered_at=ts(d.delivered_at), created_at=ts(d.created_at),
        updated_at=ts(d.updated_at))


def event(e: models.Event) -> notification_pb2.Event:
    details = Struct()
    details.update(e.details or {})
    return notification_pb2.Event(
        id=e.id, event_type=e.event_type, severity=e.severity, project_id=e.project_id,
        resource_type=e.resource_type, resource_id=e.resource_id,
        resource_name=e.resource_name, task_id=e.task_id, summary=e.summary, details=details,
        occurred_at=ts(e.occurred_at))
