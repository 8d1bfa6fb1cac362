"""Console passwords of IAM users: stored as scrypt hashes, never in clear.

scrypt is memory-hard (each guess costs 32 MiB here), so a stolen database
does not give up weak passwords quickly; it is in the standard library, so
no native dependency is added for it. The stored form names its parameters
(``scrypt$n$r$p$salt$hash``, base64), so they can be raised later and old
hashes still verify.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from cbr import errors

N, R, P = 2**15, 8, 1
SALT_BYTES = 16
HASH_BYTES = 32
MIN_LENGTH = 12
MAX_LENGTH = 256
# Enough for n=2^15, r=8 (128 * n * r = 32 MiB) with room to spare.
_MAXMEM = 64 * 1024 * 1024


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def check(password: str) -> str:
    """A password the console accepts: 12 to 256 characters, not blank."""
    if not MIN_LENGTH <= len(password) <= MAX_LENGTH or not password.strip():
        raise errors.InvalidParameter(
            f"A password must be {MIN_LENGTH} to {MAX_LENGTH} characters (a passphrase of a "
            "few words is easy to remember and hard to guess).", field="password")
    return password


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(SALT_BYTES)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=N, r=R, p=P, maxmem=_MAXMEM,
                            dklen=HASH_BYTES)
    return f"scrypt${N}${R}${P}${_b64(salt)}${_b64(digest)}"


def verify(password: str, stored: str) -> bool:
    """Whether ``password`` is the one ``stored`` was made from; False for no
    password set or a malformed entry, in about the same time."""
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            raise ValueError(kind)
        expected = base64.b64decode(digest)
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n),
                             r=int(r), p=int(p), maxmem=_MAXMEM, dklen=len(expected))
    except ValueError:
        # No hash to compare with: spend the time a real one would take.
        hashlib.scrypt(password.encode(), salt=b"\0" * SALT_BYTES, n=N, r=R, p=P,
                       maxmem=_MAXMEM, dklen=HASH_BYTES)
        return False
    return hmac.compare_digest(got, expected)
