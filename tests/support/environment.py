"""What a test needs from the machine, said once.

Locally a missing piece (root, a loop device, a tmpfs mount, XFS tools,
PostgreSQL, SeaweedFS, buf) skips the test with the reason. In CI
(``CI=true``) the machine is known to have all of them, so a missing piece
fails the run instead: CI never passes while quietly proving less.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def required() -> bool:
    """Whether every piece a test needs must be there (CI)."""
    return os.environ.get("CI") == "true"


def unavailable(reason: str, *, must: bool | None = None) -> NoReturn:
    """Ends the test: a failure in CI (or where ``must`` says so), a skip
    saying why elsewhere."""
    if required() if must is None else must:
        pytest.fail(f"CI needs this and the machine lacks it: {reason}")
    pytest.skip(reason)
