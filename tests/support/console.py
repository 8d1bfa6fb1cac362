"""A plain HTTPS client of the web console for tests below the browser: it
keeps the session cookie, reads the CSRF token from pages and sends the
console's own Origin, as a browser would (each can be left out to test the
refusals)."""

from __future__ import annotations

import http.client
import re
import ssl
from dataclasses import dataclass, field
from email.message import Message
from urllib.parse import urlencode, urlsplit

CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]+)"')


@dataclass
class Page:
    status: int
    headers: Message
    text: str
    set_cookies: list[str] = field(default_factory=list)

    @property
    def location(self) -> str:
        return str(self.headers.get("Location", "") or self.headers.get("HX-Redirect", ""))


class ConsoleClient:
    def __init__(self, url: str, ca_pem: bytes) -> None:
        parts = urlsplit(url)
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 443
        self.tls = parts.scheme == "https"
        self.context = ssl.create_default_context(cadata=ca_pem.decode())
        self.context.check_hostname = False  # issued for cbr-controller; the CA is checked
        self.cookies: dict[str, str] = {}
        self.csrf = ""

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> Page:
        conn: http.client.HTTPConnection = (
            http.client.HTTPSConnection(self.host, self.port, context=self.context, timeout=30)
            if self.tls else http.client.HTTPConnection(self.host, self.port, timeout=30))
        sent = dict(headers or {})
        if self.cookies:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        try:
            conn.request(method, path, body=body, headers=sent)
            response = conn.getresponse()
            text = response.read().decode("utf-8", "replace")
            cookies = response.headers.get_all("Set-Cookie") or []
        finally:
            conn.close()
        for cookie in cookies:
            name, _, rest = cookie.partition("=")
            value = rest.split(";", 1)[0]
            if value and "Max-Age=0" not in cookie and "expires=Thu, 01 Jan 1970" not in cookie:
                self.cookies[name] = value
            else:
                self.cookies.pop(name, None)
        if (match := CSRF_INPUT.search(text)) is not None:
            self.csrf = match.group(1)
        return Page(response.status, response.headers, text, list(cookies))

    def get(self, path: str) -> Page:
        return self.request("GET", path)

    def post(self, path: str, fields: dict[str, str], *, csrf: bool = True,
             origin: str | None = None, htmx: bool = False) -> Page:
        data = dict(fields)
        if csrf and self.csrf:
            data.setdefault("csrf_token", self.csrf)
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        if origin is None:
            origin = self.origin
        if origin:
            headers["Origin"] = origin
        if htmx:
            headers["HX-Request"] = "true"
        return self.request("POST", path, urlencode(data).encode(), headers)

    def sign_in(self, account: str, user: str, password: str) -> Page:
        self.get("/sign-in")
        return self.post("/sign-in", {"method": "password", "account": account, "user": user,
                                      "password": password})

    def sign_in_with_key(self, access_key: str, secret_key: str) -> Page:
        self.get("/sign-in")
        return self.post("/sign-in", {"method": "key", "access_key": access_key,
                                      "secret_key": secret_key})
