"""Protectables as the API shows them: what the account's agents reported,
whether each agent is online, and which vault holds each.

The agent endpoint writes the inventory (``controller.services.agents``);
these are the reads. Listing protectables is among the hottest calls, so
they read Core rows with statements built once, not ORM objects.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Connection, Table, bindparam, select

from cbr import errors
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


@dataclass(frozen=True)
class ProtectableFilter:
    object_type: str = ""
    agent_id: str = ""
    name: str = ""
    protection: str = ""
    status: str = ""


@dataclass(frozen=True)
class ProtectableView:
    """A protectable row (its columns and ``agent_name``), whether its agent
    is online, and the vault holding it ("" when none does)."""

    row: Any
    agent_online: bool
    vault_id: str


def _views(app: Any, conn: Connection, rows: Sequence[Any]) -> list[ProtectableView]:
    vault_of = {r.protectable_id: r.vault_id
                for r in conn.execute(_VAULT_OF, {"ids": [p.id for p in rows]})}
    online = agent_status.online_among(app, conn, {p.agent_id for p in rows})
    return [ProtectableView(p, p.agent_id in online, vault_of.get(p.id, "")) for p in rows]


def list_protectables(app: Any, conn: Connection, project_id: str, f: ProtectableFilter,
                      page_size: int, page_token: str
                      ) -> tuple[list[ProtectableView], str, int]:
    """A page of the account's protectables matching f: (views, next_page_token, total)."""
    if f.protection not in ("", "protected", "unprotected"):
        raise errors.InvalidParameter("protection must be protected, unprotected or empty.",
                                      field="protection")
    query = _list_query(bool(f.object_type), bool(f.agent_id), bool(f.name), f.protection,
                        f.status)
    params: dict[str, Any] = {"project_id": project_id, "object_type": f.object_type,
                              "agent_id": f.agent_id, "name": f.name}
    if f.status in (ProtectableStatus.AVAILABLE, ProtectableStatus.UNREACHABLE):
        params["online"] = sorted(agent_status.online_agent_ids(app, conn))
    items, token, total = query.run(conn, params, page_size, page_token)
    return _views(app, conn, items), token, total


def get_protectable(app: Any, conn: Connection, project_id: str,
                    protectable_id: str) -> ProtectableView:
    p = conn.execute(_BY_ID, {"protectable_id": protectable_id}).first()
    if p is None or p.project_id != project_id:
        raise errors.ResourceNotFound(
            f"No protectable with id {protectable_id!r}.", protectable_id=protectable_id)
    return _views(app, conn, [p])[0]
