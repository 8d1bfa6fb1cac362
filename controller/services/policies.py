"""Backup and replication policies: stored after their rules
(controller.services.policy_rules, the reference's limits) accept them."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from cbr import errors
from controller.persistence.models import Policy, VaultPolicy
from controller.services import paging, validation
from controller.services.policy_rules import (
    validate_definition,
    validate_trigger,
    validate_windows,
)


def get_policy(session: Session, project_id: str, policy_id: str) -> Policy:
    policy = session.get(Policy, policy_id) if policy_id else None
    if policy is None or policy.project_id != project_id:
        raise errors.ResourceNotFound(f"No policy with id {policy_id!r}.", policy_id=policy_id)
    return policy


def vault_ids(session: Session, policy_id: str) -> list[str]:
    return list(session.scalars(select(VaultPolicy.vault_id).where(
        VaultPolicy.policy_id == policy_id).order_by(VaultPolicy.created_at)))


def list_policies(session: Session, project_id: str, operation_type: str, vault_id: str,
                  page_size: int, page_token: str) -> tuple[Sequence[Policy], str, int]:
    """A page of the account's policies, of one operation type or bound to one
    vault when given."""
    stmt = select(Policy).where(Policy.project_id == project_id)
    if operation_type:
        stmt = stmt.where(Policy.operation_type == operation_type)
    if vault_id:
        stmt = stmt.where(Policy.id.in_(select(VaultPolicy.policy_id).where(
            VaultPolicy.vault_id == vault_id)))
    return paging.paginate(session, stmt, Policy, page_size, page_token)


def runnable(session: Session, project_id: str, policy_id: str) -> Policy:
    """A policy that can run now: one with vaults to run on."""
    p = get_policy(session, project_id, policy_id)
    if not vault_ids(session, p.id):
        raise errors.InvalidParameter(
            f"Policy {p.name!r} has no vaults; associate it with a vault first.",
            field="policy_id")
    return p


def create_policy(session: Session, project_id: str, name: str, operation_type: str,
                  enabled: bool, definition: dict[str, Any], patterns: list[str],
                  now: dt.datetime, *, start_window_minutes: int = 0,
                  completion_window_minutes: int = 0) -> Policy:
    validation.name(name)
    validate_definition(operation_type, definition)
    validate_trigger(patterns, required=True)
    start, completion = validate_windows(start_window_minutes, completion_window_minutes,
                                         patterns)
    taken = select(Policy.id).where(Policy.project_id == project_id, Policy.name == name)
    if session.scalar(taken) is not None:
        raise errors.AlreadyExists(f"A policy named {name!r} exists.", name=name)
    policy = Policy(project_id=project_id, name=name, operation_type=operation_type,
                    enabled=enabled, operation_definition=definition, trigger_patterns=patterns,
                    start_window_minutes=start, completion_window_minutes=completion,
                    created_at=now, updated_at=now)
    session.add(policy)
    session.flush()
    return policy


def update_policy(session: Session, project_id: str, policy_id: str, changes: dict[str, Any],
                  now: dt.datetime) -> Policy:
    allowed = {"name", "enabled", "operation_definition", "trigger", "start_window_minutes",
               "completion_window_minutes"}
    unknown = set(changes) - allowed
    if unknown or not changes:
        raise errors.InvalidParameter(
            f"update_mask must name some of {', '.join(sorted(allowed))}.", field="update_mask")
    policy = get_policy(session, project_id, policy_id)
    if "name" in changes and changes["name"] != policy.name:
        validation.name(changes["name"])
        taken = select(Policy.id).where(Policy.project_id == project_id,
                                        Policy.name == changes["name"])
        if session.scalar(taken) is not None:
            raise errors.AlreadyExists(f"A policy named {changes['name']!r} exists.")
        policy.name = changes["name"]
    if "enabled" in changes:
        policy.enabled = bool(changes["enabled"])
    if "operation_definition" in changes:
        policy.operation_definition = validate_definition(policy.operation_type,
                                                          changes["operation_definition"])
    if "trigger" in changes:
        policy.trigger_patterns = validate_trigger(changes["trigger"], required=True)
    policy.start_window_minutes, policy.completion_window_minutes = validate_windows(
        int(changes.get("start_window_minutes", policy.start_window_minutes)),
        int(changes.get("completion_window_minutes", policy.completion_window_minutes)),
        list(policy.trigger_patterns or []))
    policy.updated_at = now
    session.flush()
    return policy


def delete_policy(session: Session, project_id: str, policy_id: str) -> None:
    policy = get_policy(session, project_id, policy_id)
    bound = vault_ids(session, policy.id)
    if bound:
        raise errors.Conflict(
            f"Policy {policy.name!r} is associated with {len(bound)} vault(s) "
            f"({', '.join(bound[:3])}); dissociate them first.", policy_id=policy_id)
    session.delete(policy)
