"""ProtectableService: thin translation to controller.services.protectables."""

from __future__ import annotations

import grpc

from cbr.v1 import common_pb2, protectable_pb2, protectable_pb2_grpc
from controller.api import convert
from controller.api.base import Servicer
from controller.services import protectables


def _pb(view: protectables.ProtectableView) -> protectable_pb2.Protectable:
    return convert.protectable(view.row, agent_name=view.row.agent_name,
                               agent_online=view.agent_online, vault_id=view.vault_id)


class ProtectableServicer(Servicer, protectable_pb2_grpc.ProtectableServiceServicer):
    def ListProtectables(self, request: protectable_pb2.ListProtectablesRequest,
                         context: grpc.ServicerContext
                         ) -> protectable_pb2.ListProtectablesResponse:
        f = protectables.ProtectableFilter(
            object_type=convert.optional_enum(common_pb2.ObjectType, request.type, "type"),
            agent_id=request.agent_id, name=request.name, protection=request.protection,
            status=convert.optional_enum(protectable_pb2.ProtectableStatus, request.status,
                                         "status"))
        with self.app.db.read() as conn:
            views, token, total = protectables.list_protectables(
                self.app, conn, self.project_id, f, request.page_size, request.page_token)
            return protectable_pb2.ListProtectablesResponse(
                protectables=[_pb(v) for v in views], next_page_token=token,
                total_count=total)

    def GetProtectable(self, request: protectable_pb2.GetProtectableRequest,
                       context: grpc.ServicerContext) -> protectable_pb2.GetProtectableResponse:
        with self.app.db.read() as conn:
            return protectable_pb2.GetProtectableResponse(protectable=_pb(
                protectables.get_protectable(self.app, conn, self.project_id,
                                             request.protectable_id)))
