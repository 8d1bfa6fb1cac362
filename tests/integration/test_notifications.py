"""Notifications end to end: a real controller and agent, a local webhook receiver.

The issue's acceptance: a backup whose agent is stopped fails, and the
failure reaches a local webhook receiver as a signed event.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cbr.clock import utc_now
from cbr.v1 import agent_pb2, backup_pb2, notification_pb2
from tests.integration.test_data_path import _backup, _start
from tests.support.processes import AgentFactory, ControllerFactory, wait_until
from tests.support.webhook import verify, webhook_receiver

pytestmark = pytest.mark.integration


def test_a_backup_whose_agent_is_stopped_reaches_a_webhook_as_a_signed_failure(
        tmp_path: Path, controller_factory: ControllerFactory,
        agent_factory: AgentFactory) -> None:
    host = _start(tmp_path, controller_factory, agent_factory,
                  extra_args=["--notification-poll", "0.2", "--notification-backoff", "0.5"])
    client = host.client
    with webhook_receiver(statuses=[503]) as receiver:
        made = client.notifications.CreateNotificationTarget(
            notification_pb2.CreateNotificationTargetRequest(
                name="ops", event_types=["backup.succeeded", "backup.failed"],
                webhook=notification_pb2.WebhookTarget(url=receiver.url)))
        secret = made.signing_secret

        ok = _backup(host, "disk")
        # The receiver answers the first request 503: the controller tries again.
        first, again = receiver.wait_for(2)
        assert first.headers["X-CBR-Event-Id"] == again.headers["X-CBR-Event-Id"]
        assert again.event["type"] == "backup.succeeded"
        assert again.event["resource"]["id"] == ok.resource_id

        host.agent.stop()
        wait_until(lambda: client.agents.GetAgent(agent_pb2.GetAgentRequest(
            agent_id=host.agent_id)).agent.status == agent_pb2.AGENT_STATUS_OFFLINE,
            timeout=30, message="the stopped agent shows offline")
        checkpoint = client.backups.CreateCheckpoint(backup_pb2.CreateCheckpointRequest(
            vault_id=host.vaults["disk"])).checkpoint
        [skipped] = checkpoint.skipped_resources
        *_, failure = receiver.wait_for(3)
    assert failure.event["type"] == "backup.failed"
    assert failure.event["severity"] == "error"
    assert failure.event["resource"]["id"] == skipped.resource_id
    assert "offline" in failure.event["summary"]
    now = utc_now().timestamp()
    assert verify(secret, failure.headers["X-CBR-Signature"], failure.body, now)
    assert not verify("whsec_not-the-secret", failure.headers["X-CBR-Signature"],
                      failure.body, now)

    def delivered() -> list[notification_pb2.NotificationDelivery] | None:
        got = client.notifications.ListNotificationDeliveries(
            notification_pb2.ListNotificationDeliveriesRequest(
                target_id=made.target.id, status="delivered")).deliveries
        return list(got) if len(got) == 2 else None

    deliveries = wait_until(delivered, message="both deliveries recorded delivered")
    assert sorted(d.event_type for d in deliveries) == ["backup.failed", "backup.succeeded"]
    assert sorted(d.attempts for d in deliveries) == [1, 2]
    events = client.notifications.ListEvents(notification_pb2.ListEventsRequest(
        event_type="backup.failed")).events
    assert [e.id for e in events] == [failure.event["id"]]
