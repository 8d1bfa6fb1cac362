"""The console's HTTPS listener: aiohttp on an event loop of its own thread.

``ConsoleServer(app)`` binds ``console_listen`` with the API's certificate
and serves until ``stop()``. Pages reach the controller only through the
API (console.api) over ``App.console_socket``; the one thing read here
directly is the session a cookie names.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ipaddress
import logging
import ssl
import threading
from pathlib import Path
from typing import Any

import grpc
import jinja2
from aiohttp import web

from cbr import metrics as cbr_metrics
from console import web as console_web
from console.api import Stubs
from controller.app import App
from controller.services import console_sessions

log = logging.getLogger("cbr.console")

STATIC = Path(__file__).parent / "static"
HTMX = STATIC / "htmx.min.js"


class Console:
    """What every request shares: the controller, the API stubs, templates."""

    def __init__(self, app: App, stubs: Stubs, templates: jinja2.Environment) -> None:
        self.app, self.stubs, self.templates = app, stubs, templates
        self.cloud = {"name": app.config.cloud_name, "region": app.config.region}
        self.cookie = console_web.cookie_name(app.config.cloud_name)
        digest = hashlib.sha384(HTMX.read_bytes()).digest()
        self.htmx_integrity = "sha384-" + base64.b64encode(digest).decode()
        from console.throttle import Throttle

        self.throttle = Throttle()

    def resolve(self, token: str) -> console_sessions.Current | None:
        """The signed-in user of a cookie's token (blocking: run off the loop)."""
        with self.app.db.begin() as session:
            return console_sessions.current(session, token, self.app.clock.now())


def tls_context(app: App, workdir: Path) -> ssl.SSLContext | None:
    """The API's certificate (the operator's, or the controller CA's for
    cbr-controller), or None when the API itself is plaintext."""
    cfg = app.config
    if cfg.insecure_listen:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cfg.tls_cert or cfg.tls_key:
        context.load_cert_chain(cfg.tls_cert, cfg.tls_key)
        return context
    from controller.pki import certificate_authority

    ca = certificate_authority(app)
    identity = ca.server_identity()
    chain, key = workdir / "console.crt", workdir / "console.key"
    chain.write_bytes(identity.certificate_pem + ca.certificate_pem)
    key.write_bytes(identity.key_pem)
    try:
        context.load_cert_chain(chain, key)
    finally:
        key.unlink()
    return context


def build(console: Console) -> web.Application:
    from console import views

    application = web.Application(middlewares=[console_web.security_headers,
                                               console_web.sessions],
                                  client_max_size=1024 * 1024)
    application[console_web.CONSOLE] = console
    views.add_routes(application)
    application.router.add_static("/static/", STATIC, show_index=False)
    return application


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ConsoleServer:
    """Started and stopped from plain code (controller.main, tests)."""

    def __init__(self, app: App, workdir: Path) -> None:
        self.app = app
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="console-loop",
                                        daemon=True)
        self._runner: web.AppRunner | None = None
        self._channel: grpc.aio.Channel | None = None
        self._workdir = workdir

    def start(self) -> str:
        """Binds and serves; returns the console's URL ("" when it is off)."""
        listen = cbr_metrics.parse_listen(self.app.config.console_listen)
        if listen is None:
            return ""
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._start(*listen), self._loop)
        try:
            self.url = future.result()
        except BaseException:
            self.stop()
            raise
        return self.url

    async def _start(self, host: str, port: int) -> str:
        self._channel = grpc.aio.insecure_channel(f"unix:{self.app.console_socket}")
        console = Console(self.app, Stubs(self._channel), console_web.templates())
        context = tls_context(self.app, self._workdir)
        if context is None and not _loopback(host):
            raise OSError(f"the console serves plain HTTP (insecure_listen) only on a loopback "
                          f"address, not {host}; drop insecure_listen to serve HTTPS")
        self._runner = web.AppRunner(build(console), access_log=None,
                                     handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=context,
                           reuse_port=False, backlog=128)
        try:
            await site.start()
        except OSError as exc:
            raise OSError(f"cannot listen on {host}:{port} for the web console "
                          f"(console_listen): {exc.strerror or exc}") from None
        bound: Any = self._runner.addresses[0]
        scheme = "https" if context is not None else "http"
        shown = f"[{host}]" if ":" in host else host
        return f"{scheme}://{shown}:{bound[1]}"

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._channel is not None:
            await self._channel.close(None)

    def stop(self) -> None:
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()
