"""The overview: what is protected, how its last backups went, and what
needs a look (failures of the last day, vaults near capacity)."""

from __future__ import annotations

from aiohttp import web

from cbr.v1 import vault_pb2
from console import web as cw


async def page(request: web.Request) -> web.Response:
    api = cw.api(request)
    vaults = await api(api.stubs.vaults.ListVaults, vault_pb2.ListVaultsRequest(page_size=1000))
    return cw.render(request, "overview.html", vaults=vaults.vaults)
