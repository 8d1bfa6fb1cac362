"""Notification targets, fan-out of events to deliveries, and the delivery queue."""

from __future__ import annotations

import datetime as dt
import random

import pytest
from sqlalchemy import select

from cbr import errors
from controller.app import App
from controller.persistence.models import (
    Account,
    Agent,
    Event,
    Key,
    NotificationDelivery,
    Vault,
)
from controller.persistence.vocabulary import (
    DeliveryStatus,
    EventType,
    OperationType,
    TaskStatus,
)
from controller.services import agent_status, keys, notifications, outbox, runs, tasks
from controller.services.notifications import SmtpSpec, WebhookSpec
from controller.services.outbox import Outcome
from tests.state.conftest import NOW, Inventory
from tests.state.test_vaults import add, make_vault

LEASE = dt.timedelta(minutes=5)


def _webhook(app: App, project: str, name: str, event_types: list[str] | None = None,
             enabled: bool = True) -> tuple[str, str]:
    with app.db.begin() as s:
        target, secret = notifications.create_target(
            s, app.keyring, project, name=name, event_types=event_types or [],
            enabled=enabled, webhook=WebhookSpec(url=f"https://hooks.example/{name}"),
            smtp=None, now=NOW, allow_local=True)
        return target.id, secret


def _other_account(app: App) -> str:
    with app.db.begin() as s:
        account = Account(name="other", created_at=NOW)
        s.add(account)
        s.flush()
        return account.id


def _backup_ends(app: App, project: str, status: TaskStatus) -> str:
    with app.db.begin() as s:
        task_id = tasks.create_task(s, project_id=project, operation_type=OperationType.BACKUP,
                                    now=NOW, resource_id="r-1", resource_name="web-1").id
    with app.db.begin() as s:
        tasks.finish_task(s, task_id, status, NOW, error_message="agent stopped")
    return task_id


def _deliveries(app: App, project: str | None = None) -> list[NotificationDelivery]:
    with app.db.begin() as s:
        stmt = select(NotificationDelivery).order_by(NotificationDelivery.created_at)
        if project:
            stmt = stmt.where(NotificationDelivery.project_id == project)
        rows = list(s.scalars(stmt))
        s.expunge_all()
        return rows


def test_an_event_makes_a_pending_delivery_for_each_enabled_subscribed_target_of_its_account(
        app: App, project: str) -> None:
    failures, _ = _webhook(app, project, "failures", [EventType.BACKUP_FAILED])
    everything, _ = _webhook(app, project, "everything")
    _webhook(app, project, "off", enabled=False)
    _webhook(app, project, "restores", [EventType.RESTORE_FAILED])
    other = _other_account(app)
    _webhook(app, other, "theirs")

    _backup_ends(app, project, TaskStatus.FAILED)
    got = _deliveries(app)
    assert sorted(d.target_id for d in got) == sorted([failures, everything])
    assert {(d.status, d.attempts, d.event_type) for d in got} == {
        (DeliveryStatus.PENDING, 0, EventType.BACKUP_FAILED)}
    assert all(d.next_attempt_at == NOW and d.project_id == project for d in got)

    _backup_ends(app, project, TaskStatus.SUCCESS)
    succeeded = [d for d in _deliveries(app) if d.event_type == EventType.BACKUP_SUCCEEDED]
    assert [d.target_id for d in succeeded] == [everything]
    assert _deliveries(app, other) == []


def test_a_rolled_back_change_leaves_neither_event_nor_delivery(app: App, project: str) -> None:
    _webhook(app, project, "everything")
    with app.db.begin() as s:
        task_id = tasks.create_task(s, project_id=project, operation_type=OperationType.BACKUP,
                                    now=NOW).id
    with pytest.raises(RuntimeError), app.db.begin() as s:
        tasks.finish_task(s, task_id, TaskStatus.FAILED, NOW)
        raise RuntimeError("the change fails")
    assert _deliveries(app) == []


def test_targets_of_another_account_are_not_found(app: App, project: str) -> None:
    mine, _ = _webhook(app, project, "mine")
    other = _other_account(app)
    with app.db.begin() as s:
        with pytest.raises(errors.ResourceNotFound):
            notifications.get_target(s, other, mine)
        with pytest.raises(errors.ResourceNotFound):
            notifications.test_target(s, other, mine, NOW)
        with pytest.raises(errors.ResourceNotFound):
            notifications.list_deliveries(s, other, target_id=mine, status="", event_type="",
                                          page_size=0, page_token="")
        with pytest.raises(errors.ResourceNotFound):
            notifications.delete_target(s, other, mine)


@pytest.mark.parametrize("url", ["http://hooks.example/x", "http://10.0.0.1/x",
                                 "ftp://hooks.example/x", "https://user:pw@hooks.example/x",
                                 "https:///x", ""])
def test_a_webhook_url_that_is_not_https_or_local_http_is_refused(app: App, project: str,
                                                                   url: str) -> None:
    with app.db.begin() as s, pytest.raises(errors.InvalidParameter) as refused:
        notifications.create_target(s, app.keyring, project, name="bad", event_types=[],
                                    enabled=True, webhook=WebhookSpec(url=url), smtp=None,
                                    now=NOW, allow_local=True)
    assert refused.value.code == "BackupService.9900"


def test_plain_http_is_allowed_to_loopback_receivers(app: App, project: str) -> None:
    for n, url in enumerate(["http://127.0.0.1:8080/hook", "http://localhost/x",
                             "http://[::1]:9/x"]):
        with app.db.begin() as s:
            target, secret = notifications.create_target(
                s, app.keyring, project, name=f"local-{n}", event_types=[], enabled=True,
                webhook=WebhookSpec(url=url), smtp=None, now=NOW, allow_local=True)
            assert target.url == url and secret.startswith("whsec_")


def test_unknown_event_types_and_clear_smtp_to_remote_hosts_are_refused(
        app: App, project: str) -> None:
    with app.db.begin() as s:
        with pytest.raises(errors.InvalidParameter, match="not an event type"):
            notifications.create_target(s, app.keyring, project, name="x",
                                        event_types=["backup.exploded"], enabled=True,
                                        webhook=WebhookSpec("https://h.example/"), smtp=None,
                                        now=NOW, allow_local=True)
        smtp = SmtpSpec(host="mail.example", port=25, security="none",
                        from_address="cbr@example.org", to_addresses=["ops@example.org"])
        with pytest.raises(errors.InvalidParameter, match="loopback"):
            notifications.create_target(s, app.keyring, project, name="y", event_types=[],
                                        enabled=True, webhook=None, smtp=smtp, now=NOW,
                                        allow_local=True)


def test_secrets_are_sealed_not_stored_in_clear(app: App, project: str) -> None:
    target_id, secret = _webhook(app, project, "signed")
    smtp = SmtpSpec(host="mail.example", port=0, security="", from_address="cbr@example.org",
                    to_addresses=["ops@example.org"], username="cbr",
                    password="correct horse battery")
    with app.db.begin() as s:
        mail, told = notifications.create_target(s, app.keyring, project, name="mail",
                                                 event_types=[], enabled=True, webhook=None,
                                                 smtp=smtp, now=NOW, allow_local=True)
        assert told == ""  # an SMTP password is never told back
        assert (mail.smtp_port, mail.smtp_security) == (587, "starttls")
        mail_id = mail.id
    with app.db.begin() as s:
        hook = notifications.get_target(s, project, target_id)
        mail = notifications.get_target(s, project, mail_id)
        assert secret.encode() not in hook.secret_sealed
        assert b"correct horse" not in mail.secret_sealed
        assert notifications.target_secret(app.keyring, hook) == secret
        assert notifications.target_secret(app.keyring, mail) == "correct horse battery"


def _claim(app: App, now: dt.datetime) -> list[outbox.Claimed]:
    with app.db.begin() as s:
        return outbox.claim_due(s, app.keyring, now, limit=10, lease=LEASE)


def _outcome(app: App, claimed: outbox.Claimed, outcome: Outcome, now: dt.datetime,
             max_attempts: int = 8) -> NotificationDelivery | None:
    with app.db.begin() as s:
        done = outbox.record_outcome(s, claimed, outcome, now, backoff_s=30,
                                     max_attempts=max_attempts, rng=random.Random(7))
        s.flush()
        if done is not None:
            s.expunge(done)
        return done


def test_a_failed_delivery_is_retried_after_a_doubling_backoff_with_jitter(
        app: App, project: str) -> None:
    _webhook(app, project, "flaky")
    _backup_ends(app, project, TaskStatus.FAILED)
    now = NOW
    waits = []
    for attempt in range(1, 5):
        [claimed] = _claim(app, now)
        assert claimed.attempt == attempt
        assert _claim(app, now) == []  # claimed: no other sender takes it
        done = _outcome(app, claimed, Outcome(False, "HTTP 500", 500), now)
        assert done is not None and done.status == DeliveryStatus.PENDING
        assert done.last_http_status == 500 and done.last_error == "HTTP 500"
        assert done.next_attempt_at is not None
        wait = (done.next_attempt_at - now).total_seconds()
        full = 30 * 2 ** (attempt - 1)
        assert 0.75 * full <= wait <= full
        waits.append(wait)
        assert _claim(app, now + dt.timedelta(seconds=wait - 1)) == []  # not due yet
        now = done.next_attempt_at
    assert waits == sorted(waits)
    [claimed] = _claim(app, now)
    done = _outcome(app, claimed, Outcome(True, http_status=204), now)
    assert done is not None and done.status == DeliveryStatus.DELIVERED
    assert (done.delivered_at, done.attempts, done.last_error) == (now, 5, "")
    assert _claim(app, now + dt.timedelta(days=1)) == []


def test_the_backoff_is_capped_at_an_hour() -> None:
    assert outbox.retry_delay(30, 30.0, random.Random(1)) <= 3600
    assert outbox.retry_delay(30, 30.0, random.Random(1)) >= 0.75 * 3600


def test_a_delivery_is_given_up_after_its_attempts_or_at_once_on_a_permanent_refusal(
        app: App, project: str) -> None:
    _webhook(app, project, "gone")
    _backup_ends(app, project, TaskStatus.FAILED)
    now = NOW
    for attempt in (1, 2, 3):
        [claimed] = _claim(app, now)
        done = _outcome(app, claimed, Outcome(False, "timed out"), now, max_attempts=3)
        assert done is not None
        if attempt < 3:
            assert done.status == DeliveryStatus.PENDING and done.next_attempt_at is not None
            now = done.next_attempt_at
    assert done.status == DeliveryStatus.FAILED and done.next_attempt_at is None
    assert _claim(app, now + dt.timedelta(days=1)) == []

    _backup_ends(app, project, TaskStatus.FAILED)
    [claimed] = _claim(app, NOW)
    done = _outcome(app, claimed, Outcome(False, "HTTP 404", 404, permanent=True), NOW)
    assert done is not None and (done.status, done.attempts) == (DeliveryStatus.FAILED, 1)


def test_a_sender_that_lost_its_claim_does_not_mark_the_delivery(app: App,
                                                                 project: str) -> None:
    _webhook(app, project, "slow")
    _backup_ends(app, project, TaskStatus.FAILED)
    [first] = _claim(app, NOW)
    later = NOW + LEASE + dt.timedelta(seconds=1)
    [second] = _claim(app, later)  # the first sender's lease ran out
    assert (first.attempt, second.attempt) == (1, 2)
    assert _outcome(app, first, Outcome(True, http_status=200), later) is None
    done = _outcome(app, second, Outcome(True, http_status=200), later)
    assert done is not None and done.status == DeliveryStatus.DELIVERED


def test_a_test_delivery_goes_to_its_one_target(app: App, project: str) -> None:
    one, _ = _webhook(app, project, "one")
    _webhook(app, project, "everything")
    with app.db.begin() as s:
        notifications.test_target(s, project, one, NOW)
    [delivery] = _deliveries(app)
    assert (delivery.target_id, delivery.event_type) == (one, EventType.NOTIFICATION_TEST)
    [claimed] = _claim(app, NOW)
    assert claimed.event["type"] == "notification.test" and claimed.url.endswith("/one")


def _agent(app: App, project: str, last_seen: dt.datetime) -> str:
    with app.db.begin() as s:
        agent = Agent(project_id=project, name="host-1", hostname="host-1.example",
                      role="host", certificate_fingerprint="0" * 64, enrolled_at=NOW,
                      last_seen_at=last_seen, connected=False)
        s.add(agent)
        s.flush()
        return agent.id


def _events(app: App, project: str, event_type: str) -> list[Event]:
    with app.db.begin() as s:
        rows = list(s.scalars(select(Event).where(Event.project_id == project,
                                                  Event.event_type == event_type)))
        s.expunge_all()
        return rows


def test_an_agent_offline_longer_than_the_limit_is_reported_once_per_offline_period(
        app: App, project: str) -> None:
    agent_id = _agent(app, project, NOW)
    limit = dt.timedelta(minutes=10)

    def check(at: dt.datetime) -> int:
        with app.db.begin() as s:
            return agent_status.report_offline(s, at, limit)

    assert check(NOW + dt.timedelta(minutes=9)) == 0
    assert check(NOW + dt.timedelta(minutes=11)) == 1
    assert check(NOW + dt.timedelta(minutes=12)) == 0  # the same silence
    assert check(NOW + dt.timedelta(hours=5)) == 0
    [event] = _events(app, project, EventType.AGENT_OFFLINE)
    assert event.resource_id == agent_id and "11 minutes" in event.summary

    back = NOW + dt.timedelta(hours=6)
    with app.db.begin() as s:
        agent = s.get(Agent, agent_id)
        assert agent is not None
        agent.last_seen_at = back  # it came back, then went silent again
    assert check(back + dt.timedelta(minutes=5)) == 0
    assert check(back + dt.timedelta(minutes=15)) == 1
    assert len(_events(app, project, EventType.AGENT_OFFLINE)) == 2


def test_scheduling_the_deletion_of_a_key_that_encrypts_vaults_raises_an_event(
        app: App, project: str) -> None:
    with app.db.begin() as s:
        key = keys.create_key(s, app.root_key, project, alias="vault-key", description="",
                              material=b"", now=NOW).key
        key_id = key.id
        s.add(Vault(project_id=project, name="v1", protect_type="backup",
                    object_type="server", consistent_level="crash_consistent",
                    status="available", size_gb=10, region="region-1", kms_key_id=key_id,
                    created_at=NOW, updated_at=NOW))
        unused = keys.create_key(s, app.root_key, project, alias="spare", description="",
                                 material=b"", now=NOW).key.id
    with app.db.begin() as s:
        keys.schedule_deletion(s, project, key_id, 7, NOW)
        keys.schedule_deletion(s, project, unused, 7, NOW)
    [event] = _events(app, project, EventType.KEY_DELETION_IN_USE)
    assert event.resource_id == key_id and event.details["vaults"] == 1
    assert "cancel" in event.summary
    with app.db.begin() as s:
        assert s.get(Key, unused) is not None

    day = dt.timedelta(days=1)

    def remind(at: dt.datetime) -> int:
        with app.db.begin() as s:
            return keys.remind_deletions_in_use(s, at, day)

    assert remind(NOW + dt.timedelta(hours=23)) == 0  # told less than a day ago
    assert remind(NOW + dt.timedelta(hours=25)) == 1  # the daily reminder
    assert remind(NOW + dt.timedelta(hours=26)) == 0
    assert remind(NOW + dt.timedelta(days=8)) == 0  # deleted by then: nothing to save
    with app.db.begin() as s:
        keys.cancel_deletion(s, project, key_id, NOW + dt.timedelta(days=2))
    assert remind(NOW + dt.timedelta(days=3)) == 0
    assert len(_events(app, project, EventType.KEY_DELETION_IN_USE)) == 2


def test_a_backup_that_cannot_start_because_its_agent_is_offline_is_a_failed_event(
        app: App, project: str, inventory: Inventory) -> None:
    hook, _ = _webhook(app, project, "failures", [EventType.BACKUP_FAILED])
    vault_id = make_vault(app, project, object_type="disk")
    add(app, project, vault_id, inventory.add("vol", "disk"))
    with app.db.begin() as s:
        runs.create_checkpoint(s, project, vault_id, [], name="", description="", full=False,
                               now=NOW, online=set())
    [event] = _events(app, project, EventType.BACKUP_FAILED)
    assert "failed to start" in event.summary and "offline" in event.summary
    assert event.details["error_code"] == "BackupService.0503"
    assert [d.target_id for d in _deliveries(app)] == [hook]


def test_deleting_a_target_takes_its_deliveries_and_keeps_the_events(
        app: App, project: str) -> None:
    hook, _ = _webhook(app, project, "short-lived")
    _backup_ends(app, project, TaskStatus.FAILED)
    assert len(_deliveries(app)) == 1
    with app.db.begin() as s:
        notifications.delete_target(s, project, hook)
    assert _deliveries(app) == []
    assert len(_events(app, project, EventType.BACKUP_FAILED)) == 1


# PostgreSQL only: SQLite has one writer at a time, so a second claim waits
# for the first instead of skipping its rows.
@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_controllers_sharing_postgresql_claim_different_deliveries_at_the_same_time(
        app: App, project: str) -> None:
    _webhook(app, project, "busy")
    for _ in range(3):
        _backup_ends(app, project, TaskStatus.FAILED)
    with app.db.begin() as first:  # still open: its rows stay locked
        mine = outbox.claim_due(first, app.keyring, NOW, limit=1, lease=LEASE)
        theirs = _claim(app, NOW)
        assert len(mine) == 1 and len(theirs) == 2
        assert mine[0].delivery_id not in {c.delivery_id for c in theirs}
