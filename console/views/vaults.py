"""Vaults: the list with usage against capacity, creating one, and a vault's
page: its resources, its policies, back up now, its settings, deleting it.

Each control is one API call (the CLI's `cbr vault ...` and `cbr backup
create`), so what the page refuses is what the API refuses, in its words.
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from google.protobuf import field_mask_pb2

from cbr.v1 import backup_pb2, common_pb2, policy_pb2, protectable_pb2, vault_pb2
from console import web as cw

OBJECT_TYPES = {"server": common_pb2.OBJECT_TYPE_SERVER, "disk": common_pb2.OBJECT_TYPE_DISK,
                "turbo": common_pb2.OBJECT_TYPE_TURBO}
PAGE = 1000  # the API's largest page: one call lists what a page shows
SETTINGS = ("size_gb", "threshold", "auto_expand")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/vaults", list_page)
    app.router.add_post("/vaults", create)
    app.router.add_get("/vaults/{vault_id}", detail)
    app.router.add_post("/vaults/{vault_id}/resources", add_resources)
    app.router.add_post("/vaults/{vault_id}/resources/remove", remove_resource)
    app.router.add_post("/vaults/{vault_id}/policies", bind_policy)
    app.router.add_post("/vaults/{vault_id}/policies/remove", unbind_policy)
    app.router.add_post("/vaults/{vault_id}/backup", back_up_now)
    app.router.add_post("/vaults/{vault_id}/settings", update_settings)
    app.router.add_get("/vaults/{vault_id}/delete", delete_confirm)
    app.router.add_post("/vaults/{vault_id}/delete", delete)


async def list_page(request: web.Request) -> web.Response:
    api = cw.api(request)
    vaults = await api(api.stubs.vaults.ListVaults, vault_pb2.ListVaultsRequest(page_size=PAGE))
    return cw.render(request, "vaults.html", vaults=vaults.vaults, object_types=OBJECT_TYPES)


async def create(request: web.Request) -> web.Response:
    api = cw.api(request)
    form = await request.post()
    protect = (vault_pb2.PROTECT_TYPE_REPLICATION if form.get("protect_type") == "replication"
               else vault_pb2.PROTECT_TYPE_BACKUP)
    request_ = vault_pb2.CreateVaultRequest(
        name=str(form.get("name", "")), description=str(form.get("description", "")),
        object_type=OBJECT_TYPES.get(str(form.get("object_type", "")),
                                     common_pb2.OBJECT_TYPE_UNSPECIFIED),
        protect_type=protect, size_gb=cw.form_number(form, "size_gb"))
    await api(api.stubs.vaults.CreateVault, request_)
    return cw.redirect(request, "/vaults")


async def detail(request: web.Request) -> web.Response:
    return await _detail_page(request, request.match_info["vault_id"])


async def _detail_page(request: web.Request, vault_id: str,
                       skipped: backup_pb2.Checkpoint | None = None) -> web.Response:
    api = cw.api(request)
    vault = (await api(api.stubs.vaults.GetVault,
                       vault_pb2.GetVaultRequest(vault_id=vault_id))).vault
    unprotected, policies = await asyncio.gather(
        api.optional(api.stubs.protectables.ListProtectables,
                  protectable_pb2.ListProtectablesRequest(
                      page_size=PAGE, type=vault.object_type, protection="unprotected")),
        api.optional(api.stubs.policies.ListPolicies,
                  policy_pb2.ListPoliciesRequest(page_size=PAGE)))
    every = list(policies.policies) if policies is not None else []
    bound = [p for p in every if vault.id in p.vault_ids]
    return cw.render(
        request, "vault.html", vault=vault,
        unprotected=list(unprotected.protectables) if unprotected is not None else [],
        bound=bound, bindable=[p for p in every if vault.id not in p.vault_ids],
        skipped=skipped)


def _vault_page(vault_id: str) -> str:
    return f"/vaults/{vault_id}"


async def add_resources(request: web.Request) -> web.Response:
    api = cw.api(request)
    vault_id = request.match_info["vault_id"]
    form = await request.post()
    ids = [str(v) for v in form.getall("resource_id", []) if str(v)]
    await api(api.stubs.vaults.AddVaultResources, vault_pb2.AddVaultResourcesRequest(
        vault_id=vault_id, resources=[vault_pb2.ResourceSpec(id=i) for i in ids]))
    return cw.redirect(request, _vault_page(vault_id))


async def remove_resource(request: web.Request) -> web.Response:
    api = cw.api(request)
    vault_id = request.match_info["vault_id"]
    form = await request.post()
    await api(api.stubs.vaults.RemoveVaultResources, vault_pb2.RemoveVaultResourcesRequest(
        vault_id=vault_id, resource_ids=[str(form.get("resource_id", ""))]))
    return cw.redirect(request, _vault_page(vault_id))


async def bind_policy(request: web.Request) -> web.Response:
    api = cw.api(request)
    vault_id = request.match_info["vault_id"]
    form = await request.post()
    await api(api.stubs.vaults.AssociateVaultPolicy, vault_pb2.AssociateVaultPolicyRequest(
        vault_id=vault_id, policy_id=str(form.get("policy_id", "")),
        destination_vault_id=str(form.get("destination_vault_id", "")).strip()))
    return cw.redirect(request, _vault_page(vault_id))


async def unbind_policy(request: web.Request) -> web.Response:
    api = cw.api(request)
    vault_id = request.match_info["vault_id"]
    form = await request.post()
    await api(api.stubs.vaults.DissociateVaultPolicy, vault_pb2.DissociateVaultPolicyRequest(
        vault_id=vault_id, policy_id=str(form.get("policy_id", ""))))
    return cw.redirect(request, _vault_page(vault_id))


async def back_up_now(request: web.Request) -> web.Response:
    """A manual checkpoint of the vault (or one of its resources), as `cbr
    backup create`; then the task that runs it, or the vault's tasks when
    it started several."""
    api = cw.api(request)
    vault_id = request.match_info["vault_id"]
    form = await request.post()
    resource_id = str(form.get("resource_id", ""))
    checkpoint = (await api(api.stubs.backups.CreateCheckpoint, backup_pb2.CreateCheckpointRequest(
        vault_id=vault_id, resource_ids=[resource_id] if resource_id else [],
        full=form.get("full") == "on"))).checkpoint
    tasks = list(checkpoint.task_ids)
    if len(tasks) == 1:
        return cw.redirect(request, f"/tasks/{tasks[0]}")
    if tasks:
        return cw.redirect(request, f"/tasks?vault_id={vault_id}")
    # Nothing started: every resource was skipped; say why, on the vault's page.
    if cw.is_htmx(request):
        return cw.render(request, "vault_skipped.html", checkpoint=checkpoint)
    return await _detail_page(request, vault_id, skipped=checkpoint)


async def update_settings(request: web.Request) -> web.Response:
    api = cw.api(request)
    vault_id = request.match_info["vault_id"]
    form = await request.post()
    vault = vault_pb2.Vault(size_gb=cw.form_number(form, "size_gb"),
                            threshold=cw.form_number(form, "threshold"),
                            auto_expand=form.get("auto_expand") == "on")
    await api(api.stubs.vaults.UpdateVault, vault_pb2.UpdateVaultRequest(
        vault_id=vault_id, vault=vault, update_mask=field_mask_pb2.FieldMask(paths=SETTINGS)))
    return cw.redirect(request, _vault_page(vault_id))


async def delete_confirm(request: web.Request) -> web.Response:
    """Deleting a vault deletes its backups: a page of its own says so first."""
    api = cw.api(request)
    vault = (await api(api.stubs.vaults.GetVault, vault_pb2.GetVaultRequest(
        vault_id=request.match_info["vault_id"]))).vault
    return cw.render(request, "vault_delete.html", vault=vault, error="")


async def delete(request: web.Request) -> web.Response:
    api = cw.api(request)
    vault_id = request.match_info["vault_id"]
    form = await request.post()
    if str(form.get("confirm_name", "")) != str(form.get("name", "")) or not form.get("name"):
        vault = (await api(api.stubs.vaults.GetVault,
                           vault_pb2.GetVaultRequest(vault_id=vault_id))).vault
        return cw.render(request, "vault_delete.html", status=400, vault=vault,
                         error="Type the vault's name to confirm.")
    done = await api(api.stubs.vaults.DeleteVault, vault_pb2.DeleteVaultRequest(
        vault_id=vault_id))
    return cw.redirect(request, f"/tasks/{done.task_id}" if done.task_id else "/vaults")
