"""Console sessions: who is signed in, until when, and what ends it."""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass

import pytest
from sqlalchemy import select

from cbr import errors
from controller.app import App
from controller.persistence.models import ConsoleSession, User
from controller.services import console_sessions as sessions
from controller.services import iam
from tests.state.conftest import NOW

PASSWORD = "a long console passphrase"


@dataclass
class Tenant:
    account_id: str
    user_id: str
    access_key_id: str
    secret_key: str


@pytest.fixture
def tenant(app: App) -> Tenant:
    with app.db.begin() as s:
        account, user, key, secret = iam.create_account(s, app.keyring, "acme", "ops", NOW)
        assert user is not None and key is not None
        caller = iam.caller_of(s, user, key.id)
        iam.set_password(s, caller, user.id, PASSWORD)
        return Tenant(account.id, user.id, key.id, secret)


def _current(app: App, token: str, at: dt.datetime) -> sessions.Current | None:
    with app.db.begin() as s:
        return sessions.current(s, token, at)


def _password_sign_in(app: App, at: dt.datetime = NOW) -> sessions.SignedIn:
    with app.db.begin() as s:
        return sessions.sign_in_with_password(s, "acme", "ops", PASSWORD, "10.0.0.9", at)


def test_a_password_sign_in_gives_the_users_caller_and_stores_only_the_tokens_hash(
        app: App, tenant: Tenant) -> None:
    signed = _password_sign_in(app)
    current = _current(app, signed.token, NOW + dt.timedelta(minutes=1))
    assert current is not None and current.user_name == "ops"
    assert (current.caller.account_id, current.caller.user_id) == (tenant.account_id,
                                                                   tenant.user_id)
    assert "cbr:vaults:create" in current.caller.actions  # CBRFullAccess
    assert current.csrf_token == signed.csrf_token and len(signed.csrf_token) >= 40
    with app.db.begin() as s:
        [row] = s.scalars(select(ConsoleSession)).all()
        assert row.id == hashlib.sha256(signed.token.encode()).hexdigest()
        assert signed.token not in (row.id, row.csrf_token)


@pytest.mark.parametrize(("account", "user", "password"), [
    ("acme", "ops", "not the passphrase"), ("acme", "nobody", PASSWORD),
    ("other", "ops", PASSWORD)])
def test_every_wrong_sign_in_is_refused_alike(app: App, tenant: Tenant, account: str,
                                              user: str, password: str) -> None:
    with app.db.begin() as s, pytest.raises(errors.Unauthenticated) as err:
        sessions.sign_in_with_password(s, account, user, password, "", NOW)
    assert err.value.detail == "Wrong account, user name or password."


def test_a_user_without_a_password_cannot_sign_in_with_an_empty_one(
        app: App, tenant: Tenant) -> None:
    with app.db.begin() as s:
        user = s.get(User, tenant.user_id)
        assert user is not None
        user.password_hash = ""
    with app.db.begin() as s, pytest.raises(errors.Unauthenticated):
        sessions.sign_in_with_password(s, "acme", "ops", "", "", NOW)


def test_a_session_ends_idle_after_30_minutes_and_after_12_hours_whatever_its_use(
        app: App, tenant: Tenant) -> None:
    idle = _password_sign_in(app)
    assert _current(app, idle.token, NOW + dt.timedelta(minutes=29)) is not None
    assert _current(app, idle.token, NOW + dt.timedelta(minutes=60)) is None
    busy = _password_sign_in(app)
    at = NOW
    while at < NOW + dt.timedelta(hours=12):
        at += dt.timedelta(minutes=20)
        alive = _current(app, busy.token, at)
        assert (alive is not None) == (at < NOW + dt.timedelta(hours=12))


def test_sign_out_and_a_new_password_end_password_sessions_but_not_key_sessions(
        app: App, tenant: Tenant) -> None:
    first, second = _password_sign_in(app), _password_sign_in(app)
    resolved = iam.access_key_cache(app).lookup(tenant.access_key_id)
    with app.db.begin() as s:
        by_key = sessions.sign_in_with_key(s, resolved, tenant.secret_key, "", NOW)
        sessions.sign_out(s, first.token)
    later = NOW + dt.timedelta(minutes=1)
    assert _current(app, first.token, later) is None
    assert _current(app, second.token, later) is not None
    with app.db.begin() as s:
        user = s.get(User, tenant.user_id)
        assert user is not None
        iam.set_password(s, iam.caller_of(s, user), tenant.user_id, "another passphrase!")
    assert _current(app, second.token, later) is None
    assert _current(app, by_key.token, later) is not None


def test_a_key_sign_in_needs_the_right_secret_and_ends_with_its_key(
        app: App, tenant: Tenant) -> None:
    resolved = iam.access_key_cache(app).lookup(tenant.access_key_id)
    with app.db.begin() as s, pytest.raises(errors.Unauthenticated):
        sessions.sign_in_with_key(s, resolved, "x" * 40, "", NOW)
    with app.db.begin() as s, pytest.raises(errors.Unauthenticated):
        sessions.sign_in_with_key(s, None, tenant.secret_key, "", NOW)  # no such key
    with app.db.begin() as s:
        signed = sessions.sign_in_with_key(s, resolved, tenant.secret_key, "", NOW)
    later = NOW + dt.timedelta(minutes=1)
    current = _current(app, signed.token, later)
    assert current is not None and current.caller.access_key_id == tenant.access_key_id
    with app.db.begin() as s:
        user = s.get(User, tenant.user_id)
        assert user is not None
        other_key, _ = iam.create_access_key(s, app.keyring, user, NOW)
        iam.delete_access_key(s, iam.caller_of(s, user, other_key.id), tenant.access_key_id)
    assert _current(app, signed.token, later) is None


def test_a_revoked_grant_takes_effect_on_the_next_page(app: App, tenant: Tenant) -> None:
    signed = _password_sign_in(app)
    with app.db.begin() as s:
        [grant] = [g for g in iam.list_grants(s, tenant.account_id, tenant.user_id)
                   if g.action == "CBRFullAccess"]
        iam.delete_grant(s, tenant.account_id, grant.id)
    current = _current(app, signed.token, NOW + dt.timedelta(minutes=1))
    assert current is not None and "cbr:vaults:create" not in current.caller.actions
