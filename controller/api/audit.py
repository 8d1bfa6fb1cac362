"""AuditService: the audit trail of the caller's account."""

from __future__ import annotations

import grpc

from cbr.v1 import audit_pb2, audit_pb2_grpc
from controller.api import convert
from controller.api.base import Servicer
from controller.services import audit


class AuditServicer(Servicer, audit_pb2_grpc.AuditServiceServicer):
    def ListAuditRecords(self, request: audit_pb2.ListAuditRecordsRequest,
                         context: grpc.ServicerContext) -> audit_pb2.ListAuditRecordsResponse:
        f = audit.AuditFilter(
            action=request.action, user_id=request.user_id,
            access_key_id=request.access_key_id, resource_id=request.resource_id,
            result=convert.optional_enum(audit_pb2.AuditResult, request.result, "result"),
            since=convert.from_ts(request.since, request.HasField("since")),
            until=convert.from_ts(request.until, request.HasField("until")),
            newest_first=request.newest_first)
        # This controller's own queued records first: a caller reads its calls at once.
        if self.app.audit is not None:
            self.app.audit.flush()
        with self.app.db.read() as conn:
            rows, token, total = audit.list_records(conn, self.caller, f, request.page_size,
                                                    request.page_token)
            return audit_pb2.ListAuditRecordsResponse(
                records=[convert.audit_record(r) for r in rows], next_page_token=token,
                total_count=total)
