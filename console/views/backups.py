"""Backups: the list with the API's filters, one backup's disks or files,
restore (to its place, another resource or a new place, one path like
``cbr backup restore --path``) and the "Create Replica" dialog.

Routes stay as thin as servicers: every page is a few API calls whatever the
number of backups (one page of ``ListBackups``, never a call per row), and
every change is the API call the CLI makes, so the API refuses what it
refuses. A section whose list call the user may not make is left out rather
than failing the page.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web
from google.protobuf.descriptor import EnumDescriptor

from cbr import limits
from cbr.v1 import (
    agent_pb2,
    backup_pb2,
    common_pb2,
    credential_pb2,
    replication_pb2,
    vault_pb2,
)
from console import web as cw
from console.api import ApiError

# Backups a list page shows unless ``page_size`` says otherwise: a page stays
# one query and a short table with 1,000 backups in a vault.
PAGE_SIZE = 100
SERVER = common_pb2.OBJECT_TYPE_SERVER
DISK = common_pb2.OBJECT_TYPE_DISK
FILE_SYSTEM = common_pb2.OBJECT_TYPE_TURBO
PLACES = ("original", "resource", "new")


@dataclass(frozen=True)
class Choice:
    """One value of an API enum as a filter offers it: the short key in the
    URL ("available"), its number in the request, and its label."""

    key: str
    number: int
    label: str


def enum_choices(descriptor: EnumDescriptor, prefix: str) -> list[Choice]:
    out = []
    for value in descriptor.values:
        if value.number == 0:
            continue
        key = value.name.removeprefix(prefix).lower()
        out.append(Choice(key, value.number, key.replace("_", " ")))
    return out


STATUSES = enum_choices(backup_pb2.BackupStatus.DESCRIPTOR, "BACKUP_STATUS_")
# Filters say what a person calls them: "turbo" is a file system, a
# "replication" image a replica.
LABELS = {"turbo": "file system", "backup": "backups", "replication": "replicas"}
IMAGE_TYPES = [Choice(c.key, c.number, LABELS[c.key]) for c in
               enum_choices(backup_pb2.ImageType.DESCRIPTOR, "IMAGE_TYPE_")]
RESOURCE_TYPES = [Choice(c.key, c.number, LABELS.get(c.key, c.label)) for c in
                  enum_choices(common_pb2.ObjectType.DESCRIPTOR, "OBJECT_TYPE_")]


def resource_label(backup: backup_pb2.Backup) -> str:
    """"server", "disk" or "file system"."""
    return next((c.label for c in RESOURCE_TYPES if c.number == backup.resource_type), "")


# What every backups page needs to show a backup's kind.
KINDS: dict[str, Any] = {"resource_label": resource_label,
                         "replica_type": backup_pb2.IMAGE_TYPE_REPLICATION}


def choice_number(choices: list[Choice], key: str) -> int:
    """The enum number of a filter's key; 0 (any) for an empty or unknown one."""
    return next((c.number for c in choices if c.key == key), 0)


def page_size_of(query: Any) -> int:
    """``page_size`` from the URL, kept within what the API accepts."""
    try:
        size = int(str(query.get("page_size", "") or PAGE_SIZE))
    except ValueError:
        size = PAGE_SIZE
    return max(1, min(size, limits.PAGE_SIZE_MAX))


def invalid(message: str, field: str = "") -> ApiError:
    """A form the console refuses before calling the API, shown like the
    API's own refusals (400, the field named)."""
    return ApiError("INVALID_ARGUMENT", "", message + (f" (field {field})" if field else ""))


def add_routes(app: web.Application) -> None:
    app.router.add_get("/backups", list_page)
    app.router.add_get("/backups/{backup_id}", detail_page)
    app.router.add_post("/backups/{backup_id}/restore", restore)
    app.router.add_post("/backups/{backup_id}/replicate", replicate)
    app.router.add_get("/backups/{backup_id}/destinations", destinations)


# -- the list -------------------------------------------------------------------------


async def list_page(request: web.Request) -> web.Response:
    api = cw.api(request)
    q = request.query
    filters = {name: q.get(name, "").strip() for name in
               ("vault_id", "resource_id", "checkpoint_id", "name", "status", "image_type",
                "resource_type")}
    show_children = q.get("show_children", "") == "on"
    size = page_size_of(q)
    listed = await api(api.stubs.backups.ListBackups, backup_pb2.ListBackupsRequest(
        page_size=size, page_token=q.get("page_token", ""), vault_id=filters["vault_id"],
        resource_id=filters["resource_id"], checkpoint_id=filters["checkpoint_id"],
        name=filters["name"], show_children=show_children, newest_first=True,
        status=choice_number(STATUSES, filters["status"]),  # type: ignore[arg-type]
        image_type=choice_number(IMAGE_TYPES, filters["image_type"]),  # type: ignore[arg-type]
        resource_type=choice_number(  # type: ignore[arg-type]
            RESOURCE_TYPES, filters["resource_type"])))
    vault_names = await _vault_names(request)
    kept = {k: v for k, v in filters.items() if v}
    if show_children:
        kept["show_children"] = "on"
    if size != PAGE_SIZE:
        kept["page_size"] = str(size)
    return cw.render(request, "backups.html", backups=listed.backups, total=listed.total_count,
                     next_page_token=listed.next_page_token, filters=filters,
                     show_children=show_children, kept=kept, vault_names=vault_names,
                     first_page=not q.get("page_token", ""), statuses=STATUSES,
                     image_types=IMAGE_TYPES, resource_types=RESOURCE_TYPES, **KINDS)


async def _vault_names(request: web.Request) -> dict[str, str]:
    """Vault id to name for the filter and the vault column: one call for the
    page; empty when the user may not list vaults (ids show instead)."""
    if cw.missing(request, "VaultService/ListVaults"):
        return {}
    api = cw.api(request)
    vaults = await api(api.stubs.vaults.ListVaults,
                       vault_pb2.ListVaultsRequest(page_size=limits.PAGE_SIZE_MAX))
    return {v.id: v.name for v in vaults.vaults}


# -- one backup -----------------------------------------------------------------------


def _clean_path(raw: str) -> str:
    """A "/"-separated path inside a backup, without empty or "." parts."""
    return "/".join(part for part in raw.split("/") if part not in ("", "."))


def _crumbs(path: str) -> list[tuple[str, str]]:
    """(name, path) of each directory from the root down to ``path``."""
    out = [("/", "")]
    parts = path.split("/") if path else []
    for i, part in enumerate(parts):
        out.append((part, "/".join(parts[: i + 1])))
    return out


async def detail_page(request: web.Request) -> web.Response:
    api = cw.api(request)
    backup_id = request.match_info["backup_id"]
    backup = (await api(api.stubs.backups.GetBackup,
                        backup_pb2.GetBackupRequest(backup_id=backup_id))).backup
    path = _clean_path(request.query.get("path", ""))
    files: list[backup_pb2.BackupFile] | None = None
    files_error: ApiError | None = None
    if backup.resource_type == FILE_SYSTEM and not cw.missing(
            request, "BackupService/ListBackupFiles"):
        try:
            files = list((await api(api.stubs.backups.ListBackupFiles,
                                    backup_pb2.ListBackupFilesRequest(
                                        backup_id=backup.id, path=path))).files)
        except ApiError as err:  # a backup not readable now (deleting, error)
            files_error = err
    records = await _history(request, backup)
    credentials: list[credential_pb2.Credential] | None = None
    if not cw.missing(request, "CredentialService/ListCredentials"):
        credentials = list((await api(api.stubs.credentials.ListCredentials,
                                      credential_pb2.ListCredentialsRequest(
                                          page_size=limits.PAGE_SIZE_MAX))).credentials)
    agents: list[agent_pb2.Agent] | None = None
    if not cw.missing(request, "AgentService/ListAgents"):
        agents = list((await api(api.stubs.agents.ListAgents, agent_pb2.ListAgentsRequest(
            page_size=limits.PAGE_SIZE_MAX, role=agent_pb2.AGENT_ROLE_HOST))).agents)
    clouds = sorted({c.target_cloud for c in credentials or []})
    vault_name = (await _vault_names(request)).get(backup.vault_id, "")
    return cw.render(
        request, "backup.html", backup=backup, vault_name=vault_name, files=files,
        files_error=files_error, dir_path=path, crumbs=_crumbs(path),
        restore_path=_clean_path(request.query.get("restore", "")), records=records,
        credentials=credentials, clouds=clouds, agents=agents,
        is_server=backup.resource_type == SERVER, is_disk=backup.resource_type == DISK,
        is_file_system=backup.resource_type == FILE_SYSTEM,
        is_replica=backup.image_type == backup_pb2.IMAGE_TYPE_REPLICATION, **KINDS)


async def _history(request: web.Request, backup: backup_pb2.Backup
                   ) -> list[replication_pb2.ReplicationRecord] | None:
    """The backup's replication records: on the source, those naming it as
    source; for a replica on the target, its vault's records that made it
    (the target's record names the source cloud's backup id). None when the
    user may not list records."""
    if cw.missing(request, "ReplicationService/ListReplicationRecords"):
        return None
    api = cw.api(request)
    if backup.image_type == backup_pb2.IMAGE_TYPE_REPLICATION:
        listed = await api(api.stubs.replication.ListReplicationRecords,
                           replication_pb2.ListReplicationRecordsRequest(
                               vault_id=backup.vault_id, page_size=limits.PAGE_SIZE_MAX,
                               newest_first=True))
        return [r for r in listed.replication_records if r.destination_backup_id == backup.id]
    listed = await api(api.stubs.replication.ListReplicationRecords,
                       replication_pb2.ListReplicationRecordsRequest(
                           source_backup_id=backup.id, page_size=limits.PAGE_SIZE_MAX,
                           newest_first=True))
    return list(listed.replication_records)


# -- restore --------------------------------------------------------------------------


def restore_request(backup_id: str, form: Any) -> backup_pb2.RestoreBackupRequest:
    """The RestoreBackupRequest of the restore form, refused as ``cbr backup
    restore`` refuses the same options: to the original place (nothing
    more), onto another resource, or to a new place (a path on an agent, or
    a path per disk of a server)."""
    place = str(form.get("place", "original"))
    if place not in PLACES:
        raise invalid(f"Restore to one of {', '.join(PLACES)}, not {place!r}.", "place")
    mappings = {key.removeprefix("mapping_"): str(value).strip() for key, value in form.items()
                if key.startswith("mapping_") and str(value).strip()}
    target_path = str(form.get("target_path", "")).strip()
    target_agent = str(form.get("target_agent_id", "")).strip()
    target_resource = str(form.get("target_resource_id", "")).strip()
    if place == "new" and not (target_path or mappings):
        raise invalid("A restore to a new place needs the target path (or, for a server, "
                      "a path for each disk).", "target_path")
    if place == "resource" and not target_resource:
        raise invalid("Name the resource to restore onto.", "target_resource_id")
    return backup_pb2.RestoreBackupRequest(
        backup_id=backup_id,
        target_resource_id=target_resource if place == "resource" else "",
        target_agent_id=target_agent if place == "new" else "",
        target_path=target_path if place == "new" else "",
        mappings=mappings if place == "new" else {},
        power_on=form.get("power_on") == "on",
        source_path=_clean_path(str(form.get("source_path", ""))),
        encrypted=form.get("encrypted") == "on")


async def restore(request: web.Request) -> web.Response:
    api = cw.api(request)
    form = await request.post()
    request_ = restore_request(request.match_info["backup_id"], form)
    started = await api(api.stubs.backups.RestoreBackup, request_)
    return cw.redirect(request, f"/tasks/{started.task_id}")


# -- replicate ------------------------------------------------------------------------


async def destinations(request: web.Request) -> web.Response:
    """The dialog's region and vault choices, asked of the target cloud with
    the credential chosen: its regions (those refusing replicas shown
    disabled) and the target account's replication vaults of the backup's
    kind. If the target cannot be asked, the choices become text fields
    and the reason is shown."""
    api = cw.api(request)
    credential_id = request.query.get("credential_id", "").strip()
    backup = (await api(api.stubs.backups.GetBackup, backup_pb2.GetBackupRequest(
        backup_id=request.match_info["backup_id"]))).backup
    found: credential_pb2.ListReplicationDestinationsResponse | None = None
    error: ApiError | None = None
    if credential_id:
        try:
            found = await api(api.stubs.credentials.ListReplicationDestinations,
                              credential_pb2.ListReplicationDestinationsRequest(
                                  credential_id=credential_id))
        except ApiError as err:
            error = err
    vaults = [v for v in found.vaults if v.object_type == backup.resource_type] if found else []
    return cw.render(request, "_destinations.html", found=found, error=error, vaults=vaults,
                     kind=resource_label(backup), chosen=bool(credential_id))


async def replicate(request: web.Request) -> web.Response:
    """The "Create Replica" dialog's four choices, checked together: the
    credential must be one for the target cloud chosen."""
    api = cw.api(request)
    form = await request.post()
    credential_id = str(form.get("credential_id", "")).strip()
    target_cloud = str(form.get("target_cloud", "")).strip()
    if not credential_id:
        raise invalid("Choose the credential of the target cloud.", "credential_id")
    if target_cloud and not cw.missing(request, "CredentialService/GetCredential"):
        credential = (await api(api.stubs.credentials.GetCredential,
                                credential_pb2.GetCredentialRequest(
                                    credential_id=credential_id))).credential
        if credential.target_cloud != target_cloud:
            raise invalid(f"Credential {credential.name} is for cloud "
                          f"{credential.target_cloud}, not {target_cloud}; choose one of "
                          f"{target_cloud}'s credentials.", "credential_id")
    started = await api(api.stubs.replication.ReplicateBackup,
                        replication_pb2.ReplicateBackupRequest(
                            backup_id=request.match_info["backup_id"],
                            credential_id=credential_id,
                            destination_region=str(form.get("destination_region", "")).strip(),
                            destination_project_id=str(
                                form.get("destination_project_id", "")).strip(),
                            destination_vault_id=str(
                                form.get("destination_vault_id", "")).strip(),
                            name=str(form.get("name", "")).strip(),
                            description=str(form.get("description", "")).strip()))
    return cw.redirect(request, f"/replication/{started.replication_record_id}"
                                f"?task={started.task_id}")
