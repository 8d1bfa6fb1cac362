"""Vaults and the resources in them, with the reference's rules.

A resource sits in at most one vault (6103, also a unique key in the
database), matches the vault's object type (6102), and is not added twice
(6104); vault names are unique per account (6106); resource and policy
changes need an available vault (6112).
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import Connection, Table, bindparam, func, select
from sqlalchemy.orm import Session

from cbr import errors, limits
from cbr.repo.maintenance.subset import DataSubset
from controller.persistence.models import (
    Backup,
    Policy,
    Protectable,
    Task,
    Vault,
    VaultPolicy,
    VaultResource,
)
from controller.persistence.vocabulary import (
    ConsistentLevel,
    ObjectType,
    OperationType,
    PolicyOperationType,
    ProtectStatus,
    ProtectType,
    VaultStatus,
)
from controller.services import capacity, keys, paging, tasks, validation

# Statuses an owner may set by UpdateVault (in the order error messages name them).
SETTABLE_STATUSES = (VaultStatus.AVAILABLE, VaultStatus.LOCK, VaultStatus.FROZEN)


@dataclass
class ResourceRequest:
    id: str
    exclude_volumes: list[str] = field(default_factory=list)
    include_volumes: list[str] = field(default_factory=list)


@dataclass
class VaultSpec:
    name: str
    object_type: str
    protect_type: str = ProtectType.BACKUP
    consistent_level: str = ConsistentLevel.CRASH_CONSISTENT
    description: str = ""
    size_gb: int = 0
    auto_expand: bool = False
    threshold: int = 0
    backup_name_prefix: str = ""
    tags: list[dict[str, str]] = field(default_factory=list)
    auto_bind: bool = False
    bind_rules: list[dict[str, str]] = field(default_factory=list)
    resources: list[ResourceRequest] = field(default_factory=list)
    backup_policy_id: str = ""
    encrypted: bool = False
    kms_key_id: str = ""


def _check_status(vault: Vault, allowed: tuple[str, ...], doing: str) -> None:
    if vault.status not in allowed:
        raise errors.VaultStatusIllegal(
            f"allow status: {', '.join(allowed)}. Vault {vault.name!r} is {vault.status}; "
            f"it cannot {doing} now.", vault_id=vault.id, status=vault.status)


def _check_prefix(prefix: str) -> str:
    if len(prefix) > 32 or (prefix and not prefix.replace("_", "").replace("-", "").isalnum()):
        raise errors.InvalidParameter(
            "backup_name_prefix must be up to 32 letters, digits, '_' or '-'.",
            field="backup_name_prefix")
    return prefix


def get_vault(session: Session, project_id: str, vault_id: str, *, lock: bool = False) -> Vault:
    vault = session.get(Vault, vault_id, with_for_update=lock) if vault_id else None
    if vault is None or vault.project_id != project_id:
        raise errors.VaultNotFound(f"No vault with id {vault_id!r}.", vault_id=vault_id)
    return vault


def create_vault(session: Session, project_id: str, region: str, spec: VaultSpec,
                 now: dt.datetime, *, vault_id: str | None = None) -> Vault:
    validation.name(spec.name)
    validation.description(spec.description)
    validation.int_range(spec.size_gb, limits.VAULT_SIZE_GB_MIN, limits.VAULT_SIZE_GB_MAX,
                         "size_gb")
    threshold = spec.threshold or limits.VAULT_THRESHOLD_DEFAULT
    validation.int_range(threshold, 1, 100, "threshold")
    validation.tags(spec.tags)
    validation.tags(spec.bind_rules, "bind_rules")
    _check_prefix(spec.backup_name_prefix)
    if spec.consistent_level == ConsistentLevel.APP_CONSISTENT \
            and spec.object_type != ObjectType.SERVER:
        raise errors.InvalidParameter(
            "consistent_level app_consistent is only for server vaults.",
            field="consistent_level")
    if spec.protect_type == ProtectType.REPLICATION and spec.object_type == ObjectType.DISK:
        raise errors.InvalidParameter(
            "Disk backups cannot be replicated, so a replication vault must hold servers or "
            "file systems (turbo).", field="protect_type")
    if spec.protect_type == ProtectType.REPLICATION and (spec.resources or spec.auto_bind):
        raise errors.InvalidParameter(
            "A replication vault receives replicas; it takes no resources and no auto_bind.",
            field="resources")
    if spec.kms_key_id and not spec.encrypted:
        raise errors.InvalidParameter("kms_key_id is for encrypted vaults; set encrypted too.",
                                      field="kms_key_id")
    if spec.encrypted:
        keys.key_for_new_vault(session, project_id, spec.kms_key_id, spec.protect_type, now)
    taken = select(Vault.id).where(Vault.project_id == project_id, Vault.name == spec.name)
    if session.scalar(taken) is not None:
        raise errors.DuplicateVault(f"A vault named {spec.name!r} exists in this account.",
                                    name=spec.name)
    vault = Vault(
        project_id=project_id, name=spec.name, description=spec.description,
        object_type=spec.object_type, protect_type=spec.protect_type,
        consistent_level=spec.consistent_level, status=VaultStatus.AVAILABLE,
        size_gb=spec.size_gb,
        used_bytes=0, auto_expand=spec.auto_expand, threshold=threshold,
        backup_name_prefix=spec.backup_name_prefix, tags=spec.tags, auto_bind=spec.auto_bind,
        bind_rules=spec.bind_rules, region=region, encrypted=spec.encrypted,
        kms_key_id=spec.kms_key_id if spec.encrypted else "", created_at=now, updated_at=now)
    if vault_id:
        vault.id = vault_id
    session.add(vault)
    session.flush()
    if spec.resources:
        add_resources(session, project_id, vault.id, spec.resources, now)
    if spec.backup_policy_id:
        associate_policy(session, project_id, vault.id, spec.backup_policy_id, "", now)
    return vault


@dataclass(frozen=True)
class VaultFilter:
    name: str = ""
    object_type: str = ""
    protect_type: str = ""
    status: str = ""
    policy_id: str = ""
    resource_id: str = ""


@functools.cache
def _vault_list(name: bool, object_type: bool, protect_type: bool, status: bool,
                policy: bool, resource: bool) -> paging.PagedQuery:
    """The list query of one filter shape; values come as bind parameters."""
    v = cast(Table, Vault.__table__)
    stmt = select(*v.c).where(v.c.project_id == bindparam("project_id"))
    for used, column in ((name, "name"), (object_type, "object_type"),
                         (protect_type, "protect_type"), (status, "status")):
        if used:
            stmt = stmt.where(v.c[column] == bindparam(column))
    if policy:
        bound = cast(Table, VaultPolicy.__table__)
        stmt = stmt.where(v.c.id.in_(select(bound.c.vault_id).where(
            bound.c.policy_id == bindparam("policy_id"))))
    if resource:
        held = cast(Table, VaultResource.__table__)
        stmt = stmt.where(v.c.id.in_(select(held.c.vault_id).where(
            held.c.protectable_id == bindparam("resource_id"))))
    return paging.PagedQuery(stmt, v)


def list_vaults(conn: Session | Connection, project_id: str, f: VaultFilter, page_size: int,
                page_token: str) -> tuple[list[VaultView], str, int]:
    """A page of the account's vaults matching f: (views, next_page_token, total)."""
    query = _vault_list(bool(f.name), bool(f.object_type), bool(f.protect_type),
                        bool(f.status), bool(f.policy_id), bool(f.resource_id))
    params = {"project_id": project_id, "name": f.name, "object_type": f.object_type,
              "protect_type": f.protect_type, "status": f.status, "policy_id": f.policy_id,
              "resource_id": f.resource_id}
    rows, token, total = query.run(conn, params, page_size, page_token)
    return vault_views(conn, rows), token, total


UPDATABLE = frozenset({"name", "description", "size_gb", "auto_expand", "threshold", "tags",
                       "auto_bind", "bind_rules", "backup_name_prefix", "status"})
# Fixed at creation: changing them would strand data encrypted under the old
# setting (or leave new data unencrypted in a vault that promises otherwise).
IMMUTABLE_ENCRYPTION = frozenset({"encrypted", "kms_key_id"})


def refuse_encryption_change(fields: set[str] | frozenset[str], vault_id: str) -> None:
    named = sorted(set(fields) & IMMUTABLE_ENCRYPTION)
    if named:
        raise errors.VaultEncryptionImmutable(
            f"{', '.join(named)} cannot change after creation; create a new vault with the "
            "encryption you want and back up into it.", vault_id=vault_id, field=named[0])


def update_vault(session: Session, project_id: str, vault_id: str, changes: dict[str, Any],
                 now: dt.datetime) -> Vault:
    """Applies changes (field -> new value, already of domain types)."""
    refuse_encryption_change(set(changes), vault_id)
    unknown = set(changes) - UPDATABLE
    if unknown:
        raise errors.InvalidParameter(
            f"update_mask names fields that cannot change: {', '.join(sorted(unknown))}. "
            f"Updatable: {', '.join(sorted(UPDATABLE))}.", field="update_mask")
    if not changes:
        raise errors.InvalidParameter("update_mask names no field to change.",
                                      field="update_mask")
    vault = get_vault(session, project_id, vault_id, lock=True)
    if set(changes) - {"status"}:
        _check_status(vault, (VaultStatus.AVAILABLE,), "change its settings")
    if "name" in changes and changes["name"] != vault.name:
        validation.name(changes["name"])
        taken = select(Vault.id).where(Vault.project_id == project_id,
                                       Vault.name == changes["name"])
        if session.scalar(taken) is not None:
            raise errors.DuplicateVault(f"A vault named {changes['name']!r} exists.",
                                        name=changes["name"])
    if "description" in changes:
        validation.description(changes["description"])
    if "size_gb" in changes:
        validation.int_range(changes["size_gb"], limits.VAULT_SIZE_GB_MIN,
                             limits.VAULT_SIZE_GB_MAX, "size_gb")
        if changes["size_gb"] * 1024**3 < vault.used_bytes:
            raise errors.InvalidParameter(
                f"size_gb {changes['size_gb']} is below what the vault uses "
                f"({vault.used_bytes / 1024**3:.1f} GB).", field="size_gb")
    if "threshold" in changes:
        validation.int_range(changes["threshold"], 1, 100, "threshold")
    if "tags" in changes:
        validation.tags(changes["tags"])
    if "bind_rules" in changes:
        validation.tags(changes["bind_rules"], "bind_rules")
    if "backup_name_prefix" in changes:
        _check_prefix(changes["backup_name_prefix"])
    if changes.get("auto_bind") and vault.protect_type == ProtectType.REPLICATION:
        raise errors.InvalidParameter("A replication vault takes no auto_bind.",
                                      field="auto_bind")
    if "status" in changes:
        if changes["status"] not in SETTABLE_STATUSES:
            raise errors.InvalidParameter(
                f"status can be set to {', '.join(SETTABLE_STATUSES)} only.", field="status")
        _check_status(vault, SETTABLE_STATUSES, "change status")
    for key, value in changes.items():
        setattr(vault, key, value)
    vault.updated_at = now
    if {"size_gb", "threshold", "auto_expand"} & set(changes):
        capacity.usage_changed(session, vault, now)
    session.flush()
    if changes.get("auto_bind") or "bind_rules" in changes:
        _bind_matching(session, vault, now)
    return vault


def mark_deleting(session: Session, vault: Vault, now: dt.datetime) -> str:
    """Marks the vault deleting and records its vault_delete task (run by the
    maintenance worker, which erases the storage and then the rows); returns
    the task id. The caller has checked that nothing uses the vault."""
    _check_status(vault, (VaultStatus.AVAILABLE, VaultStatus.ERROR), "be deleted")
    vault.status = VaultStatus.DELETING
    vault.updated_at = now
    task = tasks.create_task(session, project_id=vault.project_id,
                             operation_type=OperationType.VAULT_DELETE, vault_id=vault.id,
                             vault_name=vault.name, now=now)
    return task.id


def add_resources(session: Session, project_id: str, vault_id: str,
                  resources: list[ResourceRequest], now: dt.datetime) -> list[str]:
    vault = get_vault(session, project_id, vault_id, lock=True)
    _check_status(vault, (VaultStatus.AVAILABLE,), "take resources")
    if not resources:
        raise errors.InvalidParameter("resources is empty; name at least one resource id.",
                                      field="resources")
    if len(resources) > limits.RESOURCES_PER_REQUEST_MAX:
        raise errors.InvalidParameter(
            f"At most {limits.RESOURCES_PER_REQUEST_MAX} resources per request.",
            field="resources")
    if vault.protect_type == ProtectType.REPLICATION:
        raise errors.InvalidParameter(
            "A replication vault receives replicas; resources cannot be added to it.",
            field="vault_id")
    validation.unique([r.id for r in resources], "resources", errors.DuplicateResource)
    added = []
    for req in resources:
        validation.ident(req.id, "resources.id")
        protectable = session.get(Protectable, req.id)
        if protectable is None or protectable.project_id != project_id:
            raise errors.ResourceNotFound(
                f"No protectable with id {req.id!r}; see `cbr protectable list`.",
                resource_id=req.id)
        if protectable.object_type != vault.object_type:
            raise errors.ResourceTypeMismatch(
                f"Resource {protectable.name!r} is a {protectable.object_type}; vault "
                f"{vault.name!r} holds {vault.object_type} resources.", resource_id=req.id)
        current = session.scalar(
            select(VaultResource).where(VaultResource.protectable_id == req.id))
        if current is not None and current.vault_id == vault.id:
            raise errors.DuplicateResource(
                f"Resource {protectable.name!r} is already in vault {vault.name!r}.",
                resource_id=req.id)
        if current is not None:
            raise errors.ResourceInOtherVault(
                f"Resource {protectable.name!r} is in vault {current.vault.name!r} "
                f"({current.vault_id}); remove it there first.", resource_id=req.id,
                vault_id=current.vault_id)
        disk_ids = {d.get("id") for d in protectable.disks}
        for vol in req.exclude_volumes + req.include_volumes:
            if vol not in disk_ids:
                raise errors.InvalidParameter(
                    f"Volume {vol!r} is not a disk of {protectable.name!r}.",
                    field="exclude_volumes")
        session.add(VaultResource(
            vault_id=vault.id, protectable_id=req.id, protect_status=ProtectStatus.AVAILABLE,
            exclude_volumes=req.exclude_volumes, include_volumes=req.include_volumes,
            added_at=now))
        added.append(req.id)
    vault.updated_at = now
    session.flush()
    session.refresh(vault)
    return added


def release_resource(session: Session, vault: Vault, resource_id: str,
                     now: dt.datetime) -> VaultResource:
    """Takes a resource out of the vault (its backups are the caller's);
    nothing backs it up here any more."""
    _check_status(vault, (VaultStatus.AVAILABLE,), "release resources")
    vr = next((r for r in vault.resources if r.protectable_id == resource_id), None)
    if vr is None:
        raise errors.ResourceNotFound(
            f"Resource {resource_id!r} is not in vault {vault.name!r}.",
            resource_id=resource_id)
    vault.resources.remove(vr)
    vault.updated_at = now
    return vr


def associate_policy(session: Session, project_id: str, vault_id: str, policy_id: str,
                     destination_vault_id: str, now: dt.datetime) -> Vault:
    vault = get_vault(session, project_id, vault_id, lock=True)
    _check_status(vault, (VaultStatus.AVAILABLE,), "change policies")
    policy = session.get(Policy, policy_id) if policy_id else None
    if policy is None or policy.project_id != project_id:
        raise errors.ResourceNotFound(f"No policy with id {policy_id!r}.", policy_id=policy_id)
    if policy.operation_type == PolicyOperationType.REPLICATION:
        if vault.object_type == ObjectType.DISK:
            raise errors.ReplicationNotAllowedForType(
                "Disk vaults cannot replicate; only server and file-system (turbo) vaults can.")
        if vault.protect_type == ProtectType.REPLICATION:
            raise errors.ReplicationNotAllowedForType("A replication vault's replicas are not "
                                           "replicated onward.")
        if not destination_vault_id:
            raise errors.InvalidParameter(
                "A replication policy's vault needs destination_vault_id: the replication "
                "vault in the target account that receives its replicas.",
                field="destination_vault_id")
    elif (vault.protect_type == ProtectType.REPLICATION
          and policy.operation_type == PolicyOperationType.BACKUP):
        # Its replicas may still be verified and pruned on a schedule.
        raise errors.InvalidParameter("A replication vault takes no backup policy.",
                                      field="policy_id")
    if destination_vault_id and policy.operation_type != PolicyOperationType.REPLICATION:
        raise errors.InvalidParameter("destination_vault_id is for replication policies.",
                                      field="destination_vault_id")
    binding = next((b for b in vault.policy_bindings
                    if b.operation_type == policy.operation_type), None)
    if binding is None:
        vault.policy_bindings.append(VaultPolicy(
            policy_id=policy.id, operation_type=policy.operation_type,
            destination_vault_id=destination_vault_id, created_at=now))
    else:
        # A vault has at most one policy of each kind: a new one replaces it.
        binding.policy_id = policy.id
        binding.destination_vault_id = destination_vault_id
        binding.created_at = now
    vault.updated_at = now
    session.flush()
    return vault


def dissociate_policy(session: Session, project_id: str, vault_id: str, policy_id: str,
                      now: dt.datetime) -> Vault:
    vault = get_vault(session, project_id, vault_id, lock=True)
    _check_status(vault, (VaultStatus.AVAILABLE,), "change policies")
    binding = next((b for b in vault.policy_bindings if b.policy_id == policy_id), None)
    if binding is None:
        raise errors.ResourceNotFound(
            f"Policy {policy_id!r} is not associated with vault {vault.name!r}.",
            policy_id=policy_id)
    vault.policy_bindings.remove(binding)
    vault.updated_at = now
    session.flush()
    return vault


def _matches(rules: list[dict[str, str]], tags: list[dict[str, str]]) -> bool:
    have = {t["key"]: t.get("value", "") for t in tags}
    return all(have.get(r["key"]) == r.get("value", "") for r in rules)


def _bind_matching(session: Session, vault: Vault, now: dt.datetime) -> None:
    """Adds every unprotected protectable of the vault's type that matches its rules."""
    if not vault.auto_bind or vault.status != VaultStatus.AVAILABLE:
        return
    taken = select(VaultResource.protectable_id)
    candidates = session.scalars(select(Protectable).where(
        Protectable.project_id == vault.project_id, Protectable.object_type == vault.object_type,
        Protectable.gone.is_(False), Protectable.id.not_in(taken))).all()
    for p in candidates:
        if _matches(vault.bind_rules, p.tags):
            session.add(VaultResource(vault_id=vault.id, protectable_id=p.id,
                                      protect_status=ProtectStatus.AVAILABLE, added_at=now))
    session.flush()


def auto_bind_new(session: Session, project_id: str, protectable_ids: list[str],
                  now: dt.datetime) -> list[tuple[str, str]]:
    """Puts newly reported protectables into the first auto-bind vault whose type and
    bind rules match; returns (protectable id, vault id) pairs."""
    if not protectable_ids:
        return []
    vaults = session.scalars(select(Vault).where(
        Vault.project_id == project_id, Vault.auto_bind.is_(True),
        Vault.status == VaultStatus.AVAILABLE).order_by(Vault.created_at)).all()
    bound = []
    for pid in protectable_ids:
        p = session.get(Protectable, pid)
        if p is None or p.gone:
            continue
        if session.scalar(select(VaultResource.id).where(
                VaultResource.protectable_id == pid)) is not None:
            continue
        for vault in vaults:
            if vault.object_type == p.object_type and _matches(vault.bind_rules, p.tags):
                session.add(VaultResource(vault_id=vault.id, protectable_id=pid,
                                          protect_status=ProtectStatus.AVAILABLE,
                                          added_at=now))
                session.flush()
                bound.append((pid, vault.id))
                break
    return bound


# -- read models ----------------------------------------------------------------


@dataclass(frozen=True)
class VaultView:
    """A vault as the API shows it: its row, resource rows and policy binding rows.

    Built with three set-based queries for any number of vaults, so a page of
    vaults costs the same few queries as one vault.
    """

    vault: Any
    resources: list[Any]
    bindings: list[Any]
    # Each resource's newest backup row in the vault, by resource id.
    last_backups: dict[str, Any] = field(default_factory=dict)


VAULT_COLUMNS = tuple(Vault.__table__.c)

# Read statements built once: constructing a statement and its cache key costs
# more than running it on SQLite, and these run on every vault the API shows.
_vaults = cast(Table, Vault.__table__)
_resources = cast(Table, VaultResource.__table__)
_protectables = cast(Table, Protectable.__table__)
_bindings = cast(Table, VaultPolicy.__table__)
_VAULT_BY_ID = select(*_vaults.c).where(_vaults.c.id == bindparam("vault_id"))
_RESOURCES_OF = (
    select(_resources.c.vault_id, _resources.c.protectable_id, _resources.c.protect_status,
           _resources.c.backup_size_bytes, _resources.c.backup_count,
           _resources.c.exclude_volumes, _resources.c.include_volumes, _protectables.c.name,
           _protectables.c.object_type, _protectables.c.size_bytes)
    .join(_protectables, _protectables.c.id == _resources.c.protectable_id)
    .where(_resources.c.vault_id.in_(bindparam("ids", expanding=True)))
    .order_by(_resources.c.added_at))
_backups = Backup.__table__
_ranked = (
    select(_backups.c.vault_id, _backups.c.resource_id, _backups.c.id, _backups.c.name,
           _backups.c.status, _backups.c.created_at,
           func.row_number().over(partition_by=(_backups.c.vault_id, _backups.c.resource_id),
                                  order_by=(_backups.c.created_at.desc(),
                                            _backups.c.id.desc())).label("newest"))
    .where(_backups.c.vault_id.in_(bindparam("ids", expanding=True)),
           _backups.c.parent_id.is_(None))
    .subquery())
# Each resource's newest backup in each vault, for a page of vaults at once.
_LAST_BACKUPS_OF = select(_ranked).where(_ranked.c.newest == 1)
_BINDINGS_OF = (
    select(_bindings.c.vault_id, _bindings.c.policy_id, _bindings.c.operation_type,
           _bindings.c.destination_vault_id)
    .where(_bindings.c.vault_id.in_(bindparam("ids", expanding=True))))


def vault_view(conn: Session | Connection, project_id: str, vault_id: str) -> VaultView:
    """One vault's view; in a session, with the session's pending changes
    flushed first (the view reads with Core statements, which do not autoflush)."""
    if isinstance(conn, Session):
        conn.flush()
    row = conn.execute(_VAULT_BY_ID, {"vault_id": vault_id}).first() if vault_id else None
    if row is None or row.project_id != project_id:
        raise errors.VaultNotFound(f"No vault with id {vault_id!r}.", vault_id=vault_id)
    return vault_views(conn, [row])[0]


def vault_views(session: Session | Connection, rows: Sequence[Any]) -> list[VaultView]:
    """Views of vault rows (selected with VAULT_COLUMNS), in their order."""
    ids = [r.id for r in rows]
    resources: dict[str, list[Any]] = {i: [] for i in ids}
    bindings: dict[str, list[Any]] = {i: [] for i in ids}
    last: dict[str, dict[str, Any]] = {i: {} for i in ids}
    if ids:
        for r in session.execute(_RESOURCES_OF, {"ids": ids}):
            resources[r.vault_id].append(r)
        for b in session.execute(_BINDINGS_OF, {"ids": ids}):
            bindings[b.vault_id].append(b)
        for b in session.execute(_LAST_BACKUPS_OF, {"ids": ids}):
            last[b.vault_id][b.resource_id] = b
    return [VaultView(r, resources[r.id], bindings[r.id], last[r.id]) for r in rows]


def start_maintenance(session: Session, project_id: str, vault_id: str,
                      operation: OperationType, now: dt.datetime, **options: Any) -> str:
    """Makes a verify, prune or repair task, run by the controller's maintenance worker."""
    vault = get_vault(session, project_id, vault_id)
    subset = str(options.get("read_data_subset", "") or "")
    if subset:
        try:
            options["read_data_subset"] = str(DataSubset.parse(subset))
        except ValueError as exc:
            raise errors.InvalidParameter(f"read_data_subset: {exc}",
                                          field="read_data_subset") from None
        options["read_data"] = True
    elif "read_data_subset" in options:
        del options["read_data_subset"]
    if not vault.storage_url:
        raise errors.VaultStatusIllegal(f"Vault {vault.name!r} has no storage.",
                                        vault_id=vault.id)
    busy = session.scalar(select(Task.id).where(
        Task.vault_id == vault.id, Task.operation_type == operation,
        Task.status.in_(tasks.OPEN_STATUSES)))
    if busy is not None:
        raise errors.Conflict(f"A {operation} of vault {vault.name!r} is already running: "
                              f"task {busy}.", task_id=busy)
    task = tasks.create_task(session, project_id=project_id, operation_type=operation,
                             now=now, vault_id=vault.id, vault_name=vault.name,
                             extra_info=dict(options))
    return task.id


def storage_urls(session: Session) -> list[str]:
    """Every vault's storage, of every account: a new vault's place must
    overlap none of them."""
    return [url for url in session.scalars(select(Vault.storage_url)) if url]
