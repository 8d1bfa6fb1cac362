"""Notification targets of an account, their deliveries, and the event list.

A target is a webhook (HTTPS; plain HTTP only to a loopback host, for local
receivers) or an SMTP mailbox, subscribed to some event types or to all.
Its secret (the webhook's signing secret, made here and shown once; the SMTP
password) is sealed by the keyring bound to the target id, as a
credential's secret key is, and never returned. Deliveries are written by
``controller.services.events.record`` and sent by ``controller.jobs.notifier``
through ``controller.services.outbox``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.orm import Session

from cbr import errors, tls
from controller.keyring import Keyring
from controller.persistence.models import (
    Event,
    NotificationDelivery,
    NotificationTarget,
)
from controller.persistence.vocabulary import (
    DeliveryStatus,
    EventType,
    NotificationKind,
    SmtpSecurity,
)
from controller.services import destinations, events, paging, validation

URL_MAX = 2048
RECIPIENTS_MAX = 20
SMTP_DEFAULT_PORTS = {SmtpSecurity.STARTTLS: 587, SmtpSecurity.SSL: 465, SmtpSecurity.NONE: 25}
_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})$")
_ADDRESS = re.compile(r"^[^@\s<>,;]{1,64}@[A-Za-z0-9.-]{1,255}$")
SUBSCRIBABLE = tuple(t for t in EventType if t != EventType.NOTIFICATION_TEST)


@dataclass(frozen=True)
class WebhookSpec:
    url: str
    ca_pem: str = ""


@dataclass(frozen=True)
class SmtpSpec:
    host: str
    port: int
    security: str
    from_address: str
    to_addresses: Sequence[str]
    username: str = ""
    password: str = ""
    ca_pem: str = ""


def is_loopback_host(host: str) -> bool:
    """``localhost`` or a loopback address literal; no name is resolved, so
    what is checked is what will be dialled."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_webhook_url(url: str) -> str:
    if not url:
        raise errors.InvalidParameter("webhook url is required: https://HOST[:PORT]/PATH.",
                                      field="url")
    if len(url) > URL_MAX:
        raise errors.InvalidParameter(f"webhook url is over {URL_MAX} characters.",
                                      field="url")
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError:
        raise errors.InvalidParameter(f"webhook url {url!r} is not a valid URL.",
                                      field="url") from None
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise errors.InvalidParameter(
            f"webhook url {url!r} must be https://HOST[:PORT]/PATH.", field="url")
    if parts.username is not None or parts.password is not None:
        raise errors.InvalidParameter(
            "webhook url may not carry a user or password (it is stored and shown in "
            "clear); receivers check the X-CBR-Signature header instead.", field="url")
    if parts.fragment:
        raise errors.InvalidParameter("webhook url may not have a #fragment.", field="url")
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise errors.InvalidParameter(
            f"webhook url {url!r} is plain http: events must travel over https (plain http "
            "is allowed only to a loopback host such as 127.0.0.1, for local receivers).",
            field="url")
    return url


def _check_ca(ca_pem: str) -> str:
    if not ca_pem:
        return ""
    try:
        tls.fingerprint(ca_pem)
    except ValueError:
        raise errors.InvalidParameter("ca_certificate is not a PEM certificate.",
                                      field="ca_certificate") from None
    return ca_pem


def _address(value: str, field: str) -> str:
    if not _ADDRESS.match(value):
        raise errors.InvalidParameter(f"{field} {value!r} is not an e-mail address "
                                      "(name@domain).", field=field)
    return value


def _check_smtp(spec: SmtpSpec) -> SmtpSpec:
    host = spec.host.strip()
    if not host or not (_HOST.match(host) or is_loopback_host(host)):
        raise errors.InvalidParameter(f"smtp host {spec.host!r} must be a host name or "
                                      "address.", field="smtp.host")
    security = spec.security or SmtpSecurity.STARTTLS
    if security not in set(SmtpSecurity):
        raise errors.InvalidParameter(
            f"smtp security {security!r} must be one of {', '.join(SmtpSecurity)}.",
            field="smtp.security")
    if security == SmtpSecurity.NONE and not is_loopback_host(host):
        raise errors.InvalidParameter(
            f"smtp security none sends mail and password in clear: allowed only to a "
            f"loopback host, not {host!r}; use starttls or ssl.", field="smtp.security")
    port = spec.port or SMTP_DEFAULT_PORTS[SmtpSecurity(security)]
    validation.int_range(port, 1, 65535, "smtp.port")
    if not spec.to_addresses or len(spec.to_addresses) > RECIPIENTS_MAX:
        raise errors.InvalidParameter(f"smtp to: 1 to {RECIPIENTS_MAX} addresses.",
                                      field="smtp.to")
    to = [_address(a, "smtp.to") for a in dict.fromkeys(spec.to_addresses)]
    if len(spec.username) > 255 or len(spec.password) > 255:
        raise errors.InvalidParameter("smtp username and password: at most 255 characters.",
                                      field="smtp.username")
    if spec.password and not spec.username:
        raise errors.InvalidParameter("An smtp password needs its username.",
                                      field="smtp.username")
    if spec.ca_pem and security == SmtpSecurity.NONE:
        raise errors.InvalidParameter("ca_certificate is for starttls or ssl only.",
                                      field="ca_certificate")
    return SmtpSpec(host=host, port=port, security=security,
                    from_address=_address(spec.from_address, "smtp.from"), to_addresses=to,
                    username=spec.username, password=spec.password,
                    ca_pem=_check_ca(spec.ca_pem))


def check_event_types(values: Sequence[str], field: str = "event_types") -> list[str]:
    """The subscribed types, deduplicated in order; empty means every type."""
    out = []
    for value in dict.fromkeys(values):
        if value not in SUBSCRIBABLE:
            raise errors.InvalidParameter(
                f"{field}: {value!r} is not an event type; the types are "
                f"{', '.join(SUBSCRIBABLE)}.", field=field)
        out.append(value)
    return out


def _refuse_local(host: str, allow_local: bool, field: str) -> None:
    """A destination this controller's operator does not let tenants reach,
    when the host is written as such (a name is checked when it is resolved,
    at each delivery: ``controller.services.destinations``)."""
    if allow_local:
        return
    literal = host.strip("[]")
    try:
        local = literal.lower() == "localhost" or destinations.is_local(literal)
    except ValueError:
        return  # a name
    if local:
        raise errors.InvalidParameter(
            f"{field} {host!r} is on this controller's own host or a link-local network, "
            "which its operator does not allow (setting target_allow_local).", field=field)


def create_target(session: Session, keyring: Keyring, project_id: str, *, name: str,
                  event_types: Sequence[str], enabled: bool, webhook: WebhookSpec | None,
                  smtp: SmtpSpec | None, now: dt.datetime,
                  allow_local: bool) -> tuple[NotificationTarget, str]:
    """The new target and its webhook signing secret ("" for SMTP): the only
    time the secret is told, as with an access key's secret key."""
    validation.name(name)
    subscribed = check_event_types(event_types)
    if (webhook is None) == (smtp is None):
        raise errors.InvalidParameter("A notification target is a webhook or smtp: give "
                                      "exactly one of them.", field="webhook")
    taken = select(NotificationTarget.id).where(NotificationTarget.project_id == project_id,
                                                NotificationTarget.name == name)
    target = NotificationTarget(project_id=project_id, name=name, event_types=subscribed,
                                enabled=enabled, created_at=now, updated_at=now)
    secret = ""
    if webhook is not None:
        target.kind = NotificationKind.WEBHOOK
        target.url = check_webhook_url(webhook.url)
        _refuse_local(urlsplit(target.url).hostname or "", allow_local, "url")
        target.ca_pem = _check_ca(webhook.ca_pem)
        if target.ca_pem and target.url.startswith("http:"):
            raise errors.InvalidParameter("ca_certificate is for https webhooks only.",
                                          field="ca_certificate")
        secret = "whsec_" + secrets.token_urlsafe(32)
    else:
        assert smtp is not None
        spec = _check_smtp(smtp)
        _refuse_local(spec.host, allow_local, "smtp.host")
        target.kind = NotificationKind.SMTP
        target.smtp_host, target.smtp_port = spec.host, spec.port
        target.smtp_security, target.smtp_from = spec.security, spec.from_address
        target.smtp_to, target.smtp_username = list(spec.to_addresses), spec.username
        target.ca_pem = spec.ca_pem
        secret = spec.password
    if session.scalar(taken) is not None:
        raise errors.AlreadyExists(f"A notification target named {name!r} exists.",
                                   name=name)
    session.add(target)
    session.flush()
    target.secret_sealed = keyring.seal(secret.encode(), target.id.encode()) if secret else b""
    return target, secret if target.kind == NotificationKind.WEBHOOK else ""


def target_secret(keyring: Keyring, target: NotificationTarget) -> str:
    """The clear secret, for the notifier only (signing, SMTP login)."""
    if not target.secret_sealed:
        return ""
    return keyring.unseal(target.secret_sealed, target.id.encode()).decode()


def get_target(session: Session, project_id: str, target_id: str) -> NotificationTarget:
    target = session.get(NotificationTarget, target_id) if target_id else None
    if target is None or target.project_id != project_id:
        raise errors.ResourceNotFound(f"No notification target with id {target_id!r}; see "
                                      "`cbr notification target list`.", target_id=target_id)
    return target


def list_targets(session: Session, project_id: str, page_size: int, page_token: str
                 ) -> tuple[Sequence[NotificationTarget], str, int]:
    stmt = select(NotificationTarget).where(NotificationTarget.project_id == project_id)
    return paging.paginate(session, stmt, NotificationTarget, page_size, page_token)


def update_target(session: Session, project_id: str, target_id: str, changes: dict[str, Any],
                  now: dt.datetime) -> NotificationTarget:
    """Changes a target's name, enabled flag or subscriptions; deliveries
    already made keep going (they were due when the events happened)."""
    target = get_target(session, project_id, target_id)
    if "name" in changes and changes["name"] != target.name:
        name = str(changes["name"])
        validation.name(name)
        taken = session.scalar(select(NotificationTarget.id).where(
            NotificationTarget.project_id == project_id, NotificationTarget.name == name))
        if taken is not None:
            raise errors.AlreadyExists(f"A notification target named {name!r} exists.",
                                       name=name)
        target.name = name
    if "enabled" in changes:
        target.enabled = bool(changes["enabled"])
    if "event_types" in changes:
        target.event_types = check_event_types(changes["event_types"])
    target.updated_at = now
    return target


def delete_target(session: Session, project_id: str, target_id: str) -> None:
    """Deletes the target with its deliveries (the events stay)."""
    session.delete(get_target(session, project_id, target_id))


def test_target(session: Session, project_id: str, target_id: str,
                now: dt.datetime) -> NotificationDelivery:
    """A ``notification.test`` event with one delivery, to this target only, due now."""
    target = get_target(session, project_id, target_id)
    event = events.record(
        session, project_id=project_id, event_type=EventType.NOTIFICATION_TEST, now=now,
        summary=f"A test notification to {target.name}, asked for through the API.",
        resource_type="notification_target", resource_id=target.id,
        resource_name=target.name, details={"target_name": target.name})
    session.flush()
    return events.deliver(session, event, target.id, now)


def list_deliveries(session: Session, project_id: str, *, target_id: str, status: str,
                    event_type: str, page_size: int, page_token: str
                    ) -> tuple[Sequence[NotificationDelivery], str, int]:
    stmt = select(NotificationDelivery).where(NotificationDelivery.project_id == project_id)
    if target_id:
        get_target(session, project_id, target_id)
        stmt = stmt.where(NotificationDelivery.target_id == target_id)
    if status:
        if status not in set(DeliveryStatus):
            raise errors.InvalidParameter(
                f"status {status!r} must be one of {', '.join(DeliveryStatus)}.",
                field="status")
        stmt = stmt.where(NotificationDelivery.status == status)
    if event_type:
        _event_type(event_type)
        stmt = stmt.where(NotificationDelivery.event_type == event_type)
    return paging.paginate(session, stmt, NotificationDelivery, page_size, page_token)


def _event_type(value: str) -> str:
    if value not in set(EventType):
        raise errors.InvalidParameter(
            f"event_type {value!r} is not an event type; the types are "
            f"{', '.join(EventType)}.", field="event_type")
    return value


def list_events(session: Session, project_id: str, *, event_type: str, resource_id: str,
                since: dt.datetime | None, page_size: int, page_token: str,
                newest_first: bool = False) -> tuple[Sequence[Event], str, int]:
    """The account's events, oldest first unless asked (``since`` narrows to
    recent ones)."""
    stmt = select(Event).where(Event.project_id == project_id)
    if event_type:
        stmt = stmt.where(Event.event_type == _event_type(event_type))
    if resource_id:
        stmt = stmt.where(Event.resource_id == resource_id)
    if since is not None:
        stmt = stmt.where(Event.occurred_at >= since)
    return paging.paginate(session, stmt, Event, page_size, page_token, at="occurred_at",
                           newest_first=newest_first)
