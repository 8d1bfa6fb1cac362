"""Authenticated encryption of blobs and objects, and key wrapping
(``docs/storage-format.md`` sections 4.3 and 5).

This module owns AES-256-GCM sealing (``nonce(12) || ciphertext || tag(16)``)
and the envelope-encryption seam: the :class:`KeyWrapper` protocol the
controller's key service implements, the associated-data context that binds a
wrapped key to its vault, key id and purpose, and a reference wrapper under a
local key-encryption key. All cryptography runs in ``cryptography``; this
module must not invent primitives, and must never write a data key anywhere.
"""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, cast

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cbr.repo.errors import IntegrityError, KeyUnavailable

NONCE_SIZE = 12
TAG_SIZE = 16
SEAL_OVERHEAD = NONCE_SIZE + TAG_SIZE
DATA_KEY_SIZE = 32

_ENCRYPT_INTO = hasattr(AESGCM, "encrypt_into")

PURPOSE_CHUNK_ID = "chunk-id"
PURPOSE_DATA = "data"


class _Nonces:
    """Random nonces drawn from the OS's CSPRNG a thousand at a time.

    One ``getrandom`` per blob released the GIL once per blob, and on a
    tree of small files every release is a hand-off between threads (a
    futex wake and a context switch). Drawn in bulk they are the same
    random bytes; each is handed out once (under a lock), and a forked
    child drops the parent's unused ones, so no nonce is ever used twice.
    """

    BATCH = 1024
    _lock: threading.Lock
    _pool: bytes
    _pos: int

    def __init__(self) -> None:
        self.forget()

    def take(self) -> bytes:
        with self._lock:
            if self._pos >= len(self._pool):
                self._pool = secrets.token_bytes(NONCE_SIZE * self.BATCH)
                self._pos = 0
            start = self._pos
            self._pos += NONCE_SIZE
            return self._pool[start:self._pos]

    def forget(self) -> None:
        """Starts empty (and, in a forked child, with a lock no thread holds)."""
        self._lock = threading.Lock()
        self._pool = b""
        self._pos = 0


_NONCES = _Nonces()
os.register_at_fork(after_in_child=_NONCES.forget)


class DecryptFailed(IntegrityError):
    """AES-GCM authentication failed: wrong key, or the bytes were altered."""


class DataKey:
    """An AES-256-GCM key with its key id; seals and opens byte strings."""

    __slots__ = ("_aead", "key_id")

    def __init__(self, key_id: bytes, key: bytes) -> None:
        if len(key) != DATA_KEY_SIZE:
            raise ValueError(f"data key must be {DATA_KEY_SIZE} bytes")
        self.key_id = key_id
        self._aead = AESGCM(key)

    def seal(self, plaintext: bytes | bytearray | memoryview, aad: bytes) -> bytes:
        """``nonce || ciphertext || tag`` with a fresh random nonce."""
        nonce = _NONCES.take()
        return nonce + self._aead.encrypt(nonce, plaintext, aad)

    def seal_buffer(self, plaintext: bytes | bytearray | memoryview, aad: bytes) -> bytes:
        """Like :meth:`seal`, built in one buffer: the ciphertext is written
        after the nonce in place, so a 1 MiB blob costs one allocation and no
        copy (concatenating nonce and ciphertext copied the whole blob again,
        as much time as the encryption itself).

        The result is a ``bytearray`` typed as ``bytes``: its consumers (the
        pack writer, SHA-256, storage writes, decoding) take any bytes-like
        object, and converting it would be the very copy this avoids.
        """
        nonce = _NONCES.take()
        if not _ENCRYPT_INTO:  # cryptography before 44
            return nonce + self._aead.encrypt(nonce, plaintext, aad)
        out = bytearray(NONCE_SIZE + len(plaintext) + TAG_SIZE)
        out[:NONCE_SIZE] = nonce
        self._aead.encrypt_into(nonce, plaintext, aad, memoryview(out)[NONCE_SIZE:])
        return cast(bytes, out)

    def open(self, sealed: bytes | memoryview, aad: bytes) -> bytes:
        """The plaintext of ``sealed``; :class:`DecryptFailed` if it does not authenticate."""
        if len(sealed) < SEAL_OVERHEAD:
            raise DecryptFailed("sealed data shorter than nonce and tag")
        view = memoryview(sealed)
        try:
            return self._aead.decrypt(view[:NONCE_SIZE], view[NONCE_SIZE:], aad)
        except InvalidTag:
            raise DecryptFailed("authentication failed (wrong key or altered bytes)") from None

    def __repr__(self) -> str:
        return f"DataKey(key_id={self.key_id.hex()})"


def new_data_key() -> bytes:
    """A fresh random AES-256 key."""
    return AESGCM.generate_key(bit_length=256)


def key_context(vault_id: str, key_id: bytes, purpose: str) -> bytes:
    """Associated data binding a wrapped key to its vault, key id and purpose."""
    return f"cbr/key/v1|{vault_id}|{key_id.hex()}|{purpose}".encode()


class KeyWrapper(Protocol):
    """The key service seen from the format layer (envelope encryption).

    ``wrap`` encrypts a vault key under a key-encryption key the service keeps
    and says which (``kek_id``); ``unwrap`` reverses it. ``context`` must be
    bound as associated data so a wrapped key only unwraps for the same
    vault, key id and purpose. Both raise on failure.
    """

    def wrap(self, key: bytes, context: bytes) -> tuple[str, bytes]: ...

    def unwrap(self, kek_id: str, wrapped: bytes, context: bytes) -> bytes: ...


@dataclass(frozen=True, slots=True)
class WrappedKey:
    """A vault key as stored in ``keys/<key-id>``: wrapped, or raw when ``kek_id`` is empty
    (only the chunk-id key of an unencrypted vault)."""

    key_id: bytes
    purpose: str
    vault_id: str
    kek_id: str
    key: bytes

    @property
    def is_wrapped(self) -> bool:
        return bool(self.kek_id)


UnwrapFn = Callable[[str, bytes, bytes], bytes]
"""``unwrap(kek_id, wrapped, context) -> key``: a :meth:`KeyWrapper.unwrap`."""


def unwrap_key(wrapped: WrappedKey, unwrap: UnwrapFn | None) -> bytes:
    """The clear key of ``wrapped``, calling ``unwrap`` when it is wrapped.

    Raises :class:`KeyUnavailable` when the key is wrapped and no callback is
    given, or the callback fails.
    """
    if not wrapped.is_wrapped:
        if wrapped.purpose == PURPOSE_DATA:
            raise KeyUnavailable(f"data key {wrapped.key_id.hex()} is stored unwrapped; refused")
        return wrapped.key
    if unwrap is None:
        raise KeyUnavailable(
            f"key {wrapped.key_id.hex()} is wrapped by {wrapped.kek_id!r} "
            "and no key service was given"
        )
    context = key_context(wrapped.vault_id, wrapped.key_id, wrapped.purpose)
    try:
        return unwrap(wrapped.kek_id, wrapped.key, context)
    except KeyUnavailable:
        raise
    except Exception as exc:
        raise KeyUnavailable(
            f"key service could not unwrap key {wrapped.key_id.hex()} "
            f"with {wrapped.kek_id!r}: {exc}"
        ) from exc


def wrap_key(
    key: bytes, *, key_id: bytes, purpose: str, vault_id: str, wrapper: KeyWrapper | None
) -> WrappedKey:
    """Wraps ``key`` with ``wrapper``; without one, only a chunk-id key may stay raw."""
    if wrapper is None:
        if purpose == PURPOSE_DATA:
            raise KeyUnavailable("a data key cannot be stored without a key service")
        return WrappedKey(key_id, purpose, vault_id, "", key)
    kek_id, wrapped = wrapper.wrap(key, key_context(vault_id, key_id, purpose))
    if not kek_id:
        raise KeyUnavailable("key service returned an empty kek id")
    return WrappedKey(key_id, purpose, vault_id, kek_id, wrapped)


class AesKeyWrapper:
    """Reference :class:`KeyWrapper`: AES-256-GCM under one local KEK.

    Suitable for the controller's master key and for tests; a cloud KMS
    implements the same two methods.
    """

    def __init__(self, kek_id: str, kek: bytes) -> None:
        if not kek_id:
            raise ValueError("kek_id must not be empty")
        self.kek_id = kek_id
        self._key = DataKey(b"", kek)

    def wrap(self, key: bytes, context: bytes) -> tuple[str, bytes]:
        return self.kek_id, self._key.seal(key, context)

    def unwrap(self, kek_id: str, wrapped: bytes, context: bytes) -> bytes:
        if kek_id != self.kek_id:
            raise KeyUnavailable(f"unknown key-encryption key {kek_id!r}")
        return self._key.open(wrapped, context)
