"""Vault storage backends: where chunks, packs, indexes and manifests are kept.

The bottom layer of the data path: a storage is a flat map of named objects
(:class:`~cbr.storage.backend.Backend`, whose docstrings are the contract).
Higher layers (packs, indexes, manifests) use only that interface. This
package must not import ``controller`` or ``agent``; the agent, the importer
and the controller all use it.

Modules:

- ``backend``: the interface, name rules, typed errors (``StorageError`` and
  its subclasses; only ``StorageUnavailable`` is retryable).
- ``local``: a directory (the default), durable atomic writes.
- ``s3``: any S3-compatible store through boto3.
- ``retry``: wrapper retrying transient errors with backoff and jitter.
- ``sharded``: wrapper sharding ``data/abcd…`` into ``data/ab/abcd…``.

Opening a storage from a URL, :func:`open_backend`:

``/abs/path`` or ``file:///abs/path``
    :class:`~cbr.storage.local.LocalBackend` on that directory (created if
    missing). Options: ``create``, ``fsync``.
``s3://bucket[/prefix][?endpoint=URL&region=R&addressing_style=path&create_bucket=1]``
    :class:`~cbr.storage.s3.S3Backend`. Query parameters and keyword options
    are the constructor's arguments (``endpoint`` is an alias of
    ``endpoint_url``); keyword options win. Credentials: ``access_key`` and
    ``secret_key`` options, else ``AWS_ACCESS_KEY_ID`` and
    ``AWS_SECRET_ACCESS_KEY`` (boto3's default chain). Credentials in the URL
    itself are refused, so a URL can be logged.

Unless ``retry=False``, the backend comes wrapped in
:class:`~cbr.storage.retry.RetryingBackend` (``retry_policy=`` sets its
policy). Sharding is not applied here: which prefixes are sharded is part of
the storage format, decided by the layer above.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from cbr.storage.backend import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_PART_SIZE,
    MAX_NAME_LENGTH,
    Backend,
    BackendWrapper,
    InvalidName,
    ObjectInfo,
    ObjectNotFound,
    StorageError,
    StorageFull,
    StoragePermissionDenied,
    StorageUnavailable,
    validate_name,
)
from cbr.storage.retry import RetryingBackend, RetryPolicy

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_PART_SIZE",
    "MAX_NAME_LENGTH",
    "Backend",
    "BackendWrapper",
    "InvalidName",
    "ObjectInfo",
    "ObjectNotFound",
    "RetryPolicy",
    "RetryingBackend",
    "StorageError",
    "StorageFull",
    "StoragePermissionDenied",
    "StorageUnavailable",
    "open_backend",
    "validate_name",
]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_BOOL_OPTIONS = {"create_bucket", "create", "fsync", "verify"}
_INT_OPTIONS = {"max_attempts", "max_pool_connections", "part_size", "list_page_size"}
_FLOAT_OPTIONS = {"connect_timeout", "read_timeout"}


def _coerce(key: str, value: str) -> Any:
    if key in _BOOL_OPTIONS:
        lowered = value.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        if key == "verify":
            return value  # a CA bundle path
        raise ValueError(f"option {key}={value!r} is not a boolean")
    if key in _INT_OPTIONS:
        return int(value)
    if key in _FLOAT_OPTIONS:
        return float(value)
    return value


def _wrap(backend: Backend, retry: bool, policy: RetryPolicy | None) -> Backend:
    return RetryingBackend(backend, policy) if retry else backend


def open_backend(
    url: str,
    *,
    retry: bool = True,
    retry_policy: RetryPolicy | None = None,
    **options: Any,
) -> Backend:
    """The backend a storage URL names (see the module docstring for the forms)."""
    if url.startswith("/"):
        from cbr.storage.local import LocalBackend

        return _wrap(LocalBackend(Path(url), **options), retry, retry_policy)
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"file URL must be file:///absolute/path, got {url!r}")
        path = unquote(parts.path)
        if not path.startswith("/"):
            raise ValueError(f"file URL must hold an absolute path, got {url!r}")
        from cbr.storage.local import LocalBackend

        return _wrap(LocalBackend(Path(path), **options), retry, retry_policy)
    if parts.scheme == "s3":
        if "@" in parts.netloc:
            raise ValueError("credentials do not belong in the storage URL; pass them as options")
        if not parts.netloc:
            raise ValueError(f"S3 URL needs a bucket: s3://bucket/prefix, got {url!r}")
        settings: dict[str, Any] = {}
        for key, value in parse_qsl(parts.query, keep_blank_values=False, strict_parsing=False):
            key = "endpoint_url" if key == "endpoint" else key
            settings[key] = _coerce(key, value)
        settings.update(options)
        from cbr.storage.s3 import S3Backend

        backend = S3Backend(parts.netloc, unquote(parts.path).strip("/"), **settings)
        return _wrap(backend, retry, retry_policy)
    raise ValueError(
        f"unsupported storage URL {url!r}: use an absolute path, file:///path or s3://bucket/prefix"
    )
