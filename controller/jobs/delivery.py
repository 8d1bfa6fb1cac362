"""What a command carries that its task never stores, added as it is sent.

Storage URLs and credentials, an encrypted vault's keys (unwrapped for this
one command) and a replication's import token are secrets: the task row
holds none of them, and the hub asks these functions, by the command's
action, for them each time it sends the command.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from cbr import errors
from cbr.v1 import agent_pb2
from controller.agents.hub import AgentHub
from controller.app import App
from controller.persistence.models import ReplicationRecord, Task, Vault
from controller.services import keys, replication

# Actions whose command reads or writes vault storage.
STORAGE_ACTIONS = ("backup", "restore", "import", "replicate")


def storage_access(app: App, session: Session, vault: Vault | None) -> agent_pb2.StorageAccess:
    """StorageAccess of a vault; for an encrypted vault with its keys,
    unwrapped now for this one command. Raises the key's error (naming it)
    when the vault's key may not be used."""
    url = vault.storage_url if vault is not None else ""
    access = app.storage.access(url)
    if vault is not None and vault.encrypted:
        key = keys.vault_key(session, app.root_key, vault, app.clock.now())
        assert key is not None
        access.encrypted = True
        access.keys.extend(app.storage.task_keys(url, vault.id, key))
    return access


def register(hub: AgentHub, app: App) -> None:
    def with_storage(session: Session, task: Task, command: agent_pb2.Command) -> None:
        action = command.WhichOneof("action")
        assert action is not None
        vault = session.get(Vault, task.vault_id)
        getattr(command, action).storage.CopyFrom(storage_access(app, session, vault))

    def with_import_token(session: Session, task: Task, command: agent_pb2.Command) -> None:
        record = session.get(ReplicationRecord,
                             str(task.extra_info.get("replication_record_id", "")))
        if record is None:
            raise errors.ResourceNotFound("The task's replication record is gone.")
        command.replicate.import_token = replication.unseal_token(app.keyring, record)

    for action in STORAGE_ACTIONS:
        hub.register_enricher(action, with_storage)
    hub.register_enricher("replicate", with_import_token)
