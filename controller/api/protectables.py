"""ProtectableService: what the account's agents reported."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, cast

import grpc
from sqlalchemy import Connection, Table, bindparam, select

from cbr import errors
from cbr.v1 import common_pb2, protectable_pb2, protectable_pb2_grpc
from controller.api import convert
from controller.api.base import Servicer
from controller.persistence.models import Agent, Protectable, VaultResource
from controller.persistence.vocabulary import ProtectableStatus
from controller.services import agent_status, paging

_P = cast(Table, Protectable.__table__)
_A = cast(Table, Agent.__table__)
_VR = cast(Table, VaultResource.__table__)
# A protectable's columns and its agent's name: what the API shows, without the ORM.
_ROWS = select(*_P.c, _A.c.name.label("agent_name")).join(_A, _A.c.id == _P.c.agent_id)
_VAULT_OF = select(_VR.c.protectable_id, _VR.c.vault_id).where(
    _VR.c.protectable_id.in_(bindparam("ids", expanding=True)))
_BY_ID = _ROWS.where(_P.c.id == bindparam("protectable_id"))


@functools.cache
def _list_query(object_type: bool, agent: bool, name: bool, protection: str,
                status: str) -> paging.PagedQuery:
    """The list query of one filter shape, built once; values are bind parameters."""
    stmt = _ROWS.where(_P.c.project_id == bindparam("project_id"))
    if object_type:
        stmt = stmt.where(_P.c.object_type == bindparam("object_type"))
    if agent:
        stmt = stmt.where(_P.c.agent_id == bindparam("agent_id"))
    if name:
        stmt = stmt.where(_P.c.name == bindparam("name"))
    if protection == "protected":
        stmt = stmt.where(_P.c.id.in_(select(_VR.c.protectable_id)))
    elif protection == "unprotected":
        stmt = stmt.where(_P.c.id.not_in(select(_VR.c.protectable_id)))
    if status == ProtectableStatus.GONE:
        stmt = stmt.where(_P.c.gone.is_(True))
    elif status == ProtectableStatus.ERROR:
        stmt = stmt.where(_P.c.gone.is_(False), _P.c.error != "")
    elif status in (ProtectableStatus.AVAILABLE, ProtectableStatus.UNREACHABLE):
        online = _P.c.agent_id.in_(bindparam("online", expanding=True))
        stmt = stmt.where(_P.c.gone.is_(False), _P.c.error == "",
                          online if status == ProtectableStatus.AVAILABLE else ~online)
    return paging.PagedQuery(stmt, _P)


class ProtectableServicer(Servicer, protectable_pb2_grpc.ProtectableServiceServicer):
    def _to_pb(self, s: Connection, rows: Sequence[Any]) -> list[protectable_pb2.Protectable]:
        """Rows of _ROWS (the protectable and its agent's name)."""
        vault_of = {r.protectable_id: r.vault_id
                    for r in s.execute(_VAULT_OF, {"ids": [p.id for p in rows]})}
        online = agent_status.online_among(self.app, s, {p.agent_id for p in rows})
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
        query = _list_query(bool(object_type), bool(request.agent_id), bool(request.name),
                            request.protection, status)
        params: dict[str, Any] = {"project_id": self.project_id, "object_type": object_type,
                                  "agent_id": request.agent_id, "name": request.name}
        with self.app.db.read() as s:
            if status in (ProtectableStatus.AVAILABLE, ProtectableStatus.UNREACHABLE):
                params["online"] = sorted(agent_status.online_agent_ids(self.app, s))
            items, token, total = query.run(s, params, request.page_size, request.page_token)
            return protectable_pb2.ListProtectablesResponse(
                protectables=self._to_pb(s, items), next_page_token=token,
                total_count=total)

    def GetProtectable(self, request: protectable_pb2.GetProtectableRequest,
                       context: grpc.ServicerContext) -> protectable_pb2.GetProtectableResponse:
        with self.app.db.read() as s:
            p = s.execute(_BY_ID, {"protectable_id": request.protectable_id}).first()
            if p is None or p.project_id != self.project_id:
                raise errors.ResourceNotFound(
                    f"No protectable with id {request.protectable_id!r}.",
                    protectable_id=request.protectable_id)
            return protectable_pb2.GetProtectableResponse(protectable=self._to_pb(s, [p])[0])


