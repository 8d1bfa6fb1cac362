"""NotificationService on the wire: secrets told once and stored sealed,
account isolation, refusals with their CBR code, and a test delivery."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import field_mask_pb2
from sqlalchemy import text

from cbr.client import Client, error_from_rpc
from cbr.v1 import iam_pb2, notification_pb2
from controller.persistence.vocabulary import EventType
from controller.services import events
from tests.support.inproc import RunningController
from tests.support.webhook import verify, webhook_receiver


def _other(api: RunningController) -> Client:
    made = api.client().iam.CreateAccount(iam_pb2.CreateAccountRequest(
        name="other", admin_user_name="other-admin"))
    return Client(api.endpoint, made.access_key.access_key_id,
                  made.access_key.secret_access_key, insecure=True)


def test_secrets_are_told_once_never_listed_and_stored_sealed(api: RunningController) -> None:
    client = api.client()
    made = client.notifications.CreateNotificationTarget(
        notification_pb2.CreateNotificationTargetRequest(
            name="ops-hook", event_types=["backup.failed", "agent.offline"],
            webhook=notification_pb2.WebhookTarget(url="https://hooks.example/cbr")))
    secret = made.signing_secret
    assert secret.startswith("whsec_") and len(secret) > 40
    hook = made.target
    assert (hook.kind, list(hook.event_types), hook.enabled, hook.webhook.url) == (
        "webhook", ["backup.failed", "agent.offline"], True, "https://hooks.example/cbr")
    mail = client.notifications.CreateNotificationTarget(
        notification_pb2.CreateNotificationTargetRequest(
            name="ops-mail", enabled=False, smtp=notification_pb2.SmtpTarget(
                host="smtp.example", from_address="cbr@example.org",
                to_addresses=["ops@example.org"], username="cbr",
                password="mail-password-42"))).target
    assert mail.smtp.password == "" and mail.smtp.password_set and not mail.enabled
    assert (mail.smtp.port, mail.smtp.security) == (587, "starttls")

    listed = client.notifications.ListNotificationTargets(
        notification_pb2.ListNotificationTargetsRequest())
    got = client.notifications.GetNotificationTarget(
        notification_pb2.GetNotificationTargetRequest(target_id=hook.id))
    for message in (listed, got):
        wire = message.SerializeToString()
        assert secret.encode() not in wire and b"mail-password-42" not in wire
    assert listed.total_count == 2

    with api.app.db.engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM notification_targets")).all()
    stored = repr(rows).encode() + b"".join(
        bytes(value) for row in rows for value in row if isinstance(value, (bytes, memoryview)))
    assert secret.encode() not in stored and b"mail-password-42" not in stored
    assert all(row.secret_sealed for row in rows)


def test_another_accounts_targets_and_deliveries_are_not_found(api: RunningController) -> None:
    client = api.client()
    hook = client.notifications.CreateNotificationTarget(
        notification_pb2.CreateNotificationTargetRequest(
            name="mine", webhook=notification_pb2.WebhookTarget(
                url="https://hooks.example/mine"))).target
    client.notifications.TestNotificationTarget(
        notification_pb2.TestNotificationTargetRequest(target_id=hook.id))
    other = _other(api)
    try:
        assert not other.notifications.ListNotificationTargets(
            notification_pb2.ListNotificationTargetsRequest()).targets
        assert not other.notifications.ListNotificationDeliveries(
            notification_pb2.ListNotificationDeliveriesRequest()).deliveries
        assert not other.notifications.ListEvents(notification_pb2.ListEventsRequest()).events
        for call in (
            lambda: other.notifications.GetNotificationTarget(
                notification_pb2.GetNotificationTargetRequest(target_id=hook.id)),
            lambda: other.notifications.TestNotificationTarget(
                notification_pb2.TestNotificationTargetRequest(target_id=hook.id)),
            lambda: other.notifications.DeleteNotificationTarget(
                notification_pb2.DeleteNotificationTargetRequest(target_id=hook.id)),
            lambda: other.notifications.UpdateNotificationTarget(
                notification_pb2.UpdateNotificationTargetRequest(
                    target_id=hook.id, target=notification_pb2.NotificationTarget(enabled=False),
                    update_mask=field_mask_pb2.FieldMask(paths=["enabled"]))),
            lambda: other.notifications.ListNotificationDeliveries(
                notification_pb2.ListNotificationDeliveriesRequest(target_id=hook.id)),
        ):
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        other.close()
    assert len(client.notifications.ListNotificationDeliveries(
        notification_pb2.ListNotificationDeliveriesRequest(target_id=hook.id)).deliveries) == 1


@pytest.mark.parametrize(("request_", "words"), [
    (notification_pb2.CreateNotificationTargetRequest(
        name="plain", webhook=notification_pb2.WebhookTarget(url="http://hooks.example/x")),
     "plain http"),
    (notification_pb2.CreateNotificationTargetRequest(name="nothing"), "exactly one"),
    # This controller's operator does not allow its own host as a destination.
    (notification_pb2.CreateNotificationTargetRequest(
        name="self", webhook=notification_pb2.WebhookTarget(url="http://127.0.0.1:7400/x")),
     "target_allow_local"),
    (notification_pb2.CreateNotificationTargetRequest(
        name="metadata", webhook=notification_pb2.WebhookTarget(
            url="https://169.254.169.254/latest")), "target_allow_local"),
    (notification_pb2.CreateNotificationTargetRequest(
        name="mail", smtp=notification_pb2.SmtpTarget(
            host="localhost", security="none", from_address="a@b.example",
            to_addresses=["c@d.example"])), "target_allow_local"),
    (notification_pb2.CreateNotificationTargetRequest(
        name="typo", event_types=["backup.fail"],
        webhook=notification_pb2.WebhookTarget(url="https://hooks.example/x")),
     "not an event type"),
])
def test_bad_targets_are_refused_with_invalid_argument_and_a_cbr_code(
        sqlite_api: RunningController,
        request_: notification_pb2.CreateNotificationTargetRequest, words: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        sqlite_api.client().notifications.CreateNotificationTarget(request_)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    refused = error_from_rpc(err.value)
    assert refused is not None and refused.code == "BackupService.9900"
    assert words in refused.message


def test_a_test_notification_reaches_the_webhook_signed(
        local_targets_api: RunningController) -> None:
    sqlite_api = local_targets_api
    client = sqlite_api.client()
    with webhook_receiver() as receiver:
        made = client.notifications.CreateNotificationTarget(
            notification_pb2.CreateNotificationTargetRequest(
                name="local", webhook=notification_pb2.WebhookTarget(url=receiver.url)))
        delivery = client.notifications.TestNotificationTarget(
            notification_pb2.TestNotificationTargetRequest(target_id=made.target.id)).delivery
        assert (delivery.status, delivery.event_type) == ("pending", "notification.test")
        assert sqlite_api.app.notifier is not None
        sqlite_api.app.notifier.send_due()
        [request] = receiver.wait_for(1)
    assert verify(made.signing_secret, request.headers["X-CBR-Signature"], request.body,
                  sqlite_api.app.clock.time())
    assert request.event["type"] == "notification.test"
    [done] = client.notifications.ListNotificationDeliveries(
        notification_pb2.ListNotificationDeliveriesRequest(status="delivered")).deliveries
    assert done.id == delivery.id and done.last_http_status == 200 and done.attempts == 1
    [event] = client.notifications.ListEvents(notification_pb2.ListEventsRequest(
        event_type="notification.test")).events
    assert event.id == request.event["id"] and event.details["target_name"] == "local"
    with pytest.raises(grpc.RpcError) as err:
        client.notifications.ListNotificationDeliveries(
            notification_pb2.ListNotificationDeliveriesRequest(status="sent"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_target_is_disabled_resubscribed_and_renamed_and_fans_out_accordingly(
        api: RunningController) -> None:
    client = api.client()
    hook = client.notifications.CreateNotificationTarget(
        notification_pb2.CreateNotificationTargetRequest(
            name="ops", event_types=["backup.failed"], webhook=notification_pb2.WebhookTarget(
                url="https://hooks.example/ops"))).target

    def update(paths: list[str], **fields: object) -> notification_pb2.NotificationTarget:
        return client.notifications.UpdateNotificationTarget(
            notification_pb2.UpdateNotificationTargetRequest(
                target_id=hook.id, target=notification_pb2.NotificationTarget(**fields),  # type: ignore[arg-type]
                update_mask=field_mask_pb2.FieldMask(paths=paths))).target

    changed = update(["enabled", "event_types", "name"], enabled=False,
                     event_types=["backup.failed", "agent.offline"], name="ops-night")
    assert (changed.name, changed.enabled, list(changed.event_types)) == (
        "ops-night", False, ["backup.failed", "agent.offline"])
    assert changed.webhook.url == "https://hooks.example/ops"
    with api.app.db.begin() as s:
        events.record(s, project_id=api.account_id, event_type=EventType.BACKUP_FAILED,
                      now=api.app.clock.now(), summary="while disabled")
    assert not client.notifications.ListNotificationDeliveries(
        notification_pb2.ListNotificationDeliveriesRequest(target_id=hook.id)).deliveries
    update(["enabled", "event_types"], enabled=True)  # every type again
    with api.app.db.begin() as s:
        events.record(s, project_id=api.account_id, event_type=EventType.RESTORE_SUCCEEDED,
                      now=api.app.clock.now(), summary="enabled, every type")
    [delivery] = client.notifications.ListNotificationDeliveries(
        notification_pb2.ListNotificationDeliveriesRequest(target_id=hook.id)).deliveries
    assert delivery.event_type == "restore.succeeded"
    for paths, fields, words in ((["webhook"], {}, "cannot change"),
                                 ([], {}, "nothing to change"),
                                 (["event_types"], {"event_types": ["nope"]},
                                  "not an event type")):
        with pytest.raises(grpc.RpcError) as err:
            update(paths, **fields)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert words in (err.value.details() or "")
