"""The target controller's side of allowing an import, where it reaches past the catalog.

The target's rules and records are ``controller.services.imports``. Allowing
an import also writes the source lineage's chunk-id keys into the
destination vault's storage, inside the transaction (a failed write allows
nothing) and before any chunk can arrive, then hands the import task to the
chosen importer agent once it is committed: work for the controller around
the services, as ``replicator`` is on the source side.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from controller import pki
from controller.app import App
from controller.persistence.models import Vault
from controller.pki import certificate_authority
from controller.services import agent_status, imports, keys


@dataclass(frozen=True)
class PreparedImport:
    """What the target answers a source's PrepareImport."""

    import_id: str
    task_id: str
    destination_checkpoint_id: str
    replica_ids: dict[str, str]
    importer_endpoint: str
    importer_server_name: str
    ca_certificate_pem: str
    import_token: str
    expires_at: dt.datetime


def prepare_import(app: App, project_id: str, req: imports.ImportRequest,
                   chunk_keys: dict[bytes, bytes]) -> PreparedImport:
    with app.db.begin() as s:
        plan = imports.prepare_import(
            s, app.keyring, project_id, req,
            regions=app.config.all_regions,
            online=agent_status.online_agent_ids(app, s), now=app.clock.now(),
            ttl=dt.timedelta(hours=app.config.import_ttl))
        record, task_id = plan.record, plan.task.id
        vault = s.get(Vault, record.destination_vault_id)
        assert vault is not None
        # The lineage's chunk-id keys go into the vault before any chunk
        # does, wrapped by the vault's own master key when it is encrypted.
        app.storage.add_chunk_keys(
            vault.storage_url, chunk_keys, req.source_vault_id,
            keys.vault_key(s, app.root_key, vault, app.clock.now()))
        prepared = PreparedImport(
            import_id=record.id, task_id=task_id,
            destination_checkpoint_id=record.destination_checkpoint_id,
            replica_ids=dict(record.extra_info["replica_ids"]),
            importer_endpoint=plan.importer.endpoint,
            importer_server_name=pki.importer_server_name(plan.importer.id),
            ca_certificate_pem=certificate_authority(app).certificate_pem.decode(),
            import_token=plan.token,
            expires_at=dt.datetime.fromisoformat(str(record.extra_info["expires_at"])))
        importer_id = plan.importer.id
    if app.hub is not None:
        app.hub.dispatch(importer_id, task_id)
    return prepared
