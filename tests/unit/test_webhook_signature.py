"""The receiver's check the README shows verifies what the notifier signs."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cbr.clock import wall_time
from controller.jobs.notifier import signature

README = Path(__file__).resolve().parents[2] / "README.md"


def _readme_verify() -> Callable[..., bool]:
    section = README.read_text().split("## Notifications", 1)[1].split("\n## ", 1)[0]
    [code] = re.findall(r"```python\n(.*?)```", section, re.S)
    scope: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), scope)
    return scope["verify"]  # type: ignore[no-any-return]


def test_the_readme_check_accepts_a_fresh_signature_and_refuses_others() -> None:
    verify = _readme_verify()
    body = b'{"id":"e-1","type":"backup.failed"}'
    now = int(wall_time())
    header = signature("whsec_abc", now, body)
    assert re.fullmatch(r"t=\d+,v1=[0-9a-f]{64}", header)
    assert verify("whsec_abc", header, body)
    assert not verify("whsec_other", header, body)
    assert not verify("whsec_abc", header, body + b" ")
    assert not verify("whsec_abc", signature("whsec_abc", now - 3600, body), body)
