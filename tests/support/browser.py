"""Headless Chromium driven by Selenium, for the web console's browser tests.

Debian's ``chromium`` and ``chromium-driver`` (scripts/test installs them).
The console's certificate comes from the controller's own CA, which the
browser does not know: it is trusted by pinning the certificate's public
key (``--ignore-certificate-errors-spki-list``), so any other certificate
would still be refused. Screenshots go to ``$CBR_SCREENSHOTS`` when set
(the README's are taken that way)."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

CHROMIUM = ("chromium", "chromium-browser", "google-chrome")
SCREENSHOTS_ENV = "CBR_SCREENSHOTS"


def spki_pin(certificate_pem: bytes) -> str:
    """base64(sha256(SubjectPublicKeyInfo)) of a certificate, as Chromium pins it."""
    cert = x509.load_pem_x509_certificate(certificate_pem)
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def find_browser() -> tuple[str, str] | None:
    driver = shutil.which("chromedriver")
    binary = next((b for name in CHROMIUM if (b := shutil.which(name))), None)
    return (binary, driver) if binary and driver else None


def require_browser() -> tuple[str, str]:
    found = find_browser()
    if found is None:
        message = ("headless Chromium with chromedriver is not installed (scripts/test installs "
                   "Debian's chromium and chromium-driver as root)")
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


@contextmanager
def chromium(pins: list[str], downloads: Path | None = None) -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver = require_browser()
    # Chromium honours the SPKI pins only with a profile directory of its own.
    profile = tempfile.mkdtemp(prefix="cbr-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1400,1000", "--lang=en-US", "--no-first-run",
                 "--disable-extensions", "--disable-background-networking",
                 f"--user-data-dir={profile}",
                 f"--ignore-certificate-errors-spki-list={','.join(pins)}"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(executable_path=driver), options=options)
    browser.set_page_load_timeout(60)
    try:
        yield browser
    finally:
        browser.quit()
        shutil.rmtree(profile, ignore_errors=True)


def screenshot(browser: object, name: str) -> None:
    """Saves the page as ``$CBR_SCREENSHOTS/<name>.png`` when that is set."""
    target = os.environ.get(SCREENSHOTS_ENV)
    if not target:
        return
    Path(target).mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(Path(target) / f"{name}.png"))  # type: ignore[attr-defined]
