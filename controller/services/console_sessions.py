"""Web console sign-in: who a browser is, for how long, and its CSRF token.

A session is a random 32-byte token in an HttpOnly cookie; the database
keeps only its SHA-256 (``ConsoleSession.id``), so reading the table signs
no one in. A session lasts ``IDLE`` without use and ``ABSOLUTE`` at most,
ends at sign-out, when its user or account is deleted, when its access key
is deleted or disabled, and (for a password sign-in) when the password
changes. Its caller is rebuilt from the user's grants at each use, so a
revoked grant takes effect at once. See docs/console.md.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from cbr import errors
from controller.persistence.models import AccessKey, Account, ConsoleSession, User
from controller.services import iam, passwords
from controller.services.actions import Caller

IDLE = dt.timedelta(minutes=30)
ABSOLUTE = dt.timedelta(hours=12)
TOKEN_BYTES = 32

# The metadata of the API calls the console makes for a browser: its session
# token, and the browser's address for the audit trail (controller.api).
API_SESSION_HEADER = "x-cbr-console-session"
API_SOURCE_HEADER = "x-cbr-console-source"

_REFUSED = "Wrong account, user name or password."
_REFUSED_KEY = "Wrong access key or secret key, or the key is disabled."


@dataclass(frozen=True)
class SignedIn:
    """What the browser gets: the token (only ever in its cookie) and the
    token it sends back with every change."""

    token: str
    csrf_token: str
    expires_at: dt.datetime


@dataclass(frozen=True)
class Current:
    caller: Caller
    csrf_token: str
    user_name: str


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _open(session: Session, user: User, access_key_id: str, source: str,
          now: dt.datetime) -> SignedIn:
    token = secrets.token_urlsafe(TOKEN_BYTES)
    csrf = secrets.token_urlsafe(TOKEN_BYTES)
    session.add(ConsoleSession(id=_digest(token), account_id=user.account_id, user_id=user.id,
                               access_key_id=access_key_id, csrf_token=csrf,
                               source=source[:128], created_at=now, last_seen_at=now,
                               expires_at=now + ABSOLUTE))
    return SignedIn(token, csrf, now + ABSOLUTE)


def sign_in_with_password(session: Session, account_name: str, user_name: str,
                          password: str, source: str, now: dt.datetime) -> SignedIn:
    """A user of an account by name and password. Every refusal says the same
    and costs about the same (one scrypt), so it tells nothing of which part
    was wrong."""
    user = session.scalar(select(User).join(Account, Account.id == User.account_id).where(
        Account.name == account_name, User.name == user_name))
    stored = user.password_hash if user is not None else ""
    if not passwords.verify(password, stored) or user is None:
        raise errors.Unauthenticated(_REFUSED)
    return _open(session, user, "", source, now)


def sign_in_with_key(session: Session, resolved: iam.ResolvedKey | None, secret_key: str,
                     source: str, now: dt.datetime) -> SignedIn:
    """An access key and its secret key; ``resolved`` is the key as
    ``iam.AccessKeyCache.lookup`` found it, looked up before this
    transaction (the cache opens its own)."""
    if resolved is None or not hmac.compare_digest(resolved.secret.encode(),
                                                   secret_key.encode()):
        raise errors.Unauthenticated(_REFUSED_KEY)
    user = session.get(User, resolved.caller.user_id)
    if user is None:
        raise errors.Unauthenticated(_REFUSED_KEY)
    return _open(session, user, resolved.caller.access_key_id, source, now)


def _live(session: Session, token: str, now: dt.datetime) -> tuple[ConsoleSession, User] | None:
    """The session row of ``token`` and its user while both are good; an
    expired session, or one whose key is gone, is deleted."""
    if not token or len(token) > 128:
        return None
    row = session.get(ConsoleSession, _digest(token))
    if row is None:
        return None
    if now >= row.expires_at or now - row.last_seen_at >= IDLE:
        session.delete(row)
        return None
    if row.access_key_id:
        key = session.get(AccessKey, row.access_key_id)
        if key is None or not key.active:
            session.delete(row)
            return None
    user = session.get(User, row.user_id)
    if user is None:
        return None
    return row, user


def current(session: Session, token: str, now: dt.datetime) -> Current | None:
    """The signed-in caller of ``token``, or None (unknown, expired, or its
    key gone); a use moves the idle expiry on (once per page, not per call)."""
    live = _live(session, token, now)
    if live is None:
        return None
    row, user = live
    row.last_seen_at = now
    return Current(iam.caller_of(session, user, row.access_key_id), row.csrf_token, user.name)


def caller_for(session: Session, token: str, now: dt.datetime) -> Caller | None:
    """The caller of each API call the console makes for ``token``: checked
    like ``current`` and rebuilt from the grants, but nothing is written, so
    the calls of one page add no writes."""
    live = _live(session, token, now)
    if live is None:
        return None
    row, user = live
    return iam.caller_of(session, user, row.access_key_id)


def sign_out(session: Session, token: str) -> None:
    session.execute(delete(ConsoleSession).where(ConsoleSession.id == _digest(token)))


def purge(session: Session, now: dt.datetime) -> int:
    """Forgets sessions past their absolute expiry (idle ones go at next use)."""
    result = session.execute(delete(ConsoleSession).where(ConsoleSession.expires_at <= now))
    return int(getattr(result, "rowcount", 0) or 0)
