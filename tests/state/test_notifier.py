"""The notifier against real local receivers: an HTTP(S) webhook and an SMTP server."""

from __future__ import annotations

import datetime as dt
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from sqlalchemy import select

from cbr.clock import FakeClock
from controller.app import App
from controller.jobs.notifier import Notifier
from controller.persistence.models import Account, Agent, Event, NotificationDelivery
from controller.persistence.vocabulary import DeliveryStatus, OperationType, TaskStatus
from controller.services import notifications, tasks
from controller.services.notifications import SmtpSpec, WebhookSpec
from tests.support.inproc import make_app
from tests.support.webhook import LocalCertificate, verify, webhook_receiver


@pytest.fixture
def app(tmp_path: Path, database_url: str) -> Iterator[App]:
    """The receivers here listen on loopback, which the operator must allow."""
    app = make_app(tmp_path, database_url, "--target-allow-local", "true")
    try:
        yield app
    finally:
        app.db.dispose()


@pytest.fixture
def clock(app: App) -> FakeClock:
    app.clock = clock = FakeClock()
    return clock


@pytest.fixture
def notifier(app: App, clock: FakeClock) -> Notifier:
    assert app.notifier is not None
    return app.notifier


def _failed_backup(app: App, project: str) -> str:
    now = app.clock.now()
    with app.db.begin() as s:
        task_id = tasks.create_task(s, project_id=project, operation_type=OperationType.BACKUP,
                                    now=now, resource_id="r-1", resource_name="web-1").id
    with app.db.begin() as s:
        tasks.finish_task(s, task_id, TaskStatus.FAILED, now,
                          error_code="BackupService.6001", error_message="the agent is gone")
    return task_id


def _delivery(app: App) -> NotificationDelivery:
    with app.db.begin() as s:
        [delivery] = s.scalars(select(NotificationDelivery)).all()
        s.expunge(delivery)
        return delivery


def _webhook(app: App, project: str, url: str, ca_pem: str = "") -> str:
    with app.db.begin() as s:
        _, secret = notifications.create_target(
            s, app.keyring, project, name="hook", event_types=[], enabled=True,
            webhook=WebhookSpec(url=url, ca_pem=ca_pem), smtp=None, now=app.clock.now(),
            allow_local=True)
    return secret


def test_a_webhook_gets_the_signed_event_and_a_500_is_retried_after_the_backoff(
        app: App, project: str, clock: FakeClock, notifier: Notifier) -> None:
    with webhook_receiver(statuses=[500]) as receiver:
        secret = _webhook(app, project, receiver.url)
        task_id = _failed_backup(app, project)
        assert notifier.send_due() == 1
        [first] = receiver.wait_for(1)
        delivery = _delivery(app)
        assert (delivery.status, delivery.attempts, delivery.last_http_status) == (
            DeliveryStatus.PENDING, 1, 500)
        assert notifier.send_due() == 0  # not due before its backoff

        clock.advance(app.config.notification_backoff)
        assert notifier.send_due() == 1
        first, second = receiver.wait_for(2)
    delivery = _delivery(app)
    assert (delivery.status, delivery.attempts, delivery.last_http_status) == (
        DeliveryStatus.DELIVERED, 2, 200)
    with app.db.begin() as s:
        event_id = s.scalars(select(Event.id)).one()
    for request in (first, second):
        assert request.path == "/hook"
        assert request.headers["Content-Type"] == "application/json"
        assert request.headers["X-CBR-Event-Id"] == event_id  # the same on every retry
        assert verify(secret, request.headers["X-CBR-Signature"], request.body, clock.time())
        assert not verify("whsec_wrong", request.headers["X-CBR-Signature"], request.body,
                          clock.time())
    body = second.event
    assert (body["id"], body["type"], body["severity"], body["account"], body["task"]) == (
        event_id, "backup.failed", "error", project, task_id)
    assert body["resource"] == {"type": "resource", "id": "r-1", "name": "web-1"}
    assert "the agent is gone" in body["summary"]
    assert body["details"]["error_code"] == "BackupService.6001"
    assert body["occurred_at"].endswith("Z")
    assert secret not in second.body.decode()


def test_a_4xx_refusal_fails_the_delivery_at_once(app: App, project: str,
                                                   notifier: Notifier) -> None:
    with webhook_receiver(statuses=[410]) as receiver:
        _webhook(app, project, receiver.url)
        _failed_backup(app, project)
        notifier.send_due()
        receiver.wait_for(1)
    delivery = _delivery(app)
    assert (delivery.status, delivery.attempts, delivery.last_http_status) == (
        DeliveryStatus.FAILED, 1, 410)
    assert "HTTP 410" in delivery.last_error


def test_an_https_webhook_is_verified_against_its_ca_certificate(
        app: App, project: str, notifier: Notifier) -> None:
    cert = LocalCertificate.make()
    with webhook_receiver(tls=cert) as receiver:
        assert receiver.url.startswith("https://")
        _webhook(app, project, receiver.url, ca_pem=cert.cert_pem)
        _failed_backup(app, project)
        notifier.send_due()
        receiver.wait_for(1)
    assert _delivery(app).status == DeliveryStatus.DELIVERED


def test_an_https_webhook_with_an_untrusted_certificate_is_not_sent(
        app: App, project: str, notifier: Notifier) -> None:
    with webhook_receiver(tls=LocalCertificate.make()) as receiver:
        _webhook(app, project, receiver.url)  # no CA given: the system's do not know it
        _failed_backup(app, project)
        notifier.send_due()
        assert receiver.received == []
    delivery = _delivery(app)
    assert delivery.status == DeliveryStatus.PENDING
    assert "CERTIFICATE_VERIFY_FAILED" in delivery.last_error


class Mailbox:
    def __init__(self) -> None:
        self.messages: list[Any] = []
        self.arrived = threading.Event()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(envelope)
        self.arrived.set()
        return "250 OK"


def _free_port() -> int:
    """aiosmtpd's Controller needs a real port (it connects to it to know it serves)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def mailbox() -> Iterator[tuple[Mailbox, Controller]]:
    box = Mailbox()
    smtp = Controller(box, hostname="127.0.0.1", port=_free_port(), ready_timeout=15)
    smtp.start()
    try:
        yield box, smtp
    finally:
        smtp.stop()


def _smtp_target(app: App, project: str, spec: SmtpSpec) -> None:
    with app.db.begin() as s:
        notifications.create_target(s, app.keyring, project, name="mail", event_types=[],
                                    enabled=True, webhook=None, smtp=spec,
                                    now=app.clock.now(), allow_local=True)


def test_an_smtp_target_gets_a_plain_text_mail_with_the_summary_and_details(
        app: App, project: str, notifier: Notifier,
        mailbox: tuple[Mailbox, Controller]) -> None:
    box, smtp = mailbox
    _smtp_target(app, project, SmtpSpec(
        host="127.0.0.1", port=smtp.port, security="none",
        from_address="cbr@example.org", to_addresses=["ops@example.org", "dev@example.org"]))
    _failed_backup(app, project)
    notifier.send_due()
    assert box.arrived.wait(10)
    [mail] = box.messages
    assert mail.mail_from == "cbr@example.org"
    assert mail.rcpt_tos == ["ops@example.org", "dev@example.org"]
    text = mail.content.decode()
    assert "Subject: [CBR error] The backup of web-1 failed" in text
    assert "the agent is gone" in text and "error_code: BackupService.6001" in text
    assert _delivery(app).status == DeliveryStatus.DELIVERED


def test_an_smtp_target_logs_in_after_starttls_with_its_sealed_password(
        app: App, project: str, notifier: Notifier) -> None:
    cert = LocalCertificate.make()
    logins: list[tuple[str, str]] = []

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str,
                      data: Any) -> AuthResult:
        assert isinstance(data, LoginPassword)
        logins.append((data.login.decode(), data.password.decode()))
        return AuthResult(success=data.password == b"s3cret-pass")

    box = Mailbox()
    smtp = Controller(box, hostname="127.0.0.1", port=_free_port(), ready_timeout=15,
                      tls_context=cert.server_context(), require_starttls=True,
                      authenticator=authenticator)
    smtp.start()
    try:
        _smtp_target(app, project, SmtpSpec(
            host="127.0.0.1", port=smtp.port,
            security="starttls", from_address="cbr@example.org",
            to_addresses=["ops@example.org"], username="cbr", password="s3cret-pass",
            ca_pem=cert.cert_pem))
        _failed_backup(app, project)
        notifier.send_due()
        assert box.arrived.wait(10)
    finally:
        smtp.stop()
    assert logins == [("cbr", "s3cret-pass")]
    assert _delivery(app).status == DeliveryStatus.DELIVERED


def test_a_controller_just_started_gives_agents_time_to_reconnect_before_reporting_them(
        app: App, project: str, clock: FakeClock, notifier: Notifier) -> None:
    with app.db.begin() as s:
        s.add(Agent(project_id=project, name="host-1", role="host",
                    certificate_fingerprint="0" * 64, enrolled_at=clock.now(),
                    last_seen_at=clock.now() - dt.timedelta(hours=2)))
    notifier.started_at = clock.now()  # as start() sets it, without the thread
    assert notifier.report_offline_agents() == 0  # it may be reconnecting right now
    clock.advance(app.config.agent_offline_notify * 60)
    assert notifier.report_offline_agents() == 1
    assert notifier.report_offline_agents() == 0
    with app.db.begin() as s:
        [event] = s.scalars(select(Event)).all()
        assert event.event_type == "agent.offline" and event.resource_name == "host-1"


def test_a_committed_event_is_sent_at_once_not_at_the_next_poll(
        tmp_path: Path, database_url: str) -> None:
    app = make_app(tmp_path, database_url, "--notification-poll", "600",
                   "--target-allow-local", "true")
    notifier = app.notifier
    assert notifier is not None
    try:
        with app.db.begin() as s:
            account = Account(name="tenant", created_at=app.clock.now())
            s.add(account)
            s.flush()
            project = account.id
        notifier.start()
        with webhook_receiver() as receiver:
            _webhook(app, project, receiver.url)
            _failed_backup(app, project)
            [request] = receiver.wait_for(1, timeout=10)  # far sooner than the 600 s poll
        assert request.event["type"] == "backup.failed"
    finally:
        notifier.stop()
        app.db.dispose()


def test_a_webhook_on_this_host_is_refused_unless_the_operator_allows_local_targets(
        tmp_path: Path, database_url: str) -> None:
    """A tenant's webhook or mail server must not reach the controller's own
    host (its database, its metadata service): loopback and link-local
    destinations fail for good, and nothing is sent."""
    app = make_app(tmp_path, database_url)
    try:
        with app.db.begin() as s:
            account = Account(name="tenant", created_at=app.clock.now())
            s.add(account)
            s.flush()
            project = account.id
        notifier = app.notifier
        assert notifier is not None
        with webhook_receiver() as receiver:
            _webhook(app, project, receiver.url)
            _failed_backup(app, project)
            assert notifier.send_due() == 1
            assert receiver.received == []
        delivery = _delivery(app)
        assert delivery.status == DeliveryStatus.FAILED and delivery.attempts == 1
        assert "local address" in delivery.last_error
        assert "target_allow_local" in delivery.last_error
    finally:
        app.db.dispose()
