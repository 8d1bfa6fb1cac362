"""Sign-in and sign-out.

The one place the console itself decides who someone is; everything after
goes through the API with the session's token. A failed sign-in says only
that something was wrong, costs one scrypt either way, is throttled, and is
recorded in the audit trail like a refused API call.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from aiohttp import web

from cbr import errors
from console import web as cw
from controller.services import audit, console_sessions, iam

if TYPE_CHECKING:
    from console.server import Console

SIGN_IN = "/cbr.v1.Console/SignIn"
SIGN_OUT = "/cbr.v1.Console/SignOut"


def _next(target: str) -> str:
    """Only a path of this console, never another site (an open redirect)."""
    if not target.startswith("/") or target.startswith(("//", "/\\")):
        return "/"
    return target


async def sign_in_form(request: web.Request) -> web.Response:
    if cw.current(request) is not None:
        raise web.HTTPSeeOther("/")
    return cw.render(request, "sign_in.html", error="",
                     next=_next(request.query.get("next", "/")),
                     form={"account": "", "user": "", "access_key": ""},
                     method=request.query.get("method", "password"))


async def sign_in(request: web.Request) -> web.Response:
    form = await request.post()
    method = str(form.get("method", "password"))
    field = {k: str(form.get(k, ""))[:256] for k in
             ("account", "user", "password", "access_key", "secret_key", "next")}
    console = cw.console_of(request)
    source = cw.source_of(request)
    who = (f"key:{field['access_key']}" if method == "key"
           else f"user:{field['account']}/{field['user']}")
    keys = [who, f"address:{source}"]
    shown = {k: field[k] for k in ("account", "user", "access_key")}

    def refuse(message: str, status: int) -> web.Response:
        return cw.render(request, "sign_in.html", status=status, error=message,
                         next=_next(field["next"]), form=shown, method=method)

    wait = console.throttle.wait(keys)
    if wait > 0:
        return refuse(f"Too many failed sign-ins; try again in {int(wait) + 1} s.", 429)
    started = time.monotonic()
    try:
        signed = await asyncio.to_thread(_sign_in, console, method, field, source)
    except errors.Unauthenticated as exc:
        console.throttle.failed(keys)
        _record(console, source, started, error=exc)
        return refuse(exc.message, 401)
    console.throttle.succeeded([who])
    response = web.Response(status=303, headers={"Location": _next(field["next"])})
    response.set_cookie(console.cookie, signed.token, path="/", secure=True, httponly=True,
                        samesite="Strict", max_age=int(console_sessions.ABSOLUTE.total_seconds()))
    return response


def _sign_in(console: Console, method: str, field: dict[str, str],
             source: str) -> console_sessions.SignedIn:
    app = console.app
    now = app.clock.now()
    if method == "key":
        resolved = iam.access_key_cache(app).lookup(field["access_key"].strip())
        with app.db.begin() as session:
            signed = console_sessions.sign_in_with_key(session, resolved, field["secret_key"],
                                                       source, now)
            caller = resolved.caller if resolved is not None else None
    else:
        with app.db.begin() as session:
            signed = console_sessions.sign_in_with_password(
                session, field["account"].strip(), field["user"].strip(), field["password"],
                source, now)
            caller = console_sessions.caller_for(session, signed.token, now)
    if caller is not None:
        _record(console, source, time.monotonic(), caller=caller)
    return signed


def _record(console: Console, source: str, started: float, *,
            caller: object = None, error: errors.CbrError | None = None,
            method: str = SIGN_IN) -> None:
    log = console.app.audit
    if log is None:
        return
    entry = audit.Entry(method=method, source=f"console {source}".strip(),
                        created_at=console.app.clock.now())
    from controller.services.actions import Caller

    if isinstance(caller, Caller):
        entry.attribute(caller)
    if error is not None:
        entry.status_code, entry.error_code = error.status.name, error.code
        entry.error_message = error.message
    entry.duration_ms = int((time.monotonic() - started) * 1000)
    log.record(entry)


async def sign_out(request: web.Request) -> web.Response:
    console = cw.console_of(request)
    token = str(request.get("token", ""))
    who = cw.current(request)

    def end() -> None:
        with console.app.db.begin() as session:
            console_sessions.sign_out(session, token)

    await asyncio.to_thread(end)
    if who is not None:
        _record(console, cw.source_of(request), time.monotonic(), caller=who.caller,
                method=SIGN_OUT)
    response = web.Response(status=303, headers={"Location": "/sign-in"})
    cw.forget_cookie(request, response)
    return response
