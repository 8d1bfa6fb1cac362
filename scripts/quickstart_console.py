"""The demo's console step: each cloud's web console, signed in to.

Gives the administrator user of each cloud a console password (kept in a
0600 file, never printed), signs in over HTTPS as a browser would (the
certificate checked against the controller's CA), opens the overview and
the backups page, and prints where to point a browser.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import secrets
import ssl
from pathlib import Path
from urllib.parse import urlencode, urlsplit

from quickstart_clouds import cbr, say

PAGES = ("/", "/backups", "/replication")


def _password_file(work: Path, cloud: str) -> Path:
    path = work / f"console-password-{cloud}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_urlsafe(18) + "\n")
    return path


def _request(url: str, ca: Path, method: str, path: str, cookie: str = "",
             body: dict[str, str] | None = None) -> tuple[int, str, str]:
    parts = urlsplit(url)
    context = ssl.create_default_context(cafile=str(ca))
    context.check_hostname = False  # issued for cbr-controller; the CA is what is checked
    conn = http.client.HTTPSConnection(parts.hostname or "", parts.port, context=context,
                                       timeout=30)
    headers = {"Origin": url}
    if cookie:
        headers["Cookie"] = cookie
    data = None
    if body is not None:
        headers["Content-Type"] = "application/x-www-form-urlencoded"
        data = urlencode(body).encode()
    try:
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        text = response.read().decode()
        return response.status, text, response.getheader("Set-Cookie") or ""
    finally:
        conn.close()


def console(work: Path) -> None:
    say("the web console of each cloud, signed in to over HTTPS")
    for cloud in ("source", "target"):
        endpoints = json.loads((work / cloud / "endpoints.json").read_text())
        admin = json.loads((work / cloud / "admin-credentials.json").read_text())
        url, ca = str(endpoints["console"]), work / cloud / "ca" / "ca.crt"
        password = _password_file(work, cloud)
        cbr(cloud, "iam", "user", "set-password", str(admin["user_id"]),
            "--password-file", str(password))
        status, _, set_cookie = _request(url, ca, "POST", "/sign-in", body={
            "method": "password", "account": "admin", "user": "admin",
            "password": password.read_text().strip()})
        if status != 303 or not set_cookie.startswith("__Host-cbr_session-"):
            raise SystemExit(f"quickstart: signing in to {url} failed (HTTP {status})")
        cookie = set_cookie.split(";", 1)[0]
        shown = []
        for page in PAGES:
            status, text, _ = _request(url, ca, "GET", page, cookie)
            title = re.search(r"<h1>([^<]*)</h1>", text)
            if status != 200 or title is None:
                raise SystemExit(f"quickstart: the console's {page} answered HTTP {status}")
            rows = text.count("<tr>") - text.count("<thead><tr>")
            shown.append(f"{page} ({title.group(1)}, {rows} rows)")
        print(f"{cloud} console {url}: signed in as admin/admin, opened " + ", ".join(shown),
              flush=True)
        print(f"  sign in: account admin, user admin, password in {password} "
              f"(certificate from {ca})", flush=True)
