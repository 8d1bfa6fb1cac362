"""Secret keys a person can type into any command line."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from controller.services import iam


def test_a_secret_key_never_begins_like_an_option(monkeypatch: pytest.MonkeyPatch) -> None:
    drawn: Iterator[str] = iter(["-looks-like-a-flag", "_fine-but-odd", "plain"])
    monkeypatch.setattr(iam.secrets, "token_urlsafe", lambda n: next(drawn))
    assert iam.new_secret_key() == "_fine-but-odd"


def test_secret_keys_are_forty_url_safe_characters() -> None:
    keys = {iam.new_secret_key() for _ in range(200)}
    assert len(keys) == 200
    assert all(len(k) == 40 and not k.startswith("-") for k in keys)
