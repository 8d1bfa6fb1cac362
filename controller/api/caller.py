"""Who is calling: set by the auth interceptor, read by servicers."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass


@dataclass(frozen=True)
class Caller:
    account_id: str
    user_id: str
    access_key_id: str
    actions: frozenset[str]
    administrator: bool = False


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
