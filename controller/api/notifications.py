"""NotificationService: thin translation to controller.services.notifications."""

from __future__ import annotations

import datetime as dt
from typing import Any

import grpc

from cbr import errors
from cbr.v1 import notification_pb2, notification_pb2_grpc
from controller.api import convert
from controller.api.base import Servicer
from controller.services import notifications
from controller.services.notifications import SmtpSpec, WebhookSpec


class NotificationServicer(Servicer, notification_pb2_grpc.NotificationServiceServicer):
    def CreateNotificationTarget(
            self, request: notification_pb2.CreateNotificationTargetRequest,
            context: grpc.ServicerContext) -> notification_pb2.CreateNotificationTargetResponse:
        which = request.WhichOneof("destination")
        webhook = smtp = None
        if which == "webhook":
            webhook = WebhookSpec(url=request.webhook.url,
                                  ca_pem=request.webhook.ca_certificate)
        elif which == "smtp":
            m = request.smtp
            smtp = SmtpSpec(host=m.host, port=m.port, security=m.security,
                            from_address=m.from_address, to_addresses=list(m.to_addresses),
                            username=m.username, password=m.password,
                            ca_pem=m.ca_certificate)
        with self.app.db.begin() as s:
            target, secret = notifications.create_target(
                s, self.app.keyring, self.project_id, name=request.name,
                event_types=list(request.event_types),
                enabled=request.enabled if request.HasField("enabled") else True,
                webhook=webhook, smtp=smtp, now=self.now(),
                allow_local=self.app.config.target_allow_local)
            return notification_pb2.CreateNotificationTargetResponse(
                target=convert.notification_target(target), signing_secret=secret)

    def GetNotificationTarget(
            self, request: notification_pb2.GetNotificationTargetRequest,
            context: grpc.ServicerContext) -> notification_pb2.GetNotificationTargetResponse:
        with self.app.db.begin() as s:
            target = notifications.get_target(s, self.project_id, request.target_id)
            return notification_pb2.GetNotificationTargetResponse(
                target=convert.notification_target(target))

    def ListNotificationTargets(
            self, request: notification_pb2.ListNotificationTargetsRequest,
            context: grpc.ServicerContext) -> notification_pb2.ListNotificationTargetsResponse:
        with self.app.db.begin() as s:
            items, token, total = notifications.list_targets(
                s, self.project_id, request.page_size, request.page_token)
            return notification_pb2.ListNotificationTargetsResponse(
                targets=[convert.notification_target(t) for t in items],
                next_page_token=token, total_count=total)

    def UpdateNotificationTarget(
            self, request: notification_pb2.UpdateNotificationTargetRequest,
            context: grpc.ServicerContext) -> notification_pb2.UpdateNotificationTargetResponse:
        changes: dict[str, Any] = {}
        for path in request.update_mask.paths:
            if path in ("name", "enabled"):
                changes[path] = getattr(request.target, path)
            elif path == "event_types":
                changes[path] = list(request.target.event_types)
            else:
                raise errors.InvalidParameter(
                    f"update_mask: {path!r} cannot change; updatable are name, enabled, "
                    "event_types (for another receiver, create a new target).",
                    field="update_mask")
        if not changes:
            raise errors.InvalidParameter("update_mask names nothing to change.",
                                          field="update_mask")
        with self.app.db.begin() as s:
            target = notifications.update_target(s, self.project_id, request.target_id,
                                                 changes, self.now())
            return notification_pb2.UpdateNotificationTargetResponse(
                target=convert.notification_target(target))

    def DeleteNotificationTarget(
            self, request: notification_pb2.DeleteNotificationTargetRequest,
            context: grpc.ServicerContext) -> notification_pb2.DeleteNotificationTargetResponse:
        with self.app.db.begin() as s:
            notifications.delete_target(s, self.project_id, request.target_id)
        return notification_pb2.DeleteNotificationTargetResponse()

    def TestNotificationTarget(
            self, request: notification_pb2.TestNotificationTargetRequest,
            context: grpc.ServicerContext) -> notification_pb2.TestNotificationTargetResponse:
        with self.app.db.begin() as s:
            delivery = notifications.test_target(s, self.project_id, request.target_id,
                                                 self.now())
            s.flush()
            answer = notification_pb2.TestNotificationTargetResponse(
                delivery=convert.notification_delivery(delivery))
        if self.app.notifier is not None:
            self.app.notifier.wake()
        return answer

    def ListNotificationDeliveries(
            self, request: notification_pb2.ListNotificationDeliveriesRequest,
            context: grpc.ServicerContext
    ) -> notification_pb2.ListNotificationDeliveriesResponse:
        with self.app.db.begin() as s:
            items, token, total = notifications.list_deliveries(
                s, self.project_id, target_id=request.target_id, status=request.status,
                event_type=request.event_type, page_size=request.page_size,
                page_token=request.page_token)
            return notification_pb2.ListNotificationDeliveriesResponse(
                deliveries=[convert.notification_delivery(d) for d in items],
                next_page_token=token, total_count=total)

    def ListEvents(self, request: notification_pb2.ListEventsRequest,
                   context: grpc.ServicerContext) -> notification_pb2.ListEventsResponse:
        since = request.since.ToDatetime(tzinfo=dt.UTC) if request.HasField("since") else None
        with self.app.db.begin() as s:
            items, token, total = notifications.list_events(
                s, self.project_id, event_type=request.event_type,
                resource_id=request.resource_id, since=since, page_size=request.page_size,
                page_token=request.page_token, newest_first=request.newest_first)
            return notification_pb2.ListEventsResponse(
                events=[convert.event(e) for e in items], next_page_token=token,
                total_count=total)
