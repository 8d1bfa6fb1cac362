"""A vault's capacity: its ``threshold`` warning and ``auto_expand``.

Called wherever a vault's ``used_bytes`` changes (a backup or a replica
stored, a deletion, a prune, a verify or repair measuring the storage, an
import), in the transaction of that change.

- **Threshold.** When usage reaches ``threshold`` percent of ``size_gb``
  the vault is marked ``threshold_exceeded`` and one
  ``vault.threshold_exceeded`` event is raised; no other is raised until
  usage has fallen below the threshold again (the mark is cleared then), so
  a vault hovering at its threshold does not raise one per backup.
- **auto_expand.** A vault with ``auto_expand`` that reaches its threshold
  first grows, by ``AUTO_EXPAND_STEP_PERCENT`` of its size (at least
  ``AUTO_EXPAND_MIN_STEP_GB``) per step, as many steps as bring usage back
  under the threshold, within the account's ``vault_quota_gb`` (the total
  size of all its vaults) and the vault size limit. Only when it cannot
  grow far enough is the event raised, saying what stopped it.
"""

from __future__ import annotations

import datetime as dt
import logging

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cbr import errors, limits
from controller.persistence.models import Account, Event, Vault
from controller.persistence.vocabulary import EventType
from controller.services import events

log = logging.getLogger("cbr.controller.vaults")

GIB = 1024**3
AUTO_EXPAND_STEP_PERCENT = 10
"""One step of auto_expand: this percent of the vault's size at that step."""
AUTO_EXPAND_MIN_STEP_GB = 1


def past_threshold(used_bytes: int, size_gb: int, threshold: int) -> bool:
    return used_bytes * 100 >= threshold * size_gb * GIB


def usage_percent(used_bytes: int, size_gb: int) -> float:
    return 100.0 * used_bytes / (size_gb * GIB) if size_gb > 0 else 0.0


def usage_changed(session: Session, vault: Vault, now: dt.datetime) -> Event | None:
    """Applies the threshold and auto_expand rules after ``used_bytes``
    changed; returns the event raised, if any."""
    if not past_threshold(vault.used_bytes, vault.size_gb, vault.threshold):
        vault.threshold_exceeded = False  # re-armed for the next crossing
        return None
    blocked = ""
    if vault.auto_expand:
        blocked = _expand(session, vault, now)
        if not past_threshold(vault.used_bytes, vault.size_gb, vault.threshold):
            vault.threshold_exceeded = False
            return None
    if vault.threshold_exceeded:
        return None  # raised once for this crossing already
    vault.threshold_exceeded = True
    percent = usage_percent(vault.used_bytes, vault.size_gb)
    summary = (f"Vault {vault.name} uses {percent:.0f}% of {vault.size_gb} GB, past its "
               f"{vault.threshold}% threshold.")
    if blocked:
        summary += f" auto_expand cannot grow it: {blocked}"
    details: dict[str, object] = {"used_bytes": vault.used_bytes, "size_gb": vault.size_gb,
                                  "threshold": vault.threshold,
                                  "auto_expand": vault.auto_expand}
    if blocked:
        details["auto_expand_blocked"] = blocked
        details["error_code"] = errors.VaultQuotaReached.code
    log.warning("%s", summary)
    return events.record(session, project_id=vault.project_id,
                         event_type=EventType.VAULT_THRESHOLD_EXCEEDED, now=now,
                         summary=summary, resource_type="vault", resource_id=vault.id,
                         resource_name=vault.name, details=details)


def _expand(session: Session, vault: Vault, now: dt.datetime) -> str:
    """Grows the vault in steps until usage is under its threshold, within
    the account's quota; returns why it stopped short ("" when it did not)."""
    account = session.get(Account, vault.project_id)
    quota = account.vault_quota_gb if account is not None else 0
    others = int(session.scalar(select(func.coalesce(func.sum(Vault.size_gb), 0)).where(
        Vault.project_id == vault.project_id, Vault.id != vault.id)) or 0)
    ceiling = min(limits.VAULT_SIZE_GB_MAX, max(vault.size_gb, quota - others))
    size = vault.size_gb
    while past_threshold(vault.used_bytes, size, vault.threshold) and size < ceiling:
        step = max(AUTO_EXPAND_MIN_STEP_GB, size * AUTO_EXPAND_STEP_PERCENT // 100)
        size = min(ceiling, size + step)
    if size > vault.size_gb:
        log.info("auto_expand grew vault %s (%s) from %d to %d GB", vault.name, vault.id,
                 vault.size_gb, size)
        vault.size_gb = size
        vault.updated_at = now
    if not past_threshold(vault.used_bytes, size, vault.threshold):
        return ""
    if size >= limits.VAULT_SIZE_GB_MAX:
        return f"it is at the largest vault size ({limits.VAULT_SIZE_GB_MAX} GB)."
    return (f"{errors.VaultQuotaReached.code}: the account's vault quota of {quota} GB is "
            f"reached ({others + size} GB in all its vaults); raise the quota or expand "
            "another way (delete backups, a larger vault).")
