"""The enrollment token format, shared by the controller that makes tokens and
the agent that spends them.

A token is ``cbr1.<id>.<secret>.<ca sha256>``: the id finds the token's row,
the secret (kept only as a hash by the controller) proves possession, and the
SHA-256 of the controller CA's DER lets the agent trust the CA it is handed
at enrollment without trusting the network it came over.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

TOKEN_PREFIX = "cbr1"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
MALFORMED = ("The enrollment token is malformed; it looks like cbr1.<id>.<secret>.<ca-sha256>. "
             "Make one with 'cbr agent enroll-token'.")


@dataclass(frozen=True)
class EnrollmentToken:
    token_id: str
    secret: str
    ca_sha256: str

    def __str__(self) -> str:
        return f"{TOKEN_PREFIX}.{self.token_id}.{self.secret}.{self.ca_sha256}"


def parse(token: str) -> EnrollmentToken:
    """Splits a token; ValueError(MALFORMED) when it is not one."""
    parts = token.strip().split(".")
    if len(parts) != 4 or parts[0] != TOKEN_PREFIX or not all(parts[1:]):
        raise ValueError(MALFORMED)
    ca = parts[3].lower()
    if not _HEX64.match(ca):
        raise ValueError(MALFORMED)
    return EnrollmentToken(parts[1], parts[2], ca)
