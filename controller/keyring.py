"""The controller's master key, which seals secrets kept in the database.

Secret access keys must be recoverable (HMAC verification needs them) but may
never sit in the database in clear; they are sealed with AES-256-GCM under a
key kept in a 0600 file beside, not inside, the database. A stolen database
alone reveals no secret.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_VERSION = b"\x01"


class Keyring:
    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("the master key must be 32 bytes")
        self._aead = AESGCM(key)

    @classmethod
    def load_or_create(cls, path: Path) -> Keyring:
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(os.urandom(32))
                fh.flush()
                os.fsync(fh.fileno())
        return cls(path.read_bytes())

    def seal(self, plaintext: bytes, context: bytes) -> bytes:
        """Encrypts; context (e.g. the key id) is bound so a sealed value cannot be moved."""
        nonce = os.urandom(12)
        return _VERSION + nonce + self._aead.encrypt(nonce, plaintext, context)

    def unseal(self, sealed: bytes, context: bytes) -> bytes:
        if sealed[:1] != _VERSION:
            raise ValueError("unknown sealed-value version")
        return self._aead.decrypt(sealed[1:13], sealed[13:], context)
