"""PolicyService: thin translation to controller.services.policies."""

from __future__ import annotations

from typing import Any

import grpc

from cbr import errors
from cbr.v1 import policy_pb2, policy_pb2_grpc
from controller.api import convert
from controller.api.base import Servicer
from controller.persistence.vocabulary import PolicyOperationType
from controller.services import policies, policy_runs

NEXT_RUNS_SHOWN = 5


class PolicyServicer(Servicer, policy_pb2_grpc.PolicyServiceServicer):
    def _pb(self, view: policy_runs.PolicyView) -> policy_pb2.Policy:
        return convert.policy(view.policy, view.vault_ids, view.next_runs)

    def CreatePolicy(self, request: policy_pb2.CreatePolicyRequest,
                     context: grpc.ServicerContext) -> policy_pb2.CreatePolicyResponse:
        op = convert.require_enum(policy_pb2.PolicyOperationType, request.operation_type,
                                  "operation_type")
        with self.app.db.begin() as s:
            p = policies.create_policy(
                s, self.project_id, request.name, op, request.enabled,
                convert.operation_definition(request.operation_definition),
                list(request.trigger.pattern), self.now(),
                start_window_minutes=request.start_window_minutes,
                completion_window_minutes=request.completion_window_minutes)
            response = policy_pb2.CreatePolicyResponse(policy=self._pb(
                policy_runs.policy_view(s, p, self.now(), NEXT_RUNS_SHOWN)))
        self.policy_changed(response.policy.id)
        return response

    def GetPolicy(self, request: policy_pb2.GetPolicyRequest,
                  context: grpc.ServicerContext) -> policy_pb2.GetPolicyResponse:
        with self.app.db.begin() as s:
            p = policies.get_policy(s, self.project_id, request.policy_id)
            return policy_pb2.GetPolicyResponse(policy=self._pb(
                policy_runs.policy_view(s, p, self.now(), NEXT_RUNS_SHOWN)))

    def ListPolicies(self, request: policy_pb2.ListPoliciesRequest,
                     context: grpc.ServicerContext) -> policy_pb2.ListPoliciesResponse:
        op = convert.optional_enum(policy_pb2.PolicyOperationType, request.operation_type,
                                   "operation_type")
        with self.app.db.begin() as s:
            items, token, total = policies.list_policies(
                s, self.project_id, op, request.vault_id, request.page_size,
                request.page_token)
            return policy_pb2.ListPoliciesResponse(
                policies=[self._pb(policy_runs.policy_view(s, p, self.now(), NEXT_RUNS_SHOWN))
                          for p in items],
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
            elif path in ("start_window_minutes", "completion_window_minutes"):
                changes[path] = getattr(request.policy, path)
            else:
                raise errors.InvalidParameter(
                    f"update_mask: {path!r} cannot change; updatable are name, enabled, "
                    "operation_definition, trigger, start_window_minutes, "
                    "completion_window_minutes.", field="update_mask")
        with self.app.db.begin() as s:
            p = policies.update_policy(s, self.project_id, request.policy_id, changes,
                                       self.now())
            response = policy_pb2.UpdatePolicyResponse(policy=self._pb(
                policy_runs.policy_view(s, p, self.now(), NEXT_RUNS_SHOWN)))
        self.policy_changed(request.policy_id)
        return response

    def DeletePolicy(self, request: policy_pb2.DeletePolicyRequest,
                     context: grpc.ServicerContext) -> policy_pb2.DeletePolicyResponse:
        with self.app.db.begin() as s:
            policies.delete_policy(s, self.project_id, request.policy_id)
        self.policy_changed(request.policy_id)
        return policy_pb2.DeletePolicyResponse()

    def RunPolicyNow(self, request: policy_pb2.RunPolicyNowRequest,
                     context: grpc.ServicerContext) -> policy_pb2.RunPolicyNowResponse:
        with self.app.db.begin() as s:
            p = policies.runnable(s, self.project_id, request.policy_id)
            by_tasks = p.operation_type != PolicyOperationType.BACKUP
        scheduler = getattr(self.app, "scheduler", None)
        if scheduler is None:
            raise errors.NotImplementedYet(
                "This controller runs without its policy loop (it was started without a "
                "scheduler), so it cannot run a policy; run it on a controller that has one.")
        started = scheduler.run(request.policy_id, self.now(), manual=True)
        if by_tasks:
            return policy_pb2.RunPolicyNowResponse(task_ids=started)
        return policy_pb2.RunPolicyNowResponse(checkpoint_ids=started)

    def ListPolicyRuns(self, request: policy_pb2.ListPolicyRunsRequest,
                       context: grpc.ServicerContext) -> policy_pb2.ListPolicyRunsResponse:
        with self.app.db.begin() as s:
            items, token, _total = policy_runs.list_runs(s, self.project_id, request.policy_id,
                                                         request.page_size, request.page_token,
                                                         request.newest_first)
            return policy_pb2.ListPolicyRunsResponse(
                runs=[convert.policy_run(r) for r in items], next_page_token=token)
