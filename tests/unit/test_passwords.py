"""Console passwords are kept as scrypt hashes that verify only the password."""

from __future__ import annotations

import pytest

from cbr import errors
from controller.services import passwords


def test_a_password_verifies_against_its_hash_and_nothing_else_does() -> None:
    stored = passwords.hash_password("correct horse battery")
    assert stored.startswith("scrypt$32768$8$1$")
    assert "correct horse battery" not in stored
    assert passwords.verify("correct horse battery", stored)
    assert not passwords.verify("correct horse batterY", stored)
    # Two hashes of one password differ (a salt each), and both verify.
    again = passwords.hash_password("correct horse battery")
    assert again != stored and passwords.verify("correct horse battery", again)


@pytest.mark.parametrize("stored", ["", "plain-text", "md5$x$y", "scrypt$1$2$3$!!$!!"])
def test_no_password_or_a_malformed_one_never_verifies(stored: str) -> None:
    assert not passwords.verify("anything at all", stored)


@pytest.mark.parametrize("password", ["short", " " * 20, "x" * 257])
def test_passwords_too_short_blank_or_too_long_are_refused(password: str) -> None:
    with pytest.raises(errors.InvalidParameter, match="12 to 256 characters"):
        passwords.check(password)
