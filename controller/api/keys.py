"""KeyService: thin translation to controller.services.keys."""

from __future__ import annotations

import grpc

from cbr.v1 import key_pb2, key_pb2_grpc
from controller.api import convert
from controller.api.base import Servicer
from controller.services import keys


class KeyServicer(Servicer, key_pb2_grpc.KeyServiceServicer):
    def CreateKey(self, request: key_pb2.CreateKeyRequest,
                  context: grpc.ServicerContext) -> key_pb2.CreateKeyResponse:
        with self.app.db.begin() as s:
            view = keys.create_key(s, self.app.root_key, self.project_id, alias=request.alias,
                                   description=request.description,
                                   material=request.key_material, now=self.now())
            return key_pb2.CreateKeyResponse(key=convert.key(view))

    def GetKey(self, request: key_pb2.GetKeyRequest,
               context: grpc.ServicerContext) -> key_pb2.GetKeyResponse:
        with self.app.db.begin() as s:
            view = keys.get_key(s, self.project_id, request.key_id, self.now())
            return key_pb2.GetKeyResponse(key=convert.key(view))

    def ListKeys(self, request: key_pb2.ListKeysRequest,
                 context: grpc.ServicerContext) -> key_pb2.ListKeysResponse:
        state = convert.optional_enum(key_pb2.KeyState, request.state, "state")
        with self.app.db.begin() as s:
            views, token, total = keys.list_keys(s, self.project_id, state, request.page_size,
                                                 request.page_token, self.now())
            return key_pb2.ListKeysResponse(keys=[convert.key(v) for v in views],
                                            next_page_token=token, total_count=total)

    def DisableKey(self, request: key_pb2.DisableKeyRequest,
                   context: grpc.ServicerContext) -> key_pb2.DisableKeyResponse:
        with self.app.db.begin() as s:
            view = keys.disable_key(s, self.project_id, request.key_id, self.now())
            return key_pb2.DisableKeyResponse(key=convert.key(view))

    def EnableKey(self, request: key_pb2.EnableKeyRequest,
                  context: grpc.ServicerContext) -> key_pb2.EnableKeyResponse:
        with self.app.db.begin() as s:
            view = keys.enable_key(s, self.project_id, request.key_id, self.now())
            return key_pb2.EnableKeyResponse(key=convert.key(view))

    def ScheduleKeyDeletion(self, request: key_pb2.ScheduleKeyDeletionRequest,
                            context: grpc.ServicerContext
                            ) -> key_pb2.ScheduleKeyDeletionResponse:
        with self.app.db.begin() as s:
            view = keys.schedule_deletion(s, self.project_id, request.key_id,
                                          request.pending_days, self.now())
            return key_pb2.ScheduleKeyDeletionResponse(key=convert.key(view))

    def CancelKeyDeletion(self, request: key_pb2.CancelKeyDeletionRequest,
                          context: grpc.ServicerContext) -> key_pb2.CancelKeyDeletionResponse:
        with self.app.db.begin() as s:
            view = keys.cancel_deletion(s, self.project_id, request.key_id, self.now())
            return key_pb2.CancelKeyDeletionResponse(key=convert.key(view))

    def ShareKey(self, request: key_pb2.ShareKeyRequest,
                 context: grpc.ServicerContext) -> key_pb2.ShareKeyResponse:
        with self.app.db.begin() as s:
            view = keys.share_key(s, self.project_id, request.key_id, request.account_id,
                                  self.now())
            return key_pb2.ShareKeyResponse(key=convert.key(view))

    def UnshareKey(self, request: key_pb2.UnshareKeyRequest,
                   context: grpc.ServicerContext) -> key_pb2.UnshareKeyResponse:
        with self.app.db.begin() as s:
            view = keys.unshare_key(s, self.project_id, request.key_id, request.account_id,
                                    self.now())
            return key_pb2.UnshareKeyResponse(key=convert.key(view))
