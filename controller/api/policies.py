"""PolicyService: thin translation to controller.services.policies."""

from __future__ import annotations

from typing import Any

import grpc
from sqlalchemy import select

from cbr import errors
from cbr.v1 import policy_pb2, policy_pb2_grpc
from controller.api import convert
from controller.api.base import Servicer
from controller.persistence.models import Policy, VaultPolicy
from controller.services import paging, policies


class PolicyServicer(Servicer, policy_pb2_grpc.PolicyServiceServicer):
    def CreatePolicy(self, request: policy_pb2.CreatePolicyRequest,
                     context: grpc.ServicerContext) -> policy_pb2.CreatePolicyResponse:
        op = convert.require_enum(policy_pb2.PolicyOperationType, request.operation_type,
                                  "operation_type")
        with self.app.db.begin() as s:
            p = policies.create_policy(
                s, self.project_id, request.name, op, request.enabled,
                convert.operation_definition(request.operation_definition),
                list(request.trigger.pattern), self.now())
            return policy_pb2.CreatePolicyResponse(policy=convert.policy(p, []))

    def GetPolicy(self, request: policy_pb2.GetPolicyRequest,
                  context: grpc.ServicerContext) -> policy_pb2.GetPolicyResponse:
        with self.app.db.begin() as s:
            p = policies.get_policy(s, self.project_id, request.policy_id)
            return policy_pb2.GetPolicyResponse(
                policy=convert.policy(p, policies.vault_ids(s, p.id)))

    def ListPolicies(self, request: policy_pb2.ListPoliciesRequest,
                     context: grpc.ServicerContext) -> policy_pb2.ListPoliciesResponse:
        op = convert.optional_enum(policy_pb2.PolicyOperationType, request.operation_type,
                                   "operation_type")
        stmt = select(Policy).where(Policy.project_id == self.project_id)
        if op:
            stmt = stmt.where(Policy.operation_type == op)
        if request.vault_id:
            stmt = stmt.where(Policy.id.in_(select(VaultPolicy.policy_id).where(
                VaultPolicy.vault_id == request.vault_id)))
        with self.app.db.begin() as s:
            items, token, total = paging.paginate(s, stmt, Policy, request.page_size,
                                                  request.page_token)
            return policy_pb2.ListPoliciesResponse(
                policies=[convert.policy(p, policies.vault_ids(s, p.id)) for p in items],
                next_page_token=token, total_count=total)

    def UpdatePolicy(self, request: policy_pb2.UpdatePolicyRequest,
                     context: grpc.ServicerContext) -> policy_pb2.UpdatePolicyResponse:
        changes: dict[str, Any] = {}
        for path in request.update_mask.paths:
            if path == "name":
                changes["name"] = request.policy.name
            elif path == "enabled":
                changes["enabled"] = request.policy.enabled
            elif path == "operation_definition":
                changes[path] = convert.operation_definition(
                    request.policy.operation_definition)
            elif path in ("trigger", "trigger.pattern"):
                changes["trigger"] = list(request.policy.trigger.pattern)
            else:
                raise errors.InvalidParameter(
                    f"update_mask: {path!r} cannot change; updatable are name, enabled, "
                    "operation_definition, trigger.", field="update_mask")
        with self.app.db.begin() as s:
            p = policies.update_policy(s, self.project_id, request.policy_id, changes,
                                       self.now())
            return policy_pb2.UpdatePolicyResponse(
                policy=convert.policy(p, policies.vault_ids(s, p.id)))

    def DeletePolicy(self, request: policy_pb2.DeletePolicyRequest,
                     context: grpc.ServicerContext) -> policy_pb2.DeletePolicyResponse:
        with self.app.db.begin() as s:
            policies.delete_policy(s, self.project_id, request.policy_id)
        return policy_pb2.DeletePolicyResponse()
