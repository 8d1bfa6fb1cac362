"""Signing of API calls with an access key (AK) and secret key (SK).

Every public call carries four metadata entries: the access key id, a Unix
timestamp, a random nonce and an HMAC-SHA256 signature, keyed by the secret
key, over::

    CBR1-HMAC-SHA256 \\n <full method> \\n <timestamp> \\n <nonce> \\n <hex sha256 of request bytes>

The body digest binds the signature to the exact serialized request, the
timestamp bounds a stolen signature to the validity window, and the nonce lets
the controller refuse a replay inside that window. Any client that can
compute an HMAC can sign: no project code is needed (see README).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

ALGORITHM = "CBR1-HMAC-SHA256"
HEADER_ACCESS_KEY = "x-cbr-access-key"
HEADER_TIMESTAMP = "x-cbr-timestamp"
HEADER_NONCE = "x-cbr-nonce"
HEADER_SIGNATURE = "x-cbr-signature"

# A signature is valid this long either side of the controller's clock.
SIGNATURE_WINDOW_SECONDS = 15 * 60
NONCE_MAX_LENGTH = 64


def body_digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def string_to_sign(method: str, timestamp: str, nonce: str, digest: str) -> bytes:
    return "\n".join((ALGORITHM, method, timestamp, nonce, digest)).encode()


def signature(secret_key: str, method: str, timestamp: str, nonce: str, digest: str) -> str:
    return hmac.new(
        secret_key.encode(), string_to_sign(method, timestamp, nonce, digest), hashlib.sha256
    ).hexdigest()


@dataclass(frozen=True)
class SignedHeaders:
    access_key: str
    timestamp: str
    nonce: str
    signature: str

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (
            (HEADER_ACCESS_KEY, self.access_key),
            (HEADER_TIMESTAMP, self.timestamp),
            (HEADER_NONCE, self.nonce),
            (HEADER_SIGNATURE, self.signature),
        )


def sign(access_key: str, secret_key: str, method: str, body: bytes, now: float) -> SignedHeaders:
    timestamp = str(int(now))
    nonce = secrets.token_hex(16)
    sig = signature(secret_key, method, timestamp, nonce, body_digest(body))
    return SignedHeaders(access_key, timestamp, nonce, sig)


def verify(secret_key: str, method: str, headers: SignedHeaders, digest: str) -> bool:
    expected = signature(secret_key, method, headers.timestamp, headers.nonce, digest)
    return hmac.compare_digest(expected, headers.signature)
