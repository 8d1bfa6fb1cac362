"""VaultService: thin translation to controller.services.vaults."""

from __future__ import annotations

from typing import Any

import grpc

from cbr import errors
from cbr.v1 import common_pb2, vault_pb2, vault_pb2_grpc
from controller.api import convert
from controller.api.base import Servicer
from controller.persistence.vocabulary import ConsistentLevel, OperationType, ProtectType
from controller.services import deletions, keys, vaults


def _resources(specs: Any) -> list[vaults.ResourceRequest]:
    return [vaults.ResourceRequest(r.id, list(r.exclude_volumes), list(r.include_volumes))
            for r in specs]


def _vault_pb(view: vaults.VaultView) -> vault_pb2.Vault:
    return convert.vault(view.vault, view.resources, view.bindings, view.last_backups)


class VaultServicer(Servicer, vault_pb2_grpc.VaultServiceServicer):
    def CreateVault(self, request: vault_pb2.CreateVaultRequest,
                    context: grpc.ServicerContext) -> vault_pb2.CreateVaultResponse:
        spec = vaults.VaultSpec(
            name=request.name,
            object_type=convert.require_enum(common_pb2.ObjectType, request.object_type,
                                             "object_type"),
            protect_type=convert.require_enum(vault_pb2.ProtectType, request.protect_type,
                                              "protect_type", default=ProtectType.BACKUP),
            consistent_level=convert.require_enum(
                vault_pb2.ConsistentLevel, request.consistent_level, "consistent_level",
                default=ConsistentLevel.CRASH_CONSISTENT),
            description=request.description, size_gb=request.size_gb,
            auto_expand=request.auto_expand, threshold=request.threshold,
            backup_name_prefix=request.backup_name_prefix,
            tags=convert.tags_from_pb(request.tags), auto_bind=request.auto_bind,
            bind_rules=convert.tags_from_pb(request.bind_rules),
            resources=_resources(request.resources), backup_policy_id=request.backup_policy_id,
            encrypted=request.encrypted, kms_key_id=request.kms_key_id)
        with self.app.db.begin() as s:
            vault = vaults.create_vault(s, self.project_id, self.app.config.region, spec,
                                        self.now())
            # The storage is written first; the catalog row commits only after.
            vault.storage_url = self.app.storage.url_for_new_vault(
                vault.id, request.storage_url, vaults.storage_urls(s))
            key = keys.vault_key(s, self.app.root_key, vault, self.now())
            self.app.storage.init_vault(vault.storage_url, vault.id, self.now(), key)
            return vault_pb2.CreateVaultResponse(
                vault=_vault_pb(vaults.vault_view(s, self.project_id, vault.id)))

    def GetVault(self, request: vault_pb2.GetVaultRequest,
                 context: grpc.ServicerContext) -> vault_pb2.GetVaultResponse:
        with self.app.db.read() as conn:
            return vault_pb2.GetVaultResponse(
                vault=_vault_pb(vaults.vault_view(conn, self.project_id, request.vault_id)))

    def ListVaults(self, request: vault_pb2.ListVaultsRequest,
                   context: grpc.ServicerContext) -> vault_pb2.ListVaultsResponse:
        f = vaults.VaultFilter(
            name=request.name,
            object_type=convert.optional_enum(common_pb2.ObjectType, request.object_type,
                                              "object_type"),
            protect_type=convert.optional_enum(vault_pb2.ProtectType, request.protect_type,
                                               "protect_type"),
            status=convert.optional_enum(vault_pb2.VaultStatus, request.status, "status"),
            policy_id=request.policy_id, resource_id=request.resource_id)
        with self.app.db.read() as conn:
            views, token, total = vaults.list_vaults(conn, self.project_id, f,
                                                     request.page_size, request.page_token)
            return vault_pb2.ListVaultsResponse(
                vaults=[_vault_pb(v) for v in views],
                next_page_token=token, total_count=total)

    def UpdateVault(self, request: vault_pb2.UpdateVaultRequest,
                    context: grpc.ServicerContext) -> vault_pb2.UpdateVaultResponse:
        changes: dict[str, Any] = {}
        v = request.vault
        vaults.refuse_encryption_change(set(request.update_mask.paths), request.vault_id)
        for path in request.update_mask.paths:
            if path in ("tags", "bind_rules"):
                changes[path] = convert.tags_from_pb(getattr(v, path))
            elif path == "status":
                changes[path] = convert.require_enum(
                    vault_pb2.VaultStatus, v.status, "status",
                    allowed=vaults.SETTABLE_STATUSES)
            elif path in vaults.UPDATABLE:
                changes[path] = getattr(v, path)
            else:
                raise errors.InvalidParameter(
                    f"update_mask: {path!r} cannot change. Updatable: "
                    f"{', '.join(sorted(vaults.UPDATABLE))}.", field="update_mask")
        with self.app.db.begin() as s:
            vault = vaults.update_vault(s, self.project_id, request.vault_id, changes,
                                        self.now())
            return vault_pb2.UpdateVaultResponse(
                vault=_vault_pb(vaults.vault_view(s, self.project_id, vault.id)))

    def DeleteVault(self, request: vault_pb2.DeleteVaultRequest,
                    context: grpc.ServicerContext) -> vault_pb2.DeleteVaultResponse:
        with self.app.db.begin() as s:
            task_id = deletions.start_vault_delete(s, self.project_id, request.vault_id,
                                              self.now())
        self.maintenance.submit(task_id)
        return vault_pb2.DeleteVaultResponse(task_id=task_id)

    def AddVaultResources(self, request: vault_pb2.AddVaultResourcesRequest,
                          context: grpc.ServicerContext) -> vault_pb2.AddVaultResourcesResponse:
        with self.app.db.begin() as s:
            added = vaults.add_resources(s, self.project_id, request.vault_id,
                                         _resources(request.resources), self.now())
            return vault_pb2.AddVaultResourcesResponse(
                add_resource_ids=added,
                vault=_vault_pb(vaults.vault_view(s, self.project_id, request.vault_id)))

    def RemoveVaultResources(
            self, request: vault_pb2.RemoveVaultResourcesRequest,
            context: grpc.ServicerContext) -> vault_pb2.RemoveVaultResourcesResponse:
        with self.app.db.begin() as s:
            task_ids = deletions.start_remove_resources(s, self.project_id, request.vault_id,
                                                   list(request.resource_ids), self.now())
        for task_id in task_ids:
            self.maintenance.submit(task_id)
        return vault_pb2.RemoveVaultResourcesResponse(
            remove_resource_ids=list(request.resource_ids), task_ids=task_ids)

    def AssociateVaultPolicy(
            self, request: vault_pb2.AssociateVaultPolicyRequest,
            context: grpc.ServicerContext) -> vault_pb2.AssociateVaultPolicyResponse:
        with self.app.db.begin() as s:
            vault = vaults.associate_policy(s, self.project_id, request.vault_id,
                                            request.policy_id, request.destination_vault_id,
                                            self.now())
            response = vault_pb2.AssociateVaultPolicyResponse(
                vault=_vault_pb(vaults.vault_view(s, self.project_id, vault.id)))
        self.policy_changed(request.policy_id)
        return response

    def DissociateVaultPolicy(
            self, request: vault_pb2.DissociateVaultPolicyRequest,
            context: grpc.ServicerContext) -> vault_pb2.DissociateVaultPolicyResponse:
        with self.app.db.begin() as s:
            vault = vaults.dissociate_policy(s, self.project_id, request.vault_id,
                                             request.policy_id, self.now())
            response = vault_pb2.DissociateVaultPolicyResponse(
                vault=_vault_pb(vaults.vault_view(s, self.project_id, vault.id)))
        self.policy_changed(request.policy_id)
        return response

    def VerifyVault(self, request: vault_pb2.VerifyVaultRequest,
                    context: grpc.ServicerContext) -> vault_pb2.VerifyVaultResponse:
        with self.app.db.begin() as s:
            task_id = vaults.start_maintenance(s, self.project_id, request.vault_id,
                                               OperationType.VERIFY,
                                               self.now(), read_data=request.read_data,
                                               read_data_subset=request.read_data_subset)
        self.maintenance.submit(task_id)
        return vault_pb2.VerifyVaultResponse(task_id=task_id)

    def PruneVault(self, request: vault_pb2.PruneVaultRequest,
                   context: grpc.ServicerContext) -> vault_pb2.PruneVaultResponse:
        with self.app.db.begin() as s:
            task_id = vaults.start_maintenance(s, self.project_id, request.vault_id,
                                               OperationType.PRUNE,
                                               self.now())
        self.maintenance.submit(task_id)
        return vault_pb2.PruneVaultResponse(task_id=task_id)

    def RepairVault(self, request: vault_pb2.RepairVaultRequest,
                    context: grpc.ServicerContext) -> vault_pb2.RepairVaultResponse:
        with self.app.db.begin() as s:
            task_id = vaults.start_maintenance(s, self.project_id, request.vault_id,
                                               OperationType.REPAIR,
                                               self.now(), dry_run=request.dry_run)
        self.maintenance.submit(task_id)
        return vault_pb2.RepairVaultResponse(task_id=task_id)

    def ImportVaultStorage(
            self, request: vault_pb2.ImportVaultStorageRequest,
            context: grpc.ServicerContext) -> vault_pb2.ImportVaultStorageResponse:
        result = self.maintenance.import_storage(
            self.project_id, request.storage_url, request.name, request.size_gb,
            request.kms_key_id)
        with self.app.db.read() as conn:
            vault = _vault_pb(vaults.vault_view(conn, self.project_id, result.vault_id))
        return vault_pb2.ImportVaultStorageResponse(
            vault=vault, imported_backups=result.imported, warnings=result.warnings)
