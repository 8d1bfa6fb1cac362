"""Who is calling in this request: set by the auth interceptor, read by servicers.

``Caller`` itself is IAM vocabulary and lives in ``controller.services.actions``,
with the context variable, so a task can record who started it. The audit
entry of the call lives here too: authentication names the caller on it as
soon as it knows the key, so a refused call is recorded with whose key it
claimed."""

from __future__ import annotations

import contextvars

from controller.services.actions import Caller, caller_or_none, reset_caller, set_caller
from controller.services.audit import Entry

__all__ = ["Caller", "attribute", "current_caller", "reset_caller", "set_caller"]

audit_entry: contextvars.ContextVar[Entry | None] = contextvars.ContextVar(
    "audit_entry", default=None)


def current_caller() -> Caller:
    caller = caller_or_none()
    if caller is None:
        raise RuntimeError("no authenticated caller in this context")
    return caller


def attribute(caller: Caller, source: str = "") -> None:
    """Names the caller (or the owner of the key a refused call claimed) on
    this call's audit entry, if it has one; ``source`` replaces the peer
    address when the call was made for someone else (the console's browser)."""
    entry = audit_entry.get()
    if entry is not None:
        entry.attribute(caller)
        if source:
            entry.source = source[:128]
