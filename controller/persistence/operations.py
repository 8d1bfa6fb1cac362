"""Tables of operating the service rather than of its catalog: events, the
audit trail and notifications. Kept apart from ``models`` (which re-exports
them, so every table is still one import away) to keep each file readable.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    Unicode,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from controller.persistence.models import Base, new_id


class Event(Base):
    """Something an operator may want to hear about (``EventType``), written
    in the transaction of the change it reports, so an event exists exactly
    when its change does; notifications are delivered from these rows."""

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_project_occurred", "project_id", "occurred_at"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    event_type: Mapped[str] = mapped_column(String(48))  # EventType
    severity: Mapped[str] = mapped_column(String(16))  # EventSeverity
    resource_type: Mapped[str] = mapped_column(String(32), default="")
    resource_id: Mapped[str] = mapped_column(String(64), default="")
    resource_name: Mapped[str] = mapped_column(Unicode(255), default="")
    task_id: Mapped[str] = mapped_column(String(36), default="")
    summary: Mapped[str] = mapped_column(Text, default="")
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    occurred_at: Mapped[dt.datetime]


class AuditRecord(Base):
    """One API call that changed something or was refused: who, what, from
    where, when, and how it ended. Written by the API's audit interceptor."""

    __tablename__ = "audit_records"
    __table_args__ = (Index("ix_audit_records_project_created", "project_id", "created_at"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    # Empty when the caller could not be identified (an unsigned or badly
    # signed call); such records are visible to administrators only.
    project_id: Mapped[str] = mapped_column(String(36), default="")
    user_id: Mapped[str] = mapped_column(String(36), default="")
    access_key_id: Mapped[str] = mapped_column(String(32), default="")
    method: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64), default="")
    resource_ids: Mapped[list[Any]] = mapped_column(JSON, default=list)
    source: Mapped[str] = mapped_column(String(128), default="")
    result: Mapped[str] = mapped_column(String(16))  # AuditResult
    status_code: Mapped[str] = mapped_column(String(32), default="OK")
    error_code: Mapped[str] = mapped_column(String(32), default="")
    error_message: Mapped[str] = mapped_column(Text, default="")
    duration_ms: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(index=True)


class NotificationTarget(Base):
    """Where an account's events are sent: a webhook or an SMTP mailbox. Its
    secret (signing secret, SMTP password) is sealed by the keyring, bound to its id."""

    __tablename__ = "notification_targets"
    __table_args__ = (UniqueConstraint("project_id", "name"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))  # NotificationKind
    # EventType values it receives; empty: every type.
    event_types: Mapped[list[Any]] = mapped_column(JSON, default=list)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    url: Mapped[str] = mapped_column(Text, default="")
    # A CA to trust for the target's TLS, besides the system's.
    ca_pem: Mapped[str] = mapped_column(Text, default="")
    smtp_host: Mapped[str] = mapped_column(String(255), default="")
    smtp_port: Mapped[int] = mapped_column(Integer, default=0)
    smtp_security: Mapped[str] = mapped_column(String(16), default="")  # SmtpSecurity
    smtp_from: Mapped[str] = mapped_column(String(255), default="")
    smtp_to: Mapped[list[Any]] = mapped_column(JSON, default=list)
    smtp_username: Mapped[str] = mapped_column(String(255), default="")
    secret_sealed: Mapped[bytes] = mapped_column(LargeBinary, default=b"")
    created_at: Mapped[dt.datetime]
    updated_at: Mapped[dt.datetime]


class NotificationDelivery(Base):
    """One event to one target, written with the event; the notifier sends it.

    ``next_attempt_at`` doubles as the claim: a controller taking a due
    delivery moves it a lease ahead before sending, so no other controller
    sends it meanwhile, and one that dies mid-send leaves it due again."""

    __tablename__ = "notification_deliveries"
    __table_args__ = (Index("ix_notification_deliveries_due", "status", "next_attempt_at"),
                      Index("ix_notification_deliveries_project_created", "project_id",
                            "created_at"))
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    event_id: Mapped[str] = mapped_column(ForeignKey("events.id", ondelete="CASCADE"),
                                          index=True)
    target_id: Mapped[str] = mapped_column(
        ForeignKey("notification_targets.id", ondelete="CASCADE"), index=True)
    event_type: Mapped[str] = mapped_column(String(48))  # EventType, for filtering
    status: Mapped[str] = mapped_column(String(16))  # DeliveryStatus
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime | None]
    last_error: Mapped[str] = mapped_column(Text, default="")
    last_http_status: Mapped[int] = mapped_column(Integer, default=0)
    delivered_at: Mapped[dt.datetime | None]
    created_at: Mapped[dt.datetime]
    updated_at: Mapped[dt.datetime]
