"""Who is calling in this request: set by the auth interceptor, read by servicers.

``Caller`` itself is IAM vocabulary and lives in ``controller.services.actions``."""

from __future__ import annotations

import contextvars

from controller.services.actions import Caller

_current: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("caller", default=None)


def set_caller(caller: Caller | None) -> contextvars.Token[Caller | None]:
    return _current.set(caller)


def reset_caller(token: contextvars.Token[Caller | None]) -> None:
    _current.reset(token)


def current_caller() -> Caller:
    caller = _current.get()
    if caller is None:
        raise RuntimeError("no authenticated caller in this context")
    return caller
