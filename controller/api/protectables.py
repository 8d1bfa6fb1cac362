"""ProtectableService: what the account's agents reported."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
from sqlalchemy import Connection, Select, select

from cbr import errors
from cbr.v1 import common_pb2, protectable_pb2, protectable_pb2_grpc
from controller.api import convert
from controller.api.base import Servicer
from controller.persistence.models import Agent, Protectable, VaultResource
from controller.services import agent_status, paging

# A protectable's columns and its agent's name: what the API shows, without the
# ORM; built once (statements are immutable, filters make new ones).
_ROWS = select(*Protectable.__table__.c, Agent.__table__.c.name.label("agent_name")).join(
    Agent.__table__, Agent.__table__.c.id == Protectable.__table__.c.agent_id)


def _select() -> Select[Any]:
    return _ROWS


class ProtectableServicer(Servicer, protectable_pb2_grpc.ProtectableServiceServicer):
    def _to_pb(self, s: Connection, rows: Sequence[Any]) -> list[protectable_pb2.Protectable]:
        """Rows selected with COLUMNS (the protectable and its agent's name)."""
        ids = [p.id for p in rows]
        vault_of = dict(s.execute(select(VaultResource.protectable_id, VaultResource.vault_id)
                                  .where(VaultResource.protectable_id.in_(ids))).tuples().all())
        online = agent_status.online_agent_ids(self.app, s)
        return [convert.protectable(p, agent_name=p.agent_name, agent_online=p.agent_id in online,
                                    vault_id=vault_of.get(p.id, "")) for p in rows]

    def ListProtectables(self, request: protectable_pb2.ListProtectablesRequest,
                         context: grpc.ServicerContext
                         ) -> protectable_pb2.ListProtectablesResponse:
        object_type = convert.optional_enum(common_pb2.ObjectType, request.type, "type")
        status = convert.optional_enum(protectable_pb2.ProtectableStatus, request.status,
                                       "status")
        if request.protection not in ("", "protected", "unprotected"):
            raise errors.InvalidParameter("protection must be protected, unprotected or empty.",
                                          field="protection")
        stmt = _select().where(Protectable.project_id == self.project_id)
        if object_type:
            stmt = stmt.where(Protectable.object_type == object_type)
        if request.agent_id:
            stmt = stmt.where(Protectable.agent_id == request.agent_id)
        if request.name:
            stmt = stmt.where(Protectable.name == request.name)
        in_vault = select(VaultResource.protectable_id)
        if request.protection == "protected":
            stmt = stmt.where(Protectable.id.in_(in_vault))
        elif request.protection == "unprotected":
            stmt = stmt.where(Protectable.id.not_in(in_vault))
        if status == "gone":
            stmt = stmt.where(Protectable.gone.is_(True))
        elif status == "error":
            stmt = stmt.where(Protectable.gone.is_(False), Protectable.error != "")
        with self.app.db.read() as s:
            if status in ("available", "unreachable"):
                cond = Protectable.agent_id.in_(agent_status.online_agent_ids(self.app, s))
                stmt = stmt.where(Protectable.gone.is_(False), Protectable.error == "",
                                  cond if status == "available" else ~cond)
            items, token, total = paging.paginate(s, stmt, Protectable, request.page_size,
                                                  request.page_token, rows=True)
            return protectable_pb2.ListProtectablesResponse(
                protectables=self._to_pb(s, items), next_page_token=token,
                total_count=total)

    def GetProtectable(self, request: protectable_pb2.GetProtectableRequest,
                       context: grpc.ServicerContext) -> protectable_pb2.GetProtectableResponse:
        with self.app.db.read() as s:
            p = s.execute(_select().where(Protectable.id == request.protectable_id)).first()
            if p is None or p.project_id != self.project_id:
                raise errors.ResourceNotFound(
                    f"No protectable with id {request.protectable_id!r}.",
                    protectable_id=request.protectable_id)
            return protectable_pb2.GetProtectableResponse(protectable=self._to_pb(s, [p])[0])


