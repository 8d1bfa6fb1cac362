"""Key material of the key service: the root key, and customer master keys as wrappers.

The root key (32 bytes) seals every customer master key's material in the
database, bound to the key's id, so a database dump alone reveals no key. It
comes from ``CBR_ROOT_KEY`` (base64) when set, else from ``root.key`` in the
data dir (made on first start with mode 0600; a file other users could read
is refused). A customer master key wraps and unwraps a vault's keys
(``cbr.repo.content.crypto.KeyWrapper``) with AES-256-GCM; the vault, key id and
purpose are bound as associated data by the format layer.

This module holds material only in memory and only as long as a call needs
it; it must not log or return material, and it knows nothing of key states
(``controller.services.keys`` decides whether a key may be used).
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cbr.repo.content.crypto import DataKey

ROOT_KEY_FILE = "root.key"
KEY_SIZE = 32
_VERSION = b"\x01"


class RootKeyError(Exception):
    """The root key is missing, malformed or too widely readable."""


class RootKey:
    """Seals customer master key material; see the module docstring."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_SIZE:
            raise RootKeyError(f"the root key must be {KEY_SIZE} bytes, not {len(key)}")
        self._aead = AESGCM(key)

    @classmethod
    def from_text(cls, text: str) -> RootKey:
        """A root key given as base64 (the environment variable's form)."""
        try:
            return cls(base64.b64decode(text.strip(), validate=True))
        except (binascii.Error, ValueError) as exc:
            raise RootKeyError(f"CBR_ROOT_KEY is not base64 of {KEY_SIZE} bytes: {exc}") from None

    @classmethod
    def load_or_create(cls, path: Path) -> RootKey:
        """Reads ``path``, making it (mode 0600) on first use. A file that group
        or others may read is refused: the root key guards every vault."""
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(AESGCM.generate_key(bit_length=256))
                fh.flush()
                os.fsync(fh.fileno())
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise RootKeyError(f"root key file {path} has mode {mode:o}; it must be 0600 "
                               f"(chmod 600 {path})")
        return cls(path.read_bytes())

    @staticmethod
    def _context(key_id: str, project_id: str) -> bytes:
        return f"cbr/cmk/v1|{project_id}|{key_id}".encode()

    def seal(self, material: bytes, *, key_id: str, project_id: str) -> bytes:
        nonce = os.urandom(12)
        return _VERSION + nonce + self._aead.encrypt(nonce, material,
                                                     self._context(key_id, project_id))

    def unseal(self, sealed: bytes, *, key_id: str, project_id: str) -> bytes:
        if sealed[:1] != _VERSION:
            raise RootKeyError(f"key {key_id}: unknown sealed-material version")
        try:
            return self._aead.decrypt(sealed[1:13], sealed[13:],
                                      self._context(key_id, project_id))
        except InvalidTag:
            raise RootKeyError(f"key {key_id}: its material does not unseal with this root "
                               "key (another controller's root key?)") from None


def new_material() -> bytes:
    return AESGCM.generate_key(bit_length=256)


class CustomerKey:
    """A customer master key as the format layer's ``KeyWrapper``.

    ``wrap`` names the key id as the ``kek_id``. ``unwrap`` ignores the
    stored ``kek_id``: the vault's catalog row says which key protects it,
    so a vault imported on a controller whose key holds the same (imported)
    material under another id still opens. Authentication of the wrapped
    key with its context is what proves the material right.
    """

    def __init__(self, key_id: str, material: bytes) -> None:
        self.key_id = key_id
        self._aead = DataKey(b"", material)

    def wrap(self, key: bytes, context: bytes) -> tuple[str, bytes]:
        return self.key_id, self._aead.seal(key, context)

    def unwrap(self, kek_id: str, wrapped: bytes, context: bytes) -> bytes:
        return self._aead.open(wrapped, context)

    def __repr__(self) -> str:
        return f"CustomerKey({self.key_id})"
