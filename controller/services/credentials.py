"""Cross-cloud replication credentials, kept on the source cloud.

The secret key is sealed at rest and never returned; the target cloud and
account of a credential never change after creation (reference rule 12).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from cbr import errors
from controller.keyring import Keyring
from controller.persistence.models import Credential
from controller.services import paging, validation


def get_credential(session: Session, project_id: str, credential_id: str) -> Credential:
    cred = session.get(Credential, credential_id) if credential_id else None
    if cred is None or cred.project_id != project_id:
        raise errors.ResourceNotFound(f"No credential with id {credential_id!r}.",
                                      credential_id=credential_id)
    return cred


def list_credentials(session: Session, project_id: str, target_cloud: str, page_size: int,
                     page_token: str) -> tuple[Sequence[Credential], str, int]:
    """A page of the account's credentials, of one target cloud when given."""
    stmt = select(Credential).where(Credential.project_id == project_id)
    if target_cloud:
        stmt = stmt.where(Credential.target_cloud == target_cloud)
    return paging.paginate(session, stmt, Credential, page_size, page_token)


def delete_credential(session: Session, project_id: str, credential_id: str) -> None:
    session.delete(get_credential(session, project_id, credential_id))


_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}|\[[0-9A-Fa-f:.]+\]")


def endpoint(value: str) -> str:
    """HOST:PORT, nothing else: no unix socket, no URI scheme (the
    controller dials what this lets through; controller.jobs.replicator.check_endpoint
    decides which addresses)."""
    host, sep, port = value.rpartition(":")
    if not sep or not _HOST.fullmatch(host) or not port.isdigit() \
            or not 0 < int(port) < 65536:
        raise errors.InvalidParameter(
            f"target_endpoint {value!r} must be HOST:PORT of the target controller.",
            field="target_endpoint")
    return value


def check_new(conn: Session | Connection, project_id: str, name: str) -> None:
    """The checks of a new credential that need no other cloud."""
    validation.name(name)
    taken = select(Credential.id).where(Credential.project_id == project_id,
                                        Credential.name == name)
    if conn.scalar(taken) is not None:
        raise errors.AlreadyExists(f"A credential named {name!r} exists.", name=name)


def create_credential(session: Session, keyring: Keyring, project_id: str, *, name: str,
                      description: str, target_cloud: str, target_endpoint: str,
                      target_account_id: str, access_key_id: str, secret_access_key: str,
                      target_ca_pem: str, now: dt.datetime) -> Credential:
    validation.name(name)
    validation.description(description)
    validation.name(target_cloud, "target_cloud")
    validation.ident(target_account_id, "target_account_id")
    validation.ident(access_key_id, "access_key_id")
    if not secret_access_key or len(secret_access_key) > 128:
        raise errors.InvalidParameter("secret_access_key is required (at most 128 characters).",
                                      field="secret_access_key")
    endpoint(target_endpoint)
    taken = select(Credential.id).where(Credential.project_id == project_id,
                                        Credential.name == name)
    if session.scalar(taken) is not None:
        raise errors.AlreadyExists(f"A credential named {name!r} exists.", name=name)
    cred = Credential(project_id=project_id, name=name, description=description,
                      target_cloud=target_cloud, target_endpoint=target_endpoint,
                      target_ca_pem=target_ca_pem, target_account_id=target_account_id,
                      access_key_id=access_key_id, secret_sealed=b"", created_at=now,
                      updated_at=now)
    session.add(cred)
    session.flush()
    cred.secret_sealed = keyring.seal(secret_access_key.encode(), cred.id.encode())
    return cred


def update_credential(session: Session, keyring: Keyring, project_id: str, credential_id: str,
                      *, name: str, description: str, target_endpoint: str,
                      access_key_id: str, secret_access_key: str, target_cloud: str,
                      target_account_id: str, now: dt.datetime,
                      target_ca_pem: str = "") -> Credential:
    cred = get_credential(session, project_id, credential_id)
    if target_cloud and target_cloud != cred.target_cloud:
        raise errors.InvalidParameter(
            "A credential's target cloud cannot change; create a new credential.",
            field="target_cloud")
    if target_account_id and target_account_id != cred.target_account_id:
        raise errors.InvalidParameter(
            "A credential's target account id cannot change; create a new credential.",
            field="target_account_id")
    if name and name != cred.name:
        validation.name(name)
        taken = select(Credential.id).where(Credential.project_id == project_id,
                                            Credential.name == name)
        if session.scalar(taken) is not None:
            raise errors.AlreadyExists(f"A credential named {name!r} exists.", name=name)
        cred.name = name
    if description:
        cred.description = validation.description(description)
    if target_endpoint:
        cred.target_endpoint = endpoint(target_endpoint)
    if target_ca_pem:
        cred.target_ca_pem = target_ca_pem
    if access_key_id:
        cred.access_key_id = validation.ident(access_key_id, "access_key_id")
    if secret_access_key:
        cred.secret_sealed = keyring.seal(secret_access_key.encode(), cred.id.encode())
    cred.updated_at = now
    session.flush()
    return cred


@dataclass(frozen=True)
class AccessCheck:
    """A changed credential as the target cloud is asked about it before
    anything is stored: the request's values, the stored ones elsewhere."""

    name: str
    endpoint: str
    access_key_id: str
    secret: str
    target_account_id: str
    target_cloud: str
    current_ca_pem: str


def access_check(session: Session, keyring: Keyring, project_id: str, credential_id: str, *,
                 target_endpoint: str = "", access_key_id: str = "",
                 secret_access_key: str = "") -> AccessCheck:
    current = get_credential(session, project_id, credential_id)
    if access_key_id and not secret_access_key:
        raise errors.InvalidParameter(
            "A new access key needs its secret key.", field="secret_access_key")
    return AccessCheck(
        name=current.name, endpoint=target_endpoint or current.target_endpoint,
        access_key_id=access_key_id or current.access_key_id,
        secret=secret_access_key or keyring.unseal(
            current.secret_sealed, current.id.encode()).decode(),
        target_account_id=current.target_account_id, target_cloud=current.target_cloud,
        current_ca_pem=current.target_ca_pem)
