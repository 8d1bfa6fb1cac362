"""Fixtures of the browser tests: a headless Chromium that trusts the
console certificates of the controllers a test started, and only those."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.support.browser import chromium, require_browser, spki_pin
from tests.support.processes import ControllerProcess

BrowserFactory = Callable[..., object]


@pytest.fixture
def open_browser() -> Iterator[BrowserFactory]:
    """``open_browser(*controllers)``: a Chromium pinning each controller's
    console certificate; closed at teardown."""
    require_browser()
    stack: list[object] = []
    contexts = []

    def make(*controllers: ControllerProcess) -> object:
        pins = [spki_pin((c.data_dir / "ca" / "server.crt").read_bytes()) for c in controllers]
        context = chromium(pins)
        browser = context.__enter__()
        contexts.append(context)
        stack.append(browser)
        return browser

    try:
        yield make
    finally:
        for context in reversed(contexts):
            context.__exit__(None, None, None)
