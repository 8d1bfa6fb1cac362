"""Sending notifications: the due deliveries, to webhooks and SMTP mailboxes.

``Notifier`` is a thread that, every ``notification_poll`` seconds (or when
woken), records agents gone silent (``agent_status.report_offline``) and the
daily reminder of keys pending deletion that vaults still use, claims
due deliveries (``services.outbox``), sends each with no transaction open and
a short timeout, and records the outcome. Every controller sharing a
database runs one; the claims keep them off each other's rows.

A webhook gets the event as JSON, signed: ``X-CBR-Signature: t=<unix
time>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`` (``signature``; how a
receiver checks it is in the README). Redirects are not followed. The
secrets (signing secret, SMTP password) appear in no log line and no error.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import http.client
import json
import logging
import smtplib
import socket
import ssl
import threading
from email.message import EmailMessage
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.orm import Session

from cbr import errors
from controller.app import App
from controller.persistence.vocabulary import NotificationKind, SmtpSecurity
from controller.services import agent_status, destinations, events, keys, outbox
from controller.services.outbox import Claimed, Outcome

log = logging.getLogger("cbr.controller.notifier")

SEND_TIMEOUT_S = 5.0
CLAIM_BATCH = 8
# Longer than a batch can take to send (each step of a send times out in
# SEND_TIMEOUT_S), so a live sender never loses its claim.
LEASE = dt.timedelta(minutes=5)
# A key pending deletion that still protects vaults is announced again this often,
# looked for this often.
REMIND_EVERY = dt.timedelta(days=1)
REMIND_CHECK = dt.timedelta(minutes=1)
SIGNATURE_HEADER = "X-CBR-Signature"
EVENT_ID_HEADER = "X-CBR-Event-Id"
EVENT_TYPE_HEADER = "X-CBR-Event-Type"
_BODY_READ_MAX = 4096


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The X-CBR-Signature value of ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def _tls_context(ca_pem: str) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if ca_pem:
        context.load_verify_locations(cadata=ca_pem)
    return context


class _PinnedSMTP(smtplib.SMTP):
    """SMTP to the address checked, greeting and verifying TLS by name."""

    def __init__(self, address: str, *args: Any, **kwargs: Any) -> None:
        self._address = address
        super().__init__(*args, **kwargs)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        return super()._get_socket(self._address, port, timeout)  # type: ignore[misc]


class _PinnedSMTPSSL(smtplib.SMTP_SSL):
    def __init__(self, address: str, *args: Any, **kwargs: Any) -> None:
        self._address = address
        super().__init__(*args, **kwargs)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        return super()._get_socket(self._address, port, timeout)  # type: ignore[misc]


def _refused(where: str, exc: errors.CbrError) -> Outcome:
    """A destination that does not resolve is retried; a local one, which
    the operator does not allow, never will be."""
    return Outcome(False, f"{where}: {exc.detail}",
                   permanent=isinstance(exc, errors.InvalidParameter))


def post_webhook(claimed: Claimed, timestamp: int, timeout: float = SEND_TIMEOUT_S,
                 allow_local: bool = False) -> Outcome:
    body = json.dumps(claimed.event, sort_keys=True, separators=(",", ":")).encode()
    parts = urlsplit(claimed.url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        address = destinations.pinned(host, port, allow_local=allow_local, what="webhook")
    except errors.CbrError as exc:
        return _refused(f"{parts.scheme}://{parts.netloc}", exc)
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(host, port, timeout=timeout,
                                           context=_tls_context(claimed.ca_pem))
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    # The TCP connection goes to the address checked; TLS still verifies the name.
    conn._create_connection = (  # type: ignore[attr-defined]
        lambda where, *args, **kwargs: socket.create_connection((address, where[1]), *args,
                                                                **kwargs))
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    headers = {"Content-Type": "application/json", "User-Agent": "cbr-controller",
               EVENT_ID_HEADER: str(claimed.event["id"]),
               EVENT_TYPE_HEADER: str(claimed.event["type"]),
               SIGNATURE_HEADER: signature(claimed.secret, timestamp, body)}
    try:
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        answer = response.read(_BODY_READ_MAX).decode("utf-8", "replace").strip()
        status = response.status
    except (OSError, http.client.HTTPException) as exc:
        return Outcome(False, f"{parts.scheme}://{parts.netloc}: {type(exc).__name__}: {exc}")
    finally:
        conn.close()
    if 200 <= status < 300:
        return Outcome(True, http_status=status)
    error = f"HTTP {status} {response.reason}" + (f": {answer[:300]}" if answer else "")
    if 300 <= status < 400:
        return Outcome(False, error + " (webhooks do not follow redirects)", status,
                       permanent=True)
    permanent = 400 <= status < 500 and status not in (408, 429)
    return Outcome(False, error, status, permanent=permanent)


def mail_text(event: dict[str, object]) -> str:
    details = event.get("details") or {}
    lines = [str(event["summary"]), "",
             f"Event:    {event['type']} ({event['severity']})",
             f"When:     {event['occurred_at']}",
             f"Account:  {event['account']}"]
    resource = event.get("resource") or {}
    if isinstance(resource, dict) and resource.get("id"):
        lines.append(f"Resource: {resource.get('type')} {resource.get('name') or ''} "
                     f"({resource['id']})")
    if event.get("task"):
        lines.append(f"Task:     {event['task']}")
    if isinstance(details, dict) and details:
        lines += ["", "Details:"] + [f"  {k}: {v}" for k, v in sorted(details.items())]
    lines += ["", f"Event id: {event['id']}"]
    return "\n".join(lines) + "\n"


def send_mail(claimed: Claimed, timeout: float = SEND_TIMEOUT_S,
              allow_local: bool = False) -> Outcome:
    event = claimed.event
    message = EmailMessage()
    message["Subject"] = f"[CBR {event['severity']}] {str(event['summary'])[:150]}"
    message["From"] = claimed.smtp_from
    message["To"] = ", ".join(claimed.smtp_to)
    message[EVENT_ID_HEADER] = str(event["id"])
    message.set_content(mail_text(event))
    where = f"smtp {claimed.smtp_host}:{claimed.smtp_port}"
    try:
        address = destinations.pinned(claimed.smtp_host, claimed.smtp_port,
                                      allow_local=allow_local, what="mail server")
    except errors.CbrError as exc:
        return _refused(where, exc)
    try:
        smtp: smtplib.SMTP
        if claimed.smtp_security == SmtpSecurity.SSL:
            smtp = _PinnedSMTPSSL(address, claimed.smtp_host, claimed.smtp_port,
                                  timeout=timeout, context=_tls_context(claimed.ca_pem))
        else:
            smtp = _PinnedSMTP(address, claimed.smtp_host, claimed.smtp_port, timeout=timeout)
        with smtp:
            if claimed.smtp_security == SmtpSecurity.STARTTLS:
                smtp.starttls(context=_tls_context(claimed.ca_pem))
            if claimed.smtp_username:
                smtp.login(claimed.smtp_username, claimed.secret)
            smtp.send_message(message)
    except smtplib.SMTPRecipientsRefused as exc:
        return Outcome(False, f"{where}: every recipient refused: "
                       f"{', '.join(exc.recipients)}", permanent=True)
    except smtplib.SMTPResponseException as exc:
        text = exc.smtp_error.decode("utf-8", "replace") if isinstance(
            exc.smtp_error, bytes) else str(exc.smtp_error)
        return Outcome(False, f"{where}: {exc.smtp_code} {text[:300]}",
                       permanent=500 <= exc.smtp_code < 600)
    except (OSError, smtplib.SMTPException) as exc:
        return Outcome(False, f"{where}: {type(exc).__name__}: {exc}")
    return Outcome(True)


class Notifier:
    def __init__(self, app: App) -> None:
        self.app = app
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        # When start() ran: agents get one offline period from then to reconnect.
        self.started_at: dt.datetime | None = None
        self._reminded_at: dt.datetime | None = None

    def start(self) -> None:
        self.started_at = self.app.clock.now()
        self.app.db.after_commit(self._after_commit)
        self._thread = threading.Thread(target=self._run, name="notifier", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=2 * SEND_TIMEOUT_S)

    def _after_commit(self, session: Session) -> None:
        if session.info.pop(events.DELIVERIES_QUEUED, False):
            self.wake()

    def wake(self) -> None:
        """Sends what is due now rather than at the next poll."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.report_offline_agents()
            except Exception:
                log.exception("notifier: looking for offline agents failed; retrying")
            try:
                self.remind_key_deletions()
            except Exception:
                log.exception("notifier: reminding of key deletions failed; retrying")
            try:
                while self.send_due() == CLAIM_BATCH and not self._stop.is_set():
                    pass
            except Exception:
                log.exception("notifier: sending notifications failed; retrying")
            self._wake.wait(self.app.config.notification_poll)
            self._wake.clear()

    def remind_key_deletions(self) -> int:
        """Once a day, again, each key pending deletion that still protects vaults."""
        now = self.app.clock.now()
        if self._reminded_at is not None and now - self._reminded_at < REMIND_CHECK:
            return 0
        self._reminded_at = now
        with self.app.db.begin() as s:
            return keys.remind_deletions_in_use(s, now, REMIND_EVERY)

    def report_offline_agents(self) -> int:
        """Agents silent for longer than ``agent_offline_notify``; none in a
        controller's first such period, which gives the agents of a controller
        that was down (or of a cloud that was) time to reconnect before their
        silence is news."""
        after = dt.timedelta(minutes=self.app.config.agent_offline_notify)
        now = self.app.clock.now()
        if self.started_at is not None and now - self.started_at < after:
            return 0
        with self.app.db.begin() as s:
            return agent_status.report_offline(s, now, after)

    def send_due(self) -> int:
        """Claims, sends and records one batch of due deliveries; returns how many."""
        cfg = self.app.config
        with self.app.db.begin() as s:
            batch = outbox.claim_due(s, self.app.keyring, self.app.clock.now(),
                                     limit=CLAIM_BATCH, lease=LEASE)
        for claimed in batch:
            outcome = self.send(claimed)
            with self.app.db.begin() as s:
                done = outbox.record_outcome(s, claimed, outcome, self.app.clock.now(),
                                             backoff_s=cfg.notification_backoff,
                                             max_attempts=cfg.notification_attempts)
                status = done.status if done is not None else "lost its claim"
            log.info("notification %s (event %s %s), attempt %d: %s%s", claimed.delivery_id,
                     claimed.event["type"], claimed.event["id"], claimed.attempt, status,
                     f" ({outcome.error})" if outcome.error else "")
        return len(batch)

    def send(self, claimed: Claimed) -> Outcome:
        allow_local = self.app.config.target_allow_local
        if claimed.kind == NotificationKind.WEBHOOK:
            return post_webhook(claimed, int(self.app.clock.time()), allow_local=allow_local)
        return send_mail(claimed, allow_local=allow_local)
