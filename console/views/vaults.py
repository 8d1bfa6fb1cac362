"""Vaults: the list with usage against capacity, and creating one."""

from __future__ import annotations

from aiohttp import web

from cbr.v1 import common_pb2, vault_pb2
from console import web as cw

OBJECT_TYPES = {"server": common_pb2.OBJECT_TYPE_SERVER, "disk": common_pb2.OBJECT_TYPE_DISK,
                "turbo": common_pb2.OBJECT_TYPE_TURBO}


def add_routes(app: web.Application) -> None:
    app.router.add_get("/vaults", list_page)
    app.router.add_post("/vaults", create)


async def list_page(request: web.Request) -> web.Response:
    api = cw.api(request)
    vaults = await api(api.stubs.vaults.ListVaults, vault_pb2.ListVaultsRequest(page_size=1000))
    return cw.render(request, "vaults.html", vaults=vaults.vaults, object_types=OBJECT_TYPES)


async def create(request: web.Request) -> web.Response:
    api = cw.api(request)
    form = await request.post()
    protect = (vault_pb2.PROTECT_TYPE_REPLICATION if form.get("protect_type") == "replication"
               else vault_pb2.PROTECT_TYPE_BACKUP)
    try:
        size_gb = int(str(form.get("size_gb", "0")) or 0)
    except ValueError:
        size_gb = -1  # the API names the field and its range
    request_ = vault_pb2.CreateVaultRequest(
        name=str(form.get("name", "")), description=str(form.get("description", "")),
        object_type=OBJECT_TYPES.get(str(form.get("object_type", "")),
                                     common_pb2.OBJECT_TYPE_UNSPECIFIED),
        protect_type=protect, size_gb=size_gb)
    await api(api.stubs.vaults.CreateVault, request_)
    return cw.redirect(request, "/vaults")
