"""Customer master keys: their life cycle, sharing, and whether a vault may use one.

States: ``enabled`` ⇄ ``disabled``; either → ``pending_deletion`` (unusable
at once) → ``deleted`` when the waiting period (7 to 30 days) has passed,
unless the deletion is cancelled (the key comes back ``disabled``, so its
owner re-enables it on purpose). A pending deletion that is due counts as
deleted everywhere (``effective_state``); the material is dropped the next
time a change touches the key. Only the owner manages a key; accounts it is
shared with may use it to encrypt backup vaults, never replication vaults.

Nothing here sends key material anywhere: ``customer_key`` returns a
wrapper for the controller's own use (vault creation, maintenance, the
per-task keys the agent hub puts in a command).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from cbr import errors
from controller.kms import KEY_SIZE, CustomerKey, RootKey, new_material
from controller.persistence.models import Account, Event, Key, KeyShare, Vault
from controller.persistence.vocabulary import (
    EventType,
    KeyOrigin,
    KeyState,
    ProtectType,
    VaultStatus,
)
from controller.services import events, paging, validation

PENDING_DAYS_MIN = 7
PENDING_DAYS_MAX = 30
PENDING_DAYS_DEFAULT = 30
_ALIAS = re.compile(r"^[A-Za-z0-9_./-]{1,64}$")


@dataclass(frozen=True)
class KeyView:
    """A key as one account sees it."""

    key: Key
    state: str
    shared_in: bool
    shared_with: list[str]


def effective_state(key: Key, now: dt.datetime) -> str:
    """The state, with a pending deletion whose time has come counted as deleted."""
    if key.state == KeyState.PENDING_DELETION and key.deletion_at is not None \
            and key.deletion_at <= now:
        return KeyState.DELETED
    return key.state


def _settle(key: Key, now: dt.datetime) -> str:
    """Makes a due deletion final (drops the material); returns the state."""
    state = effective_state(key, now)
    if state == KeyState.DELETED and (key.state != KeyState.DELETED
                                      or key.material_sealed is not None):
        key.state = KeyState.DELETED
        key.material_sealed = None
        key.updated_at = now
    return state


def _shared_with(session: Session, key_id: str) -> list[str]:
    return list(session.scalars(select(KeyShare.account_id).where(
        KeyShare.key_id == key_id).order_by(KeyShare.created_at, KeyShare.id)))


def _is_shared_with(session: Session, key_id: str, project_id: str) -> bool:
    return session.scalar(select(KeyShare.id).where(
        KeyShare.key_id == key_id, KeyShare.account_id == project_id)) is not None


def _view(session: Session, key: Key, project_id: str, now: dt.datetime) -> KeyView:
    owner = key.project_id == project_id
    return KeyView(key, effective_state(key, now), not owner,
                   _shared_with(session, key.id) if owner else [])


def _find(session: Session, project_id: str, key_id: str) -> Key:
    """A key the account owns or that is shared with it; 7001 otherwise."""
    key = session.get(Key, key_id) if key_id else None
    if key is None or (key.project_id != project_id
                       and not _is_shared_with(session, key.id, project_id)):
        raise errors.KeyNotFound(f"No key with id {key_id!r} in this account or shared "
                                 "with it; see `cbr key list`.", key_id=key_id)
    return key


def _owned(session: Session, project_id: str, key_id: str, doing: str) -> Key:
    key = _find(session, project_id, key_id)
    if key.project_id != project_id:
        raise errors.PermissionDenied(
            f"Key {key.alias} ({key.id}) is shared with this account by account "
            f"{key.project_id}; only its owner can {doing} it.", key_id=key.id)
    return key


def create_key(session: Session, root: RootKey, project_id: str, *, alias: str,
               description: str, material: bytes, now: dt.datetime) -> KeyView:
    if not _ALIAS.match(alias):
        raise errors.InvalidParameter(
            f"alias {alias!r} must be 1 to 64 letters, digits, '_', '-', '.' or '/'.",
            field="alias")
    validation.description(description)
    if material and len(material) != KEY_SIZE:
        raise errors.InvalidParameter(
            f"key_material must be exactly {KEY_SIZE} bytes (AES-256); got {len(material)}.",
            field="key_material")
    taken = select(Key.id).where(Key.project_id == project_id, Key.alias == alias)
    if session.scalar(taken) is not None:
        raise errors.AlreadyExists(f"A key with alias {alias!r} exists in this account.",
                                   alias=alias)
    key = Key(project_id=project_id, alias=alias, description=description,
              state=KeyState.ENABLED, origin=KeyOrigin.EXTERNAL if material else KeyOrigin.CBR,
              material_sealed=None,
              created_at=now, updated_at=now)
    session.add(key)
    session.flush()
    key.material_sealed = root.seal(material or new_material(), key_id=key.id,
                                    project_id=project_id)
    return _view(session, key, project_id, now)


def get_key(session: Session, project_id: str, key_id: str, now: dt.datetime) -> KeyView:
    return _view(session, _find(session, project_id, key_id), project_id, now)


def list_keys(session: Session, project_id: str, state: str, page_size: int, page_token: str,
              now: dt.datetime) -> tuple[list[KeyView], str, int]:
    """Owned and shared-in keys, oldest first; ``state`` filters by effective state."""
    shared = select(KeyShare.key_id).where(KeyShare.account_id == project_id)
    stmt = select(Key).where(or_(Key.project_id == project_id, Key.id.in_(shared)))
    due = and_(Key.state == KeyState.PENDING_DELETION, Key.deletion_at <= now)
    if state == KeyState.DELETED:
        stmt = stmt.where(or_(Key.state == KeyState.DELETED, due))
    elif state == KeyState.PENDING_DELETION:
        stmt = stmt.where(Key.state == KeyState.PENDING_DELETION, Key.deletion_at > now)
    elif state:
        stmt = stmt.where(Key.state == state)
    items, token, total = paging.paginate(session, stmt, Key, page_size, page_token)
    return [_view(session, k, project_id, now) for k in items], token, total


def disable_key(session: Session, project_id: str, key_id: str, now: dt.datetime) -> KeyView:
    key = _owned(session, project_id, key_id, "disable")
    state = _settle(key, now)
    if state not in (KeyState.ENABLED, KeyState.DISABLED):
        raise errors.KeyStateIllegal(f"Key {key.alias} ({key.id}) is {state}; only an "
                                     "enabled key can be disabled.", key_id=key.id)
    key.state = KeyState.DISABLED
    key.updated_at = now
    return _view(session, key, project_id, now)


def enable_key(session: Session, project_id: str, key_id: str, now: dt.datetime) -> KeyView:
    key = _owned(session, project_id, key_id, "enable")
    state = _settle(key, now)
    if state not in (KeyState.ENABLED, KeyState.DISABLED):
        hint = " Cancel its deletion first." if state == KeyState.PENDING_DELETION else ""
        raise errors.KeyStateIllegal(f"Key {key.alias} ({key.id}) is {state}; it cannot be "
                                     f"enabled.{hint}", key_id=key.id)
    key.state = KeyState.ENABLED
    key.updated_at = now
    return _view(session, key, project_id, now)


def schedule_deletion(session: Session, project_id: str, key_id: str, pending_days: int,
                      now: dt.datetime) -> KeyView:
    days = pending_days or PENDING_DAYS_DEFAULT
    validation.int_range(days, PENDING_DAYS_MIN, PENDING_DAYS_MAX, "pending_days")
    key = _owned(session, project_id, key_id, "delete")
    state = _settle(key, now)
    if state not in (KeyState.ENABLED, KeyState.DISABLED):
        raise errors.KeyStateIllegal(f"Key {key.alias} ({key.id}) is already {state}.",
                                     key_id=key.id)
    key.state = KeyState.PENDING_DELETION
    key.deletion_at = now + dt.timedelta(days=days)
    key.updated_at = now
    _deletion_in_use(session, key, now)
    return _view(session, key, project_id, now)


def remind_deletions_in_use(session: Session, now: dt.datetime, every: dt.timedelta) -> int:
    """Raises ``key.deletion_in_use`` again for each key still pending deletion
    and in use whose last such event is older than ``every`` (a daily reminder
    until the deletion is cancelled or done); returns how many events.

    The key rows are locked while checked, so controllers sharing a database
    remind once."""
    pending = session.scalars(select(Key).where(
        Key.state == KeyState.PENDING_DELETION, Key.deletion_at > now)
        .order_by(Key.id).with_for_update(skip_locked=True)).all()
    recorded = 0
    for key in pending:
        recent = session.scalar(select(Event.id).where(
            Event.project_id == key.project_id, Event.occurred_at > now - every,
            Event.event_type == EventType.KEY_DELETION_IN_USE,
            Event.resource_id == key.id).limit(1))
        if recent is None:
            recorded += _deletion_in_use(session, key, now)
    return recorded


def _deletion_in_use(session: Session, key: Key, now: dt.datetime) -> int:
    """A ``key.deletion_in_use`` event for each account (the owner's, and
    those it is shared with) whose vaults the key still encrypts: once it is
    destroyed their backups cannot be read."""
    used = session.execute(select(Vault.project_id, func.count()).where(
        Vault.kms_key_id == key.id, Vault.status != VaultStatus.DELETING)
        .group_by(Vault.project_id).order_by(Vault.project_id)).all()
    when = key.deletion_at.date().isoformat() if key.deletion_at else "its deletion date"
    for account_id, count in used:
        events.record(
            session, project_id=account_id, event_type=EventType.KEY_DELETION_IN_USE, now=now,
            summary=f"Key {key.alias} ({key.id}) is scheduled for deletion on {when} but "
                    f"still encrypts {count} vault(s) of this account; their backups become "
                    "unreadable then unless the deletion is cancelled "
                    "(`cbr key cancel-deletion`).",
            resource_type="key", resource_id=key.id, resource_name=key.alias,
            details={"key_id": key.id, "alias": key.alias, "owner_account": key.project_id,
                     "vaults": int(count), "deletion_at": key.deletion_at.isoformat()
                     if key.deletion_at else ""})
    return len(used)


def cancel_deletion(session: Session, project_id: str, key_id: str,
                    now: dt.datetime) -> KeyView:
    key = _owned(session, project_id, key_id, "cancel the deletion of")
    state = _settle(key, now)
    if state != KeyState.PENDING_DELETION:
        raise errors.KeyStateIllegal(f"Key {key.alias} ({key.id}) is {state}; only a key "
                                     "pending deletion can be brought back.", key_id=key.id)
    key.state = KeyState.DISABLED
    key.deletion_at = None
    key.updated_at = now
    return _view(session, key, project_id, now)


def share_key(session: Session, project_id: str, key_id: str, account_id: str,
              now: dt.datetime) -> KeyView:
    key = _owned(session, project_id, key_id, "share")
    if account_id == project_id:
        raise errors.InvalidParameter("A key is not shared with the account that owns it.",
                                      field="account_id")
    if not account_id or session.get(Account, account_id) is None:
        raise errors.ResourceNotFound(f"No account with id {account_id!r} in this cloud.",
                                      account_id=account_id)
    state = _settle(key, now)
    if state == KeyState.DELETED:
        raise errors.KeyStateIllegal(f"Key {key.alias} ({key.id}) is deleted.", key_id=key.id)
    if _is_shared_with(session, key.id, account_id):
        raise errors.AlreadyExists(f"Key {key.alias} is already shared with {account_id}.",
                                   key_id=key.id)
    session.add(KeyShare(key_id=key.id, account_id=account_id, created_at=now))
    key.updated_at = now
    session.flush()
    return _view(session, key, project_id, now)


def unshare_key(session: Session, project_id: str, key_id: str, account_id: str,
                now: dt.datetime) -> KeyView:
    """Stops sharing. The other account's vaults under this key can no longer
    be backed up or restored, as with a disabled key."""
    key = _owned(session, project_id, key_id, "unshare")
    share = session.scalars(select(KeyShare).where(
        KeyShare.key_id == key.id, KeyShare.account_id == account_id)).first()
    if share is None:
        raise errors.ResourceNotFound(f"Key {key.alias} is not shared with {account_id!r}.",
                                      account_id=account_id)
    session.delete(share)
    key.updated_at = now
    session.flush()
    return _view(session, key, project_id, now)


# -- use by vaults ---------------------------------------------------------------------------


def key_for_new_vault(session: Session, project_id: str, key_id: str, protect_type: str,
                      now: dt.datetime) -> Key:
    """The key an encrypted vault of this account will use; refuses keys that
    are not usable, and shared-in keys for replication vaults."""
    if not key_id:
        raise errors.InvalidParameter("An encrypted vault needs kms_key_id; see "
                                      "`cbr key list`.", field="kms_key_id")
    key = _find(session, project_id, key_id)
    _require_enabled(key, now)
    if key.project_id != project_id and protect_type == ProtectType.REPLICATION:
        raise errors.SharedKeyNotAllowed(
            f"Key {key.alias} ({key.id}) is shared from account {key.project_id}; use a key "
            "this account owns for a replication vault.", key_id=key.id)
    return key


def _require_enabled(key: Key, now: dt.datetime) -> None:
    state = effective_state(key, now)
    if state != KeyState.ENABLED:
        hint = {KeyState.DISABLED: "enable it with `cbr key enable`",
                KeyState.PENDING_DELETION: "cancel its deletion and enable it",
                KeyState.DELETED: "it is destroyed; what it protected cannot be read"
                }[KeyState(state)]
        raise errors.KeyNotUsable(f"Key {key.alias} ({key.id}) is {state}; {hint}.",
                                  key_id=key.id, state=state)


def check_vault_key(session: Session, vault: Vault, now: dt.datetime) -> Key | None:
    """The key of an encrypted vault if the vault may use it now (enabled, and
    owned by or still shared with the vault's account); None if unencrypted."""
    if not vault.encrypted:
        return None
    key = session.get(Key, vault.kms_key_id)
    if key is None:
        raise errors.KeyNotUsable(f"Key {vault.kms_key_id} of vault {vault.name!r} no longer "
                                  "exists.", key_id=vault.kms_key_id)
    _require_enabled(key, now)
    if key.project_id != vault.project_id and not _is_shared_with(session, key.id,
                                                                  vault.project_id):
        raise errors.KeyNotUsable(
            f"Key {key.alias} ({key.id}) of vault {vault.name!r} is no longer shared with "
            "this account.", key_id=key.id)
    return key


def customer_key(root: RootKey, key: Key) -> CustomerKey:
    """The key as a wrapper, for the controller's own use only."""
    if key.material_sealed is None:
        raise errors.KeyNotUsable(f"Key {key.alias} ({key.id}) is deleted.", key_id=key.id)
    return CustomerKey(key.id, root.unseal(key.material_sealed, key_id=key.id,
                                           project_id=key.project_id))


def vault_key(session: Session, root: RootKey, vault: Vault, now: dt.datetime
              ) -> CustomerKey | None:
    """The wrapper of an encrypted vault's key after :func:`check_vault_key`."""
    key = check_vault_key(session, vault, now)
    return customer_key(root, key) if key is not None else None

