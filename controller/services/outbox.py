"""The delivery queue: which deliveries are due, who sends each, what came of it.

Deliveries are rows (``NotificationDelivery``) written with their event. A
controller claims a few due ones in one short transaction (``FOR UPDATE SKIP
LOCKED`` on PostgreSQL, so controllers sharing the database take different
rows; SQLite has one writer at a time anyway), moving each a lease ahead and
counting the attempt; it sends them with no transaction open, then records
each outcome. An outcome whose attempt is no longer the row's (the sender was
too slow and another took the row over) is dropped, so a delivery is never
marked twice. A failure is tried again after ``base * 2**(attempt-1)``
seconds (at most ``MAX_BACKOFF_S``, less up to a quarter at random so
receivers that came back are not hit by every retry at once), until
``max_attempts``; a refusal that will not change (a 4xx other than 408 and
429, an SMTP 5xx) fails at once.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from controller.keyring import Keyring
from controller.persistence.models import Event, NotificationDelivery, NotificationTarget
from controller.persistence.vocabulary import DeliveryStatus
from controller.services import notifications

MAX_BACKOFF_S = 3600.0
ERROR_MAX = 1000


@dataclass(frozen=True)
class Claimed:
    """One delivery to send, with what sending needs (no ORM rows: it is
    used after its transaction has ended)."""

    delivery_id: str
    attempt: int
    kind: str
    url: str
    ca_pem: str
    secret: str
    smtp_host: str
    smtp_port: int
    smtp_security: str
    smtp_from: str
    smtp_to: tuple[str, ...]
    smtp_username: str
    event: dict[str, Any]


@dataclass(frozen=True)
class Outcome:
    delivered: bool
    error: str = ""
    http_status: int = 0
    # Refused in a way a retry will not change.
    permanent: bool = False


def event_payload(event: Event) -> dict[str, Any]:
    """The event as receivers get it (the webhook body, the mail's text)."""
    return {
        "id": event.id,
        "type": event.event_type,
        "severity": event.severity,
        "account": event.project_id,
        "resource": {"type": event.resource_type, "id": event.resource_id,
                     "name": event.resource_name},
        "task": event.task_id,
        "summary": event.summary,
        "details": event.details or {},
        "occurred_at": event.occurred_at.astimezone(dt.UTC).isoformat().replace("+00:00", "Z"),
    }


def retry_delay(attempt: int, base_s: float, rng: random.Random | None = None) -> float:
    """Seconds before the attempt after failed attempt ``attempt`` (1-based)."""
    delay = min(base_s * 2 ** (attempt - 1), MAX_BACKOFF_S)
    return delay * (1 - 0.25 * (rng or random).random())


def claim_due(session: Session, keyring: Keyring, now: dt.datetime, *, limit: int,
              lease: dt.timedelta) -> list[Claimed]:
    """Takes up to ``limit`` due deliveries for this controller for ``lease``."""
    rows = session.scalars(
        select(NotificationDelivery)
        .where(NotificationDelivery.status == DeliveryStatus.PENDING,
               NotificationDelivery.next_attempt_at <= now)
        .order_by(NotificationDelivery.next_attempt_at, NotificationDelivery.id)
        .limit(limit)
        .with_for_update(skip_locked=True)).all()
    claimed = []
    for delivery in rows:
        target = session.get(NotificationTarget, delivery.target_id)
        event = session.get(Event, delivery.event_id)
        if target is None or event is None:  # gone (the cascade normally takes it too)
            delivery.status = DeliveryStatus.FAILED
            delivery.next_attempt_at = None
            delivery.last_error = "its target or event no longer exists"
            delivery.updated_at = now
            continue
        delivery.attempts += 1
        delivery.next_attempt_at = now + lease
        delivery.updated_at = now
        claimed.append(Claimed(
            delivery_id=delivery.id, attempt=delivery.attempts, kind=target.kind,
            url=target.url, ca_pem=target.ca_pem,
            secret=notifications.target_secret(keyring, target),
            smtp_host=target.smtp_host, smtp_port=target.smtp_port,
            smtp_security=target.smtp_security, smtp_from=target.smtp_from,
            smtp_to=tuple(target.smtp_to or ()), smtp_username=target.smtp_username,
            event=event_payload(event)))
    return claimed


def record_outcome(session: Session, claimed: Claimed, outcome: Outcome, now: dt.datetime,
                   *, backoff_s: float, max_attempts: int,
                   rng: random.Random | None = None) -> NotificationDelivery | None:
    """Marks the delivery delivered, failed, or due again after its backoff;
    None when the claim was lost (the row moved on without this sender)."""
    delivery = session.get(NotificationDelivery, claimed.delivery_id, with_for_update=True)
    if delivery is None or delivery.status != DeliveryStatus.PENDING \
            or delivery.attempts != claimed.attempt:
        return None
    delivery.last_http_status = outcome.http_status
    delivery.updated_at = now
    if outcome.delivered:
        delivery.status = DeliveryStatus.DELIVERED
        delivery.delivered_at = now
        delivery.next_attempt_at = None
        delivery.last_error = ""
        return delivery
    delivery.last_error = outcome.error[:ERROR_MAX]
    if outcome.permanent or delivery.attempts >= max_attempts:
        delivery.status = DeliveryStatus.FAILED
        delivery.next_attempt_at = None
    else:
        delivery.next_attempt_at = now + dt.timedelta(
            seconds=retry_delay(delivery.attempts, backoff_s, rng))
    return delivery
