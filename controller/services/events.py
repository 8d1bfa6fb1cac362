"""Events: what happened that an operator may want to hear about.

An event is a row written in the transaction of the change it reports (a
task ending, a replica confirmed), so it exists exactly when its change does
and a crash between the two cannot lose or invent one. Notification targets
subscribe to event types; their deliveries are made from these rows
afterwards, never from inside the change.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from controller.persistence.models import (
    Event,
    NotificationDelivery,
    NotificationTarget,
    ReplicationRecord,
    Task,
    new_id,
)
from controller.persistence.vocabulary import (
    DeliveryStatus,
    EventSeverity,
    EventType,
    OperationType,
    ReplicationStatus,
    TaskStatus,
)

SEVERITY = {
    EventType.BACKUP_SUCCEEDED: EventSeverity.INFO,
    EventType.BACKUP_FAILED: EventSeverity.ERROR,
    EventType.RESTORE_SUCCEEDED: EventSeverity.INFO,
    EventType.RESTORE_FAILED: EventSeverity.ERROR,
    EventType.REPLICATION_SUCCEEDED: EventSeverity.INFO,
    EventType.REPLICATION_FAILED: EventSeverity.ERROR,
    EventType.POLICY_RUN_MISSED: EventSeverity.WARNING,
    EventType.AGENT_OFFLINE: EventSeverity.WARNING,
    EventType.VAULT_THRESHOLD_EXCEEDED: EventSeverity.WARNING,
    EventType.VERIFY_PROBLEMS_FOUND: EventSeverity.ERROR,
    EventType.KEY_DELETION_IN_USE: EventSeverity.WARNING,
    EventType.NOTIFICATION_TEST: EventSeverity.INFO,
}

# Set in a session's info when it queues a delivery, so the notifier, told of
# the commit, sends at once rather than at its next poll.
DELIVERIES_QUEUED = "cbr.deliveries_queued"

# Which task endings are events; the others (a sync, a deletion) are routine.
_TASK_EVENTS = {
    (OperationType.BACKUP, TaskStatus.SUCCESS): EventType.BACKUP_SUCCEEDED,
    (OperationType.BACKUP, TaskStatus.FAILED): EventType.BACKUP_FAILED,
    (OperationType.BACKUP, TaskStatus.TIMEOUT): EventType.BACKUP_FAILED,
    (OperationType.RESTORE, TaskStatus.SUCCESS): EventType.RESTORE_SUCCEEDED,
    (OperationType.RESTORE, TaskStatus.FAILED): EventType.RESTORE_FAILED,
    (OperationType.RESTORE, TaskStatus.TIMEOUT): EventType.RESTORE_FAILED,
}


def record(session: Session, *, project_id: str, event_type: EventType, now: dt.datetime,
           summary: str, resource_type: str = "", resource_id: str = "",
           resource_name: str = "", task_id: str = "",
           details: dict[str, Any] | None = None) -> Event:
    """Writes the event and, in the same transaction, one pending delivery
    for each enabled target of the account that subscribes to its type; so a
    notification exists exactly when its event does."""
    event = Event(id=new_id(), project_id=project_id, event_type=event_type,
                  severity=SEVERITY[event_type], resource_type=resource_type,
                  resource_id=resource_id, resource_name=resource_name[:255],
                  task_id=task_id, summary=summary, details=details or {}, occurred_at=now)
    session.add(event)
    if event_type != EventType.NOTIFICATION_TEST:  # a test goes to its one target only
        targets = session.execute(select(NotificationTarget.id, NotificationTarget.event_types)
                                  .where(NotificationTarget.project_id == project_id,
                                         NotificationTarget.enabled.is_(True))).all()
        for target_id, subscribed in targets:
            if not subscribed or event_type in subscribed:
                deliver(session, event, target_id, now)
    return event


def deliver(session: Session, event: Event, target_id: str,
            now: dt.datetime) -> NotificationDelivery:
    """A pending delivery of ``event`` to one target, due now."""
    delivery = NotificationDelivery(
        id=new_id(), project_id=event.project_id, event_id=event.id, target_id=target_id,
        event_type=event.event_type, status=DeliveryStatus.PENDING, attempts=0,
        next_attempt_at=now, last_error="", last_http_status=0, created_at=now,
        updated_at=now)
    session.add(delivery)
    session.info[DELIVERIES_QUEUED] = True
    return delivery


def task_finished(session: Session, task: Task, now: dt.datetime) -> Event | None:
    """The event of a task that just reached its final status, if it is one."""
    if task.operation_type == OperationType.VERIFY:
        return _verify_finished(session, task, now)
    event_type = _TASK_EVENTS.get((OperationType(task.operation_type),
                                   TaskStatus(task.status)))
    if event_type is None:
        return None
    what = task.operation_type
    name = task.resource_name or task.resource_id or task.vault_name
    if task.status == TaskStatus.SUCCESS:
        summary = f"The {what} of {name} succeeded."
    else:
        ended = "timed out" if task.status == TaskStatus.TIMEOUT else "failed"
        summary = f"The {what} of {name} {ended}: {task.error_message or 'no reason given'}"
    details: dict[str, Any] = {"status": task.status, "vault_id": task.vault_id,
                               "vault_name": task.vault_name, "policy_id": task.policy_id}
    if task.error_code:
        details.update(error_code=task.error_code, error_message=task.error_message)
    return record(session, project_id=task.project_id, event_type=event_type, now=now,
                  summary=summary, resource_type="resource", resource_id=task.resource_id,
                  resource_name=name, task_id=task.id, details=details)


def _verify_finished(session: Session, task: Task, now: dt.datetime) -> Event | None:
    """A verify (by hand or by a verify policy) that found problems; one
    that could not run (storage unreachable) is a task failure, not news
    about the data."""
    info = task.extra_info or {}
    problems = int(info.get("problems", 0) or 0)
    if task.status != TaskStatus.FAILED or problems <= 0:
        return None
    damaged = str(info.get("damaged_backups", "") or "")
    summary = (f"Verify of vault {task.vault_name or task.vault_id} found {problems} "
               f"problem(s); damaged backups: {damaged or 'none'}.")
    details: dict[str, Any] = {
        "vault_id": task.vault_id, "vault_name": task.vault_name, "policy_id": task.policy_id,
        "problems": problems, "damaged_backups": damaged,
        "first_problems": str(info.get("first_problems", "")),
        "read_data_subset": str(info.get("read_data_subset", "") or "")}
    return record(session, project_id=task.project_id,
                  event_type=EventType.VERIFY_PROBLEMS_FOUND, now=now, summary=summary,
                  resource_type="vault", resource_id=task.vault_id,
                  resource_name=task.vault_name, task_id=task.id, details=details)


def backup_not_started(session: Session, *, project_id: str, vault_id: str, vault_name: str,
                       resource_id: str, resource_name: str, code: str, reason: str,
                       policy_id: str, now: dt.datetime) -> Event:
    """A backup that could not even start (its agent offline, the resource
    gone or unreadable) failed as surely as one that broke halfway: no task
    ends for it, so its event is recorded here."""
    return record(session, project_id=project_id, event_type=EventType.BACKUP_FAILED, now=now,
                  summary=f"The backup of {resource_name} failed to start: {reason}",
                  resource_type="resource", resource_id=resource_id,
                  resource_name=resource_name,
                  details={"status": "skipped", "vault_id": vault_id, "vault_name": vault_name,
                           "policy_id": policy_id, "error_code": code,
                           "error_message": reason})


def replication_finished(session: Session, rec: ReplicationRecord,
                         now: dt.datetime) -> Event | None:
    """The event of a replication record that just became success or fail
    (on the source cloud, where the user asked for it)."""
    if rec.status == ReplicationStatus.SUCCESS:
        event_type = EventType.REPLICATION_SUCCEEDED
        summary = (f"Backup {rec.source_backup_id} was replicated to "
                   f"{rec.destination_region}.")
    elif rec.status == ReplicationStatus.FAIL:
        event_type = EventType.REPLICATION_FAILED
        reason = str(rec.extra_info.get("fail_reason", "no reason given"))
        summary = (f"The replication of backup {rec.source_backup_id} to "
                   f"{rec.destination_region} failed: {reason}")
    else:
        return None
    details = {"replication_record_id": rec.id, "vault_id": rec.vault_id,
               "destination_region": rec.destination_region,
               "destination_project_id": rec.destination_project_id,
               "destination_vault_id": rec.destination_vault_id,
               "fail_code": rec.extra_info.get("fail_code", "")}
    return record(session, project_id=rec.project_id, event_type=event_type, now=now,
                  summary=summary, resource_type="backup", resource_id=rec.source_backup_id,
                  details=details)
