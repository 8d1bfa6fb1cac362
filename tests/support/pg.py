"""Throw-away PostgreSQL databases for tests that run on both SQLite and PostgreSQL.

Each test gets its own freshly created database so tests never see each other's
rows and can run in any order; the database is dropped (forcibly, in case a
controller process still holds a connection) when the test ends.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import sql

from tests.support.environment import unavailable

PG_HOST = os.environ.get("CBR_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("CBR_TEST_PG_PORT", "5432"))
PG_MAINTENANCE_DB = os.environ.get("CBR_TEST_PG_DB", "test")
# Roles tried in order: `postgres` on a stock install, `root` where the tests run as root.
PG_USERS: tuple[str, ...] = tuple(
    u for u in (os.environ.get("CBR_TEST_PG_USER"), "postgres", "root") if u
)


def postgres_required() -> bool:
    """Whether an unreachable PostgreSQL must fail the run instead of skipping (CI)."""
    return os.environ.get("CBR_REQUIRE_POSTGRES") == "1" or os.environ.get("CI") == "true"


def _url(user: str, database: str) -> str:
    return f"postgresql://{user}@{PG_HOST}:{PG_PORT}/{database}"


def _connect_admin() -> tuple[psycopg.Connection[tuple[object, ...]], str]:
    """An autocommit connection to the maintenance database and the role that worked.

    Raises the last connection error when no role can connect.
    """
    last: Exception | None = None
    for user in PG_USERS:
        try:
            conn = psycopg.connect(
                _url(user, PG_MAINTENANCE_DB), autocommit=True, connect_timeout=5
            )
        except psycopg.Error as exc:
            last = exc
            continue
        return conn, user
    assert last is not None
    raise last


@contextmanager
def fresh_database() -> Iterator[str]:
    """Creates a uniquely named database and yields its URL; drops it afterwards.

    When PostgreSQL cannot be reached the test is skipped locally but fails in CI
    (CBR_REQUIRE_POSTGRES=1 or CI=true), so CI never silently loses coverage.
    """
    try:
        admin, user = _connect_admin()
    except Exception as exc:  # any failure to connect means "not reachable"
        reason = f"PostgreSQL not reachable at {PG_HOST}:{PG_PORT}: {exc}"
        unavailable(reason, must=postgres_required())
    name = f"cbr_test_{secrets.token_hex(6)}"
    try:
        with admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        yield _url(user, name)
    finally:
        drop_database(name)


def drop_database(name: str) -> None:
    """Drops a test database even if connections to it are still open."""
    admin, _ = _connect_admin()
    with admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def set_reachable(url: str, reachable: bool) -> None:
    """Takes one test database away (no new connections, its sessions
    ended) or gives it back: an outage of that database alone, while the
    server keeps serving every other test."""
    name = url.rsplit("/", 1)[1]
    admin, _ = _connect_admin()
    with admin:
        admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
            sql.Identifier(name), sql.SQL("true" if reachable else "false")))
        if not reachable:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = %s AND pid <> pg_backend_pid()", (name,))
