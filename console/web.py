"""What every console request goes through: security headers, the session,
CSRF, errors as pages, and rendering.

A request carries its signed-in user (``request["current"]``) and its API
(``request["api"]``, console.api) once the session middleware has run. Each
change is a POST with the session's CSRF token and the console's own
``Origin``; anything else is refused before a view runs. See docs/console.md.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import jinja2
from aiohttp import web

from console.api import Api, ApiError
from controller.services import actions, console_sessions

if TYPE_CHECKING:
    from console.server import Console

log = logging.getLogger("cbr.console")

COOKIE_PREFIX = "__Host-cbr_session"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
# Reached without a session: the sign-in form and the files the page loads.
STATIC_PREFIX = "/static/"
PUBLIC_PREFIXES = ("/sign-in", STATIC_PREFIX)

CONSOLE: web.AppKey[Console] = web.AppKey("console")

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; connect-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'; object-src 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # Not no-referrer: with it a browser sends "Origin: null" on a form post,
    # and the CSRF check needs the real origin. No URL here holds a secret.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
    "Strict-Transport-Security": "max-age=31536000",
}

# A refused call's page status, by its gRPC status.
HTTP_STATUS = {"INVALID_ARGUMENT": 400, "FAILED_PRECONDITION": 409, "OUT_OF_RANGE": 400,
               "NOT_FOUND": 404, "ALREADY_EXISTS": 409, "PERMISSION_DENIED": 403,
               "UNAUTHENTICATED": 401, "RESOURCE_EXHAUSTED": 429, "UNAVAILABLE": 503,
               "DEADLINE_EXCEEDED": 504}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def console_of(request: web.Request) -> Console:
    return request.app[CONSOLE]


def api(request: web.Request) -> Api:
    value = request.get("api")
    if not isinstance(value, Api):
        raise web.HTTPSeeOther("/sign-in")
    return value


def current(request: web.Request) -> console_sessions.Current | None:
    value = request.get("current")
    return value if isinstance(value, console_sessions.Current) else None


def missing(request: web.Request, method: str) -> str:
    """The IAM action the signed-in user lacks for ``method``
    ("VaultService/CreateVault"), or "" when the user may call it: the API's
    own check (controller.services.actions), so the page agrees with it."""
    who = current(request)
    if who is None:
        return "sign-in"
    return actions.missing_action(f"/cbr.v1.{method}", who.caller) or ""


INT32 = (-(2**31), 2**31 - 1)


def form_number(form: Any, key: str, default: int = 0) -> int:
    """A whole-number form field for a request message: empty is ``default``;
    one that is not a whole number becomes -1, and one past what the
    message's field holds is clamped, so either way the API refuses it
    naming the field and its range (a protobuf field would raise instead)."""
    text = str(form.get(key, "")).strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        return -1
    return max(INT32[0], min(value, INT32[1]))


def source_of(request: web.Request) -> str:
    return request.remote or ""


def is_htmx(request: web.Request) -> bool:
    return request.headers.get("HX-Request") == "true"


def redirect(request: web.Request, location: str) -> web.Response:
    """After a change: a 303 for a plain form, HX-Redirect for htmx."""
    if is_htmx(request):
        return web.Response(status=204, headers={"HX-Redirect": location})
    raise web.HTTPSeeOther(location)


def render(request: web.Request, template: str, status: int = 200,
           **context: Any) -> web.Response:
    env = console_of(request).templates
    who = current(request)
    body = env.get_template(template).render(
        request=request, current=who, csrf_token=who.csrf_token if who else "",
        needs=lambda method: missing(request, method), cloud=console_of(request).cloud,
        htmx_integrity=console_of(request).htmx_integrity, path=request.path, **context)
    return web.Response(text=body, status=status, content_type="text/html", charset="utf-8")


def error_page(request: web.Request, err: ApiError) -> web.Response:
    status = HTTP_STATUS.get(err.status, 500)
    if err.status == "UNAUTHENTICATED":
        return _to_sign_in(request)
    if is_htmx(request):  # shown in the form's message area
        return render(request, "_error.html", status=200, error=err)
    return render(request, "error.html", status=status, error=err)


def _to_sign_in(request: web.Request) -> web.Response:
    target = "/sign-in"
    if request.method == "GET" and request.path != "/":
        target += "?next=" + quote(request.path_qs, safe="")
    response = web.Response(status=303, headers={"Location": target})
    if is_htmx(request):
        response = web.Response(status=204, headers={"HX-Redirect": target})
    forget_cookie(request, response)
    return response


def cookie_name(cloud_name: str) -> str:
    """The session cookie of one cloud's console. Cookies ignore ports, so
    two clouds' consoles on one host (the quickstart's) would overwrite each
    other's under one name; a cloud's own controllers share theirs."""
    return f"{COOKIE_PREFIX}-{re.sub(r'[^A-Za-z0-9_-]', '_', cloud_name)[:64]}"


def forget_cookie(request: web.Request, response: web.StreamResponse) -> None:
    """Clears the session cookie. A ``__Host-`` cookie is only replaced by
    one that is Secure too, so the clearing one carries the same flags."""
    response.del_cookie(console_of(request).cookie, path="/", secure=True, httponly=True,
                        samesite="Strict")


@web.middleware
async def security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        exc.headers.update(SECURITY_HEADERS)
        raise
    response.headers.update(SECURITY_HEADERS)
    return response


def _same_origin(request: web.Request) -> bool:
    origin = request.headers.get("Origin", "")
    return bool(origin) and origin == f"{request.scheme}://{request.host}"


@web.middleware
async def sessions(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Who is signed in, and that a change really comes from this console."""
    console = console_of(request)
    if request.path.startswith(STATIC_PREFIX) and request.method in ("GET", "HEAD"):
        return await handler(request)  # the same for everyone: no session read, no write
    public = request.path.startswith(PUBLIC_PREFIXES)
    if request.method not in ("GET", "HEAD") and not _same_origin(request):
        raise web.HTTPForbidden(text="Refused: the request did not come from this console "
                                     "(its Origin header is missing or another site's).")
    token = request.cookies.get(console.cookie, "")
    who = await asyncio.to_thread(console.resolve, token) if token else None
    if who is not None:
        request["current"] = who
        request["token"] = token
        request["api"] = Api(console.stubs, token, source_of(request))
    elif not public:
        return _to_sign_in(request)
    if request.method not in ("GET", "HEAD") and who is not None:
        sent = request.headers.get(CSRF_HEADER, "")
        if not sent and request.content_type in ("application/x-www-form-urlencoded",
                                                 "multipart/form-data"):
            sent = str((await request.post()).get(CSRF_FIELD, ""))
        if not hmac.compare_digest(sent.encode(), who.csrf_token.encode()):
            raise web.HTTPForbidden(text="Refused: the form's CSRF token is missing or stale; "
                                         "reload the page and try again.")
    try:
        return await handler(request)
    except ApiError as err:
        return error_page(request, err)


def templates() -> jinja2.Environment:
    """Autoescaping on for every template: a name holding ``<script>`` or
    quotes shows as text, never as markup."""
    env = jinja2.Environment(loader=jinja2.PackageLoader("console", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    from console import formats

    env.filters.update(formats.FILTERS)
    return env
