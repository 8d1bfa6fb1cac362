"""Accounts, users, access keys and grants: the cloud's IAM.

Managed policies expand to actions here, in one place. Secret keys are
returned once at creation and stored sealed by the keyring.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import secrets
import string
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from cbr import errors
from cbr.clock import utc_now
from controller.keyring import Keyring
from controller.persistence.models import AccessKey, Account, ConsoleSession, Grant, User
from controller.services import actions, paging, passwords, validation
from controller.services.actions import Caller

if TYPE_CHECKING:
    from controller.app import App

log = logging.getLogger("cbr.controller.iam")

MANAGED_POLICIES = ("AdministratorAccess", "CBRFullAccess", "CBRReadOnlyAccess", "IAMFullAccess")
ADMIN_CREDENTIALS_FILE = "admin-credentials.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
_AK_ALPHABET = string.ascii_uppercase + string.digits


def expand(grant: str) -> frozenset[str]:
    """The actions one grant gives."""
    known = actions.known_actions()
    if grant == "AdministratorAccess":
        return known
    if grant == "CBRFullAccess":
        return frozenset(a for a in known if a.startswith("cbr:"))
    if grant == "CBRReadOnlyAccess":
        return frozenset(a for a in known if a.startswith("cbr:")
                         and a.rsplit(":", 1)[-1] in ("get", "list"))
    if grant == "IAMFullAccess":
        return frozenset(a for a in known if a.startswith("iam:"))
    return frozenset({actions.LEGACY_ACTION_NAMES.get(grant, grant)})


def policy_covering(action: str) -> str:
    return "CBRFullAccess" if action.startswith("cbr:") else "IAMFullAccess"


def validate_grant(action: str) -> str:
    if action in MANAGED_POLICIES or action in actions.LEGACY_ACTION_NAMES:
        return action
    if action in actions.known_actions():
        return action
    raise errors.InvalidParameter(
        f"Unknown action {action!r}. Grant an action such as cbr:vaults:create or a managed "
        f"policy: {', '.join(MANAGED_POLICIES)}.", field="action")


def validate_name(name: str, what: str) -> str:
    if not _NAME.match(name or ""):
        raise errors.InvalidParameter(
            f"{what} name {name!r} is not valid: 1 to 64 letters, digits, '_', '.', '@' or "
            "'-', starting with a letter or digit.", field="name")
    return name


def now_utc() -> dt.datetime:
    return utc_now()


# -- access keys ---------------------------------------------------------------


def _new_access_key_id() -> str:
    return "AK" + "".join(secrets.choice(_AK_ALPHABET) for _ in range(18))


def new_secret_key() -> str:
    """40 URL-safe characters that never begin with "-": a secret that looks
    like an option is refused by every command line it is typed into
    (``cbr --secret-key -x...``: "expected one argument")."""
    while True:
        sk = secrets.token_urlsafe(30)
        if not sk.startswith("-"):
            return sk


def create_access_key(session: Session, keyring: Keyring, user: User,
                      now: dt.datetime) -> tuple[AccessKey, str]:
    ak = _new_access_key_id()
    sk = new_secret_key()
    key = AccessKey(id=ak, user_id=user.id, secret_sealed=keyring.seal(sk.encode(), ak.encode()),
                    active=True, created_at=now)
    session.add(key)
    session.flush()
    return key, sk


@dataclass(frozen=True)
class ResolvedKey:
    secret: str
    caller: Caller


def access_key_cache(app: App) -> AccessKeyCache:
    """The controller's one key cache: the auth interceptor reads it, IAM
    changes clear it (so on this controller they take effect at once)."""
    if app.access_keys is None:
        app.access_keys = AccessKeyCache(app)
    return app.access_keys


class AccessKeyCache:
    """Resolves an access key to its secret and caller, cached for a moment.

    Every signed call needs this; the cache keeps the database off the hot
    path. An IAM change made through this controller clears it; one made
    through another controller of the cloud takes effect within TTL seconds
    (a deleted key at once: controller.services.replay checks it each call).
    """

    TTL = 2.0

    def __init__(self, app: object) -> None:
        self._app = app
        self._entries: dict[str, tuple[float, ResolvedKey | None]] = {}
        self._lock = threading.Lock()

    def lookup(self, access_key: str) -> ResolvedKey | None:
        if not access_key or len(access_key) > 64:
            return None
        now = time.monotonic()
        with self._lock:
            hit = self._entries.get(access_key)
        if hit is not None and hit[0] > now:
            return hit[1]
        resolved = self._resolve(access_key)
        with self._lock:
            if len(self._entries) > 10_000:
                self._entries.clear()
            self._entries[access_key] = (now + self.TTL, resolved)
        return resolved

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def _resolve(self, access_key: str) -> ResolvedKey | None:
        app = self._app
        with app.db.begin() as session:  # type: ignore[attr-defined]
            key = session.get(AccessKey, access_key)
            if key is None or not key.active:
                return None
            secret = app.keyring.unseal(key.secret_sealed, key.id.encode()).decode()  # type: ignore[attr-defined]
            return ResolvedKey(secret, caller_of(session, key.user, key.id))


def caller_of(session: Session, user: User, access_key_id: str = "") -> Caller:
    """Who ``user`` is to the API and the console: the actions of every grant
    it holds, managed policies expanded."""
    grants = session.scalars(select(Grant.action).where(Grant.user_id == user.id)).all()
    acts: set[str] = set()
    for g in grants:
        acts |= expand(g)
    return Caller(account_id=user.account_id, user_id=user.id, access_key_id=access_key_id,
                  actions=frozenset(acts), administrator=user.account.administrator)


# -- accounts and users --------------------------------------------------------


VAULT_QUOTA_GB_DEFAULT = 10240
VAULT_QUOTA_GB_MAX = 10_485_760_000


def _vault_quota(quota: int) -> int:
    """An account's vault quota (0: the default), checked."""
    quota = quota or VAULT_QUOTA_GB_DEFAULT
    validation.int_range(quota, 1, VAULT_QUOTA_GB_MAX, "vault_quota_gb")
    return quota


def create_account(session: Session, keyring: Keyring, name: str, admin_user_name: str,
                   now: dt.datetime, *, administrator: bool = False, vault_quota_gb: int = 0,
                   ) -> tuple[Account, User | None, AccessKey | None, str]:
    validate_name(name, "Account")
    quota = _vault_quota(vault_quota_gb)
    if session.scalar(select(Account).where(Account.name == name)) is not None:
        raise errors.AlreadyExists(f"An account named {name!r} exists.", name=name)
    account = Account(name=name, administrator=administrator, vault_quota_gb=quota,
                      created_at=now)
    session.add(account)
    session.flush()
    if not admin_user_name:
        return account, None, None, ""
    user = create_user(session, account.id, admin_user_name, now)
    grants = ("AdministratorAccess",) if administrator else ("CBRFullAccess", "IAMFullAccess")
    for g in grants:
        session.add(Grant(user_id=user.id, action=g, created_at=now))
    key, sk = create_access_key(session, keyring, user, now)
    return account, user, key, sk


def create_user(session: Session, account_id: str, name: str, now: dt.datetime) -> User:
    validate_name(name, "User")
    exists = session.scalar(select(User).where(User.account_id == account_id, User.name == name))
    if exists is not None:
        raise errors.AlreadyExists(f"A user named {name!r} exists in this account.", name=name)
    user = User(account_id=account_id, name=name, created_at=now)
    session.add(user)
    session.flush()
    return user


def get_user(session: Session, account_id: str, user_id: str) -> User:
    user = session.get(User, user_id) if user_id else None
    if user is None or user.account_id != account_id:
        raise errors.ResourceNotFound(f"No user with id {user_id!r} in this account.",
                                      user_id=user_id)
    return user


def get_account(session: Session, caller: Caller, account_id: str) -> Account:
    account = session.get(Account, account_id) if account_id else None
    if account is None or (not caller.administrator and account.id != caller.account_id):
        raise errors.ResourceNotFound(f"No account with id {account_id!r}.",
                                      account_id=account_id)
    return account


def update_account(session: Session, caller: Caller, account_id: str,
                   vault_quota_gb: int) -> Account:
    """Sets an account's vault quota (administrator only). Lowering it below
    what the account's vaults already have stops auto_expand; it shrinks
    no vault."""
    require_administrator(caller, "change accounts", "iam:accounts:update")
    account = get_account(session, caller, account_id)
    account.vault_quota_gb = validation.int_range(vault_quota_gb, 1, VAULT_QUOTA_GB_MAX,
                                                  "vault_quota_gb")
    return account


def caller_identity(session: Session, caller: Caller) -> tuple[Account, User]:
    account = session.get(Account, caller.account_id)
    user = session.get(User, caller.user_id)
    assert account is not None and user is not None
    return account, user


def list_accounts(session: Session, caller: Caller, page_size: int,
                  page_token: str) -> tuple[Sequence[Account], str, int]:
    """Every account for the administrator; the caller's own for anyone else."""
    stmt = select(Account)
    if not caller.administrator:
        stmt = stmt.where(Account.id == caller.account_id)
    return paging.paginate(session, stmt, Account, page_size, page_token)


def list_users(session: Session, account_id: str, page_size: int,
               page_token: str) -> tuple[Sequence[User], str, int]:
    stmt = select(User).where(User.account_id == account_id)
    return paging.paginate(session, stmt, User, page_size, page_token)


def require_administrator(caller: Caller, what: str, action: str) -> None:
    if not caller.administrator:
        raise errors.PermissionDenied(
            f"Only the administrator account may {what} ({action} is granted only there).",
            action=action)


def set_password(session: Session, caller: Caller, user_id: str, password: str) -> User:
    """Sets (or, with "", removes) a user's console password, as a hash."""
    user = get_user(session, caller.account_id, user_id)
    user.password_hash = passwords.hash_password(passwords.check(password)) if password else ""
    # Whoever signed in with the old password is signed out.
    session.execute(delete(ConsoleSession).where(ConsoleSession.user_id == user.id,
                                                 ConsoleSession.access_key_id == ""))
    return user


def delete_user(session: Session, caller: Caller, user_id: str) -> None:
    user = get_user(session, caller.account_id, user_id)
    if user.id == caller.user_id:
        raise errors.Conflict("A user cannot delete itself.")
    session.delete(user)


def get_access_key(session: Session, account_id: str, access_key_id: str) -> AccessKey:
    key = session.get(AccessKey, access_key_id) if access_key_id else None
    if key is None or key.user.account_id != account_id:
        raise errors.ResourceNotFound(f"No access key {access_key_id!r} in this account.")
    return key


def list_access_keys(session: Session, account_id: str, user_id: str) -> list[AccessKey]:
    user = get_user(session, account_id, user_id)
    return list(session.scalars(select(AccessKey).where(AccessKey.user_id == user.id)
                                .order_by(AccessKey.created_at)).all())


def delete_access_key(session: Session, caller: Caller, access_key_id: str) -> None:
    key = get_access_key(session, caller.account_id, access_key_id)
    if key.id == caller.access_key_id:
        raise errors.Conflict("The key signing this call cannot delete itself.")
    session.delete(key)


def create_grant(session: Session, account_id: str, user_id: str, action: str,
                 now: dt.datetime) -> Grant:
    user = get_user(session, account_id, user_id)
    validate_grant(action)
    if session.scalar(select(Grant).where(Grant.user_id == user.id,
                                          Grant.action == action)) is not None:
        raise errors.AlreadyExists(f"The user already holds {action}.")
    if action == "AdministratorAccess" and not user.account.administrator:
        raise errors.PermissionDenied("AdministratorAccess is for the administrator account.")
    grant = Grant(user_id=user.id, action=action, created_at=now)
    session.add(grant)
    session.flush()
    return grant


def list_grants(session: Session, account_id: str, user_id: str) -> list[Grant]:
    user = get_user(session, account_id, user_id)
    return list(session.scalars(select(Grant).where(Grant.user_id == user.id)
                                .order_by(Grant.created_at)).all())


def delete_grant(session: Session, account_id: str, grant_id: str) -> None:
    grant = session.get(Grant, grant_id) if grant_id else None
    if grant is None:
        raise errors.ResourceNotFound(f"No grant with id {grant_id!r}.")
    get_user(session, account_id, grant.user_id)
    session.delete(grant)


def caller_actions(caller: Caller) -> list[str]:
    return sorted(caller.actions | actions.ALWAYS_ALLOWED)


# -- first start ---------------------------------------------------------------


def bootstrap_admin(db: object, keyring: Keyring, data_dir: Path, endpoint: str,
                    now: dt.datetime, *, ca_pem: str = "") -> bool:
    """Creates the administrator account on the first start; True if it did.

    The credentials file is written inside the transaction and removed if the
    commit fails, so there is never a key on disk the database does not know,
    nor an administrator whose secret was lost.
    """
    path = data_dir / ADMIN_CREDENTIALS_FILE
    written = False
    try:
        with db.begin() as session:  # type: ignore[attr-defined]
            admin = select(Account).where(Account.administrator.is_(True))
            if session.scalar(admin) is not None:
                return False
            account, user, key, sk = create_account(session, keyring, "admin", "admin", now,
                                                    administrator=True)
            assert user is not None and key is not None
            # The CA the API's TLS certificate comes from: `cbr configure
            # --import-admin-credentials` pins it.
            payload = {"access_key": key.id, "secret_key": sk, "account_id": account.id,
                       "user_id": user.id, "endpoint": endpoint, "ca_certificate": ca_pem}
            tmp = path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump(payload, fh, indent=2)
                fh.write("\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
            written = True
    except BaseException:
        if written:
            path.unlink(missing_ok=True)
        raise
    log.warning("created the administrator account; its access key and secret key are in %s "
                "(mode 0600). Keep them safe: the secret key is shown nowhere else.", path)
    return True


