"""Accounts, users, keys and grants; secrets never stored in clear."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from sqlalchemy import select

from cbr import errors
from controller.app import App
from controller.persistence.models import AccessKey, Account
from controller.services import actions, iam
from tests.state.conftest import NOW


def test_first_start_creates_the_admin_once_and_writes_a_0600_file(app: App) -> None:
    data_dir: Path = app.config.data_dir
    assert iam.bootstrap_admin(app.db, app.keyring, data_dir, "127.0.0.1:1", NOW)
    assert not iam.bootstrap_admin(app.db, app.keyring, data_dir, "127.0.0.1:1", NOW)
    path = data_dir / iam.ADMIN_CREDENTIALS_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    creds = json.loads(path.read_text())
    with app.db.begin() as s:
        accounts = s.scalars(select(Account).where(Account.administrator.is_(True))).all()
        assert [a.id for a in accounts] == [creds["account_id"]]
        key = s.get(AccessKey, creds["access_key"])
        assert key is not None
        assert creds["secret_key"].encode() not in key.secret_sealed


def test_secret_keys_are_not_in_the_database_in_clear(app: App, project: str) -> None:
    with app.db.begin() as s:
        user = iam.create_user(s, project, "alice", NOW)
        key, secret = iam.create_access_key(s, app.keyring, user, NOW)
        key_id = key.id
    raw = Path(app.config.effective_database_url.removeprefix("sqlite:///"))
    if raw.exists():
        assert secret.encode() not in raw.read_bytes()
    with app.db.begin() as s:
        stored = s.get(AccessKey, key_id)
        assert stored is not None
        assert app.keyring.unseal(stored.secret_sealed, key_id.encode()).decode() == secret


def test_managed_policies_expand_to_actions() -> None:
    full = iam.expand("CBRFullAccess")
    assert "cbr:vaults:create" in full and "cbr:backups:get" in full
    assert not any(a.startswith("iam:") for a in full)
    assert set(actions.REPLICATION_TARGET_ACTIONS) <= full
    ro = iam.expand("CBRReadOnlyAccess")
    assert "cbr:vaults:get" in ro and "cbr:vaults:create" not in ro
    assert iam.expand("cbr:thirdAuth:list") == {"cbr::listThirdAuth"}


def test_unknown_actions_cannot_be_granted(app: App, project: str) -> None:
    with app.db.begin() as s:
        user = iam.create_user(s, project, "bob", NOW)
        with pytest.raises(errors.InvalidParameter, match="Unknown action"):
            iam.create_grant(s, project, user.id, "cbr:vaults:explode", NOW)


def test_duplicate_users_are_refused(app: App, project: str) -> None:
    with app.db.begin() as s:
        iam.create_user(s, project, "carol", NOW)
    with app.db.begin() as s, pytest.raises(errors.AlreadyExists):
        iam.create_user(s, project, "carol", NOW)
