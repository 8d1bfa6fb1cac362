"""Agent domain rules over a SQLAlchemy session: tokens, enrollment, inventory.

Owns the enrollment token format (``cbr1.<id>.<secret>.<ca sha256>``) and its
rules (only the secret's SHA-256 stored, one-time, expiring), the creation of
agent rows at enrollment, the upsert of what an agent reports into
protectables (never deleted: a vault may reference them; rows no longer
reported become ``gone``), and the online rule. No gRPC here: the servicer and
the hub call these functions, and so do the tests.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
import posixpath
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from cbr import enrollment, errors, limits
from controller.persistence.models import Agent, EnrollmentToken, Protectable
from controller.persistence.vocabulary import AgentRole, ObjectType
from controller.pki import CertificateAuthority, certificate_fingerprint
from controller.services import paging

log = logging.getLogger("cbr.controller.agents")

_OBJECT_TYPES = frozenset(ObjectType)


# -- enrollment tokens -----------------------------------------------------------


ParsedToken = enrollment.EnrollmentToken


def parse_token(token: str) -> enrollment.EnrollmentToken:
    """Splits a token; raises Unauthenticated when it is not one of ours."""
    try:
        return enrollment.parse(token)
    except ValueError as exc:
        raise errors.Unauthenticated(str(exc)) from None


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class NewToken:
    token: str
    token_id: str
    expires_at: dt.datetime


def create_token(
    session: Session,
    *,
    project_id: str,
    ca_fingerprint: str,
    now: dt.datetime,
    ttl_seconds: int = 0,
    description: str = "",
) -> NewToken:
    """A one-time token; the full token is returned once and only its hash kept."""
    if ttl_seconds < 0 or ttl_seconds > limits.ENROLLMENT_TOKEN_TTL_MAX_S:
        raise errors.InvalidParameter(
            f"ttl_seconds must be 0 (one hour) to {limits.ENROLLMENT_TOKEN_TTL_MAX_S} "
            f"(7 days); got {ttl_seconds}."
        )
    if len(description) > limits.DESCRIPTION_MAX_LENGTH:
        raise errors.InvalidParameter(
            f"description is longer than {limits.DESCRIPTION_MAX_LENGTH} characters."
        )
    ttl = ttl_seconds or limits.ENROLLMENT_TOKEN_TTL_DEFAULT_S
    token_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    expires_at = now + dt.timedelta(seconds=ttl)
    session.add(
        EnrollmentToken(
            id=token_id,
            project_id=project_id,
            secret_sha256=_sha256(secret),
            description=description,
            created_at=now,
            expires_at=expires_at,
        )
    )
    session.flush()
    token = enrollment.EnrollmentToken(token_id, secret, ca_fingerprint)
    return NewToken(str(token), token_id, expires_at)


# -- enrollment ------------------------------------------------------------------


@dataclass(frozen=True)
class Enrollment:
    agent_id: str
    project_id: str
    certificate_pem: bytes


def enroll(
    session: Session,
    ca: CertificateAuthority,
    *,
    token: str,
    csr_pem: str,
    name: str,
    hostname: str,
    role: str,
    version: str,
    now: dt.datetime,
) -> Enrollment:
    """Spends the token and creates the agent with a certificate over its CSR.

    Unknown, wrong, used and expired tokens are all refused with
    Unauthenticated, each with its own message; the token is marked used in
    the same transaction that creates the agent, by a conditional update, so
    two enrollments racing on one token cannot both succeed.
    """
    parsed = parse_token(token)
    if parsed.ca_sha256 != ca.ca_fingerprint():
        raise errors.Unauthenticated(
            "The enrollment token was made by another controller (its CA fingerprint "
            "differs). Make a token on the controller you enroll with."
        )
    row = session.get(EnrollmentToken, parsed.token_id)
    if row is None or not hmac.compare_digest(row.secret_sha256, _sha256(parsed.secret)):
        raise errors.Unauthenticated("The enrollment token is unknown or its secret is wrong.")
    if row.used_at is not None:
        raise errors.Unauthenticated(
            "The enrollment token was already used; tokens are one-time. Make a new one "
            "with 'cbr agent enroll-token'."
        )
    if row.expires_at <= now:
        raise errors.Unauthenticated(
            f"The enrollment token expired at {row.expires_at.isoformat()}. Make a new one "
            "with 'cbr agent enroll-token'."
        )
    name = name.strip()
    if not name or len(name) > limits.NAME_MAX_LENGTH:
        raise errors.InvalidParameter(
            f"The agent name must be 1 to {limits.NAME_MAX_LENGTH} characters."
        )
    roles = tuple(AgentRole)
    if role not in roles:
        raise errors.InvalidParameter(f"role must be one of {', '.join(roles)}.")
    agent = Agent(
        project_id=row.project_id,
        name=name,
        hostname=hostname[:255],
        role=role,
        version=version[:32],
        certificate_fingerprint="",
        enrolled_at=now,
        connected=False,
        revoked=False,
    )
    session.add(agent)
    session.flush()
    cert_pem = ca.issue_client_certificate(csr_pem, agent.id,
                                           importer=agent.role == AgentRole.IMPORTER)
    agent.certificate_fingerprint = certificate_fingerprint(cert_pem)
    spent = session.execute(
        update(EnrollmentToken)
        .where(EnrollmentToken.id == row.id, EnrollmentToken.used_at.is_(None))
        .values(used_at=now, used_by_agent_id=agent.id)
        .execution_options(synchronize_session=False)
    )
    if getattr(spent, "rowcount", 1) != 1:
        raise errors.Unauthenticated("The enrollment token was already used; tokens are "
                                     "one-time.")
    log.info("agent %s (%s) enrolled in project %s", agent.id, name, row.project_id)
    return Enrollment(agent.id, row.project_id, cert_pem)


# -- agents ----------------------------------------------------------------------


def is_online(
    connected: bool,
    last_seen_at: dt.datetime | None,
    now: dt.datetime,
    offline_after: float,
) -> bool:
    """The online rule: a stream is open and a heartbeat came within offline_after."""
    if not connected or last_seen_at is None:
        return False
    return (now - last_seen_at).total_seconds() <= offline_after


@dataclass(frozen=True)
class AgentView:
    """An agent as the API shows it, with its live state already folded in."""

    id: str
    project_id: str
    name: str
    hostname: str
    role: str
    version: str
    certificate_fingerprint: str
    enrolled_at: dt.datetime
    last_seen_at: dt.datetime | None
    connected_at: dt.datetime | None
    online: bool
    protectable_count: int


@dataclass(frozen=True)
class LiveState:
    """What the hub knows in memory of one agent, newer than the database."""

    connected: bool
    last_seen_at: dt.datetime | None
    connected_at: dt.datetime | None


def _view(
    agent: Agent, count: int, now: dt.datetime, offline_after: float, live: LiveState | None
) -> AgentView:
    connected, last_seen, connected_at = agent.connected, agent.last_seen_at, agent.connected_at
    if live is not None:
        connected = live.connected
        last_seen = max(filter(None, (last_seen, live.last_seen_at)), default=None)
        connected_at = live.connected_at or connected_at
    return AgentView(
        id=agent.id,
        project_id=agent.project_id,
        name=agent.name,
        hostname=agent.hostname,
        role=agent.role,
        version=agent.version,
        certificate_fingerprint=agent.certificate_fingerprint,
        enrolled_at=agent.enrolled_at,
        last_seen_at=last_seen,
        connected_at=connected_at,
        online=is_online(connected, last_seen, now, offline_after),
        protectable_count=count,
    )


def _counts(session: Session, agent_ids: Sequence[str]) -> dict[str, int]:
    if not agent_ids:
        return {}
    rows = session.execute(
        select(Protectable.agent_id, func.count())
        .where(Protectable.agent_id.in_(agent_ids), Protectable.gone.is_(False))
        .group_by(Protectable.agent_id)
    )
    return {agent_id: int(n) for agent_id, n in rows}


def get_agent(
    session: Session,
    project_id: str,
    agent_id: str,
    *,
    now: dt.datetime,
    offline_after: float,
    live: Callable[[str], LiveState | None] | None = None,
) -> AgentView:
    agent = session.get(Agent, agent_id)
    if agent is None or agent.project_id != project_id or agent.revoked:
        raise errors.ResourceNotFound(f"No agent with id {agent_id!r}.", agent_id=agent_id)
    return _view(agent, _counts(session, [agent.id]).get(agent.id, 0), now, offline_after,
                 live(agent.id) if live is not None else None)


def list_agents(
    session: Session,
    project_id: str,
    *,
    now: dt.datetime,
    offline_after: float,
    live: Callable[[str], LiveState | None] | None = None,
    online: bool | None = None,
    role: str = "",
    page_size: int = 0,
    page_token: str = "",
) -> tuple[list[AgentView], str, int]:
    """A page of the project's agents not deleted, oldest first, the next
    page's token and the total.

    The status filter needs the live state of every agent, so the project's
    agents are read and filtered here (a project has hundreds of agents, not
    millions), and paged with the tokens of every other List call.
    """
    lookup = live or (lambda _id: None)
    stmt = select(Agent).where(Agent.project_id == project_id, Agent.revoked.is_(False))
    if role:
        stmt = stmt.where(Agent.role == role)
    agents = list(session.scalars(stmt.order_by(Agent.enrolled_at, Agent.id)))
    if online is not None:
        agents = [a for a in agents
                  if _view(a, 0, now, offline_after, lookup(a.id)).online == online]
    page, next_token, total = paging.page_of(agents, page_size, page_token,
                                             lambda a: (a.enrolled_at, a.id))
    counts = _counts(session, [a.id for a in page])
    return [_view(a, counts.get(a.id, 0), now, offline_after, lookup(a.id))
            for a in page], next_token, total


def delete_agent(session: Session, project_id: str, agent_id: str, now: dt.datetime) -> None:
    """Revokes the agent: its certificate no longer opens a stream, its
    protectables show as gone. The row stays, so references keep resolving."""
    agent = session.get(Agent, agent_id)
    if agent is None or agent.project_id != project_id or agent.revoked:
        raise errors.ResourceNotFound(f"No agent with id {agent_id!r}.", agent_id=agent_id)
    agent.revoked = True
    agent.connected = False
    session.execute(
        update(Protectable)
        .where(Protectable.agent_id == agent_id, Protectable.gone.is_(False))
        .values(gone=True, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    log.info("agent %s (%s) deleted; its certificate is revoked", agent_id, agent.name)


def authenticate_stream(session: Session, agent_id: str, fingerprint: str) -> Agent:
    """The agent a client certificate belongs to, or Unauthenticated."""
    agent = session.get(Agent, agent_id) if agent_id else None
    if agent is None:
        raise errors.Unauthenticated(f"Unknown agent {agent_id!r}; enroll it again.")
    if agent.revoked:
        raise errors.Unauthenticated(
            f"Agent {agent_id} was deleted and its certificate revoked; enroll it again "
            "with a new token."
        )
    if not hmac.compare_digest(agent.certificate_fingerprint, fingerprint):
        raise errors.Unauthenticated(
            f"The client certificate is not the one issued to agent {agent_id}."
        )
    return agent


def update_identity(
    session: Session, agent_id: str, *, hostname: str, version: str, endpoint: str = "",
    restore_roots: Sequence[str] = (),
) -> None:
    """Records what the agent says of itself in Hello, writing only on change."""
    agent = session.get(Agent, agent_id)
    if agent is None:
        return
    roots = [posixpath.normpath(r) for r in restore_roots[:limits.RESTORE_ROOTS_MAX]
             if r.startswith("/") and len(r) <= limits.PATH_MAX_LENGTH]
    if agent.restore_roots != roots:
        agent.restore_roots = roots
    if agent.role == AgentRole.IMPORTER and agent.endpoint != endpoint[:255]:
        agent.endpoint = endpoint[:255]
    if hostname and agent.hostname != hostname[:255]:
        agent.hostname = hostname[:255]
    if version and agent.version != version[:32]:
        agent.version = version[:32]


# -- inventory -------------------------------------------------------------------


@dataclass(frozen=True)
class ReportedProtectable:
    """One protectable as an agent reports it (the domain form of the message)."""

    local_id: str
    name: str
    object_type: str
    size_bytes: int = 0
    disks: list[dict[str, Any]] = field(default_factory=list)
    path: str = ""
    tags: list[dict[str, str]] = field(default_factory=list)
    error: str = ""


@dataclass(frozen=True)
class InventoryOutcome:
    reported: int
    created: list[str]
    updated: int
    gone: int


_FIELDS = ("name", "object_type", "size_bytes", "disks", "path", "tags", "error")


def record_inventory(
    session: Session,
    agent_id: str,
    reported: Iterable[ReportedProtectable],
    now: dt.datetime,
) -> InventoryOutcome:
    """Upserts an agent's full report into protectables keyed (agent, local id).

    Changed rows are updated, unchanged ones left alone (so ``updated_at``
    means something), rows no longer reported become ``gone`` and rows that
    come back stop being gone. New rows are offered to the vaults' auto-bind
    rules in the same transaction.
    """
    agent = session.get(Agent, agent_id)
    if agent is None or agent.revoked:
        raise errors.Unauthenticated(f"Agent {agent_id} is not enrolled.")
    items: dict[str, ReportedProtectable] = {}
    for item in reported:
        if not item.local_id or item.object_type not in _OBJECT_TYPES:
            raise errors.InvalidParameter(
                f"Reported protectable {item.local_id!r} needs a local id and a type."
            )
        items[item.local_id] = item
    existing = {
        p.local_id: p
        for p in session.scalars(select(Protectable).where(Protectable.agent_id == agent_id))
    }
    created: list[Protectable] = []
    updated = gone = 0
    for local_id, item in items.items():
        values = {
            "name": item.name[:255],
            "object_type": item.object_type,
            "size_bytes": max(0, int(item.size_bytes)),
            "disks": list(item.disks),
            "path": item.path,
            "tags": list(item.tags),
            "error": item.error,
        }
        row = existing.get(local_id)
        if row is None:
            row = Protectable(
                project_id=agent.project_id,
                agent_id=agent_id,
                local_id=local_id,
                gone=False,
                created_at=now,
                updated_at=now,
                **values,
            )
            session.add(row)
            created.append(row)
            continue
        changed = row.gone or any(getattr(row, k) != v for k, v in values.items())
        if changed:
            for k, v in values.items():
                setattr(row, k, v)
            row.gone = False
            row.updated_at = now
            updated += 1
    for local_id, row in existing.items():
        if local_id not in items and not row.gone:
            row.gone = True
            row.updated_at = now
            gone += 1
    session.flush()
    created_ids = [p.id for p in created]
    if created_ids:
        _auto_bind(session, agent.project_id, created_ids, now)
    return InventoryOutcome(len(items), created_ids, updated, gone)


def _auto_bind(session: Session, project_id: str, protectable_ids: list[str],
               now: dt.datetime) -> None:
    try:
        from controller.services import vaults
    except ImportError:
        return
    auto_bind_new = getattr(vaults, "auto_bind_new", None)
    if auto_bind_new is not None:
        auto_bind_new(session, project_id, protectable_ids, now)


def mark_all_disconnected(session: Session) -> int:
    """At start no stream is open on this controller, whatever the rows say."""
    result = session.execute(
        update(Agent).where(Agent.connected.is_(True)).values(connected=False)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)
