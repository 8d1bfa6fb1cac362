"""Vault storage as the controller sees it: where each vault's data lives.

The controller moves no backup data (agents do); it touches storage for
metadata only: creating a vault's ``config`` and keys, reading manifests
and trees (listing files, importing a vault), deleting manifests, pruning
and verifying. Credentials for S3 come from the controller's settings and
travel to agents inside each command over the TLS stream; they are never
written to the database, so a database dump does not leak them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import posixpath
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

from cbr import errors, faults
from cbr.repo import RepoError, Repository, layout
from cbr.repo.config import VaultConfig, key_from_json
from cbr.repo.content.crypto import PURPOSE_DATA, KeyWrapper, unwrap_key
from cbr.repo.errors import KeyUnavailable, VaultExists
from cbr.storage import (
    Backend,
    ObjectNotFound,
    StorageError,
    StoragePermissionDenied,
    StorageUnavailable,
    open_backend,
)
from cbr.v1 import agent_pb2, key_pb2
from controller.config import Config

log = logging.getLogger("cbr.controller.storage")


def join_url(base: str, vault_id: str) -> str:
    """``base`` with one more path component (a directory or an S3 prefix)."""
    if base.startswith("/"):
        return base.rstrip("/") + "/" + vault_id
    parts = urlsplit(base)
    path = parts.path.rstrip("/") + "/" + vault_id
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, parts.fragment))


def check_url(url: str) -> str:
    """Refuses storage URLs the backends cannot open, with the reason."""
    if url.startswith("/"):
        return url
    parts = urlsplit(url)
    if parts.scheme not in ("file", "s3"):
        raise errors.InvalidParameter(
            f"storage_url {url!r} is not an absolute path, file:///path or s3://bucket/prefix.",
            field="storage_url")
    if "@" in parts.netloc:
        raise errors.InvalidParameter(
            "Credentials do not belong in storage_url; set storage_access_key and "
            "storage_secret_key on the controller.", field="storage_url")
    return url


@dataclass(frozen=True)
class Place:
    """Where a storage URL points, so that "inside" is a prefix test: a local
    path after symlinks, or an S3 bucket with its endpoint and options."""

    store: tuple[str, ...]
    path: str

    @classmethod
    def of(cls, url: str) -> Place:
        parts = urlsplit(url)
        if url.startswith("/") or parts.scheme == "file":
            return cls(("file",), os.path.realpath(url if url.startswith("/")
                                                   else unquote(parts.path)))
        options = tuple(sorted(parse_qsl(parts.query)))
        return cls(("s3", parts.netloc, *(f"{k}={v}" for k, v in options)),
                   posixpath.normpath("/" + unquote(parts.path).strip("/")))

    def within(self, other: Place) -> bool:
        return self.store == other.store and (
            self.path == other.path or self.path.startswith(other.path.rstrip("/") + "/"))


class StorageRoots:
    """The operator's rule for where an account may put a vault's storage.

    A tenant names storage by URL (``--storage-url``, ``import-storage``);
    without this rule that is a write, a read and a prune anywhere the
    controller can reach. So a requested place must lie strictly inside one
    of the operator's ``storage_roots``, never around or inside another
    vault's storage (prune deletes in what it owns) and never in the
    controller's own files.
    """

    def __init__(self, config: Config) -> None:
        self._names = config.effective_storage_roots
        self._roots = [Place.of(check_url(root)) for root in self._names]
        self._data = Place.of(str(config.data_dir))
        self._default = Place.of(str(config.data_dir / "storage"))

    def check(self, url: str, taken: Iterable[str]) -> str:
        target = Place.of(check_url(url))
        if not any(target.within(root) and target.path != root.path for root in self._roots):
            raise errors.StorageNotAllowed(
                f"storage_url {url!r} is not inside the storage roots this controller's "
                f"operator allows ({', '.join(self._names)}); choose a place inside one.",
                storage_url=url)
        if (target.within(self._data) and not target.within(self._default)) \
                or self._data.within(target):
            raise errors.StorageNotAllowed(
                f"storage_url {url!r} overlaps the controller's own data directory.",
                storage_url=url)
        for other in taken:
            place = Place.of(other)
            if place == target:
                raise errors.DuplicateVault(
                    f"The storage {url} already belongs to a vault of this controller.",
                    storage_url=url)
            if target.within(place) or place.within(target):
                raise errors.StorageNotAllowed(
                    f"storage_url {url!r} lies inside or around another vault's storage; "
                    "each vault needs a place of its own.", storage_url=url)
        return url


@contextmanager
def _reading(url: str) -> Iterator[None]:
    """Storage and format failures while reading, as the API's errors."""
    try:
        yield
    except (StorageError, RepoError) as exc:
        raise faults.as_cbr_error(exc, f"Vault storage {url}", storage_url=url) from exc


class VaultStorage:
    """Opens vault storage with the controller's credentials.

    Repositories opened for reading (listing files) are cached per URL and
    reloaded when the set of index files changes, so a listing does not
    reload a large index every call.
    """

    def __init__(self, config: Config) -> None:
        self._config = config
        self.roots = StorageRoots(config)
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[frozenset[bytes], Repository]] = {}

    def _options(self, url: str) -> dict[str, Any]:
        if url.startswith("s3://") and self._config.storage_access_key:
            return {"access_key": self._config.storage_access_key,
                    "secret_key": self._config.storage_secret_key}
        return {}

    def url_for_new_vault(self, vault_id: str, requested: str = "",
                          taken: Iterable[str] = ()) -> str:
        """The requested place when the operator allows it, else the default."""
        return self.roots.check(requested, taken) if requested else join_url(
            self._config.effective_storage_url, vault_id)

    def remove_empty_dirs(self, url: str) -> None:
        """After a vault's storage was erased: its local directories that are
        empty now go too (a foreign file keeps its directory). S3 has none."""
        place = Place.of(url)
        if place.store != ("file",) or not os.path.isdir(place.path):
            return
        for dirpath, _dirs, _files in os.walk(place.path, topdown=False):
            with contextlib.suppress(OSError):  # not empty: something foreign stays
                os.rmdir(dirpath)

    def access(self, url: str) -> agent_pb2.StorageAccess:
        """The StorageAccess an agent needs for ``url``."""
        options = self._options(url)
        return agent_pb2.StorageAccess(url=url, access_key=options.get("access_key", ""),
                                       secret_key=options.get("secret_key", ""))

    def probe(self) -> None:
        """Raises unless the storage new vaults go to answers now (health).

        A local directory must be there and writable (an unmounted disk is
        not); S3 must answer, and any answer about the bucket counts (it is
        made with the first vault), but not an unreachable endpoint or
        refused credentials."""
        url = self._config.effective_storage_url
        place = Place.of(url)
        if place.store == ("file",):
            if not os.path.isdir(place.path) or not os.access(place.path, os.W_OK | os.X_OK):
                raise errors.StorageUnavailable(
                    f"The storage directory {place.path} is missing or not writable.",
                    storage_url=url)
            return
        with self.backend(url) as backend:
            try:
                backend.exists("health-probe")
            except (StorageUnavailable, StoragePermissionDenied) as exc:
                raise errors.StorageUnavailable(f"Vault storage {url}: {exc}",
                                                storage_url=url) from exc
            except StorageError:
                return  # an answer: no bucket yet, say

    def backend(self, url: str) -> Backend:
        try:
            return open_backend(url, **self._options(url))
        except (ValueError, StorageError) as exc:
            raise errors.StorageUnavailable(f"Cannot open vault storage {url}: {exc}",
                                            storage_url=url) from exc

    def init_vault(self, url: str, vault_id: str, now: dt.datetime,
                   key: KeyWrapper | None = None) -> None:
        """Writes the vault's config and keys (before the catalog points at it);
        with ``key`` the vault is encrypted and its keys are wrapped by it."""
        try:
            Repository.init(self.backend(url), vault_id=vault_id, encrypted=key is not None,
                            key_wrapper=key, now=now)
        except VaultExists:
            raise errors.Conflict(
                f"The storage {url} already holds a vault; import it with "
                "ImportVaultStorage instead.", storage_url=url) from None
        except StorageError as exc:
            raise errors.StorageUnavailable(f"Cannot write vault storage {url}: {exc}",
                                            storage_url=url) from exc

    def config(self, url: str) -> VaultConfig:
        """The vault's ``config`` alone (it is clear; no key needed)."""
        with _reading(url):
            try:
                return VaultConfig.from_json(layout.sharded(self.backend(url)).get(layout.CONFIG))
            except ObjectNotFound:
                raise RepoError(f"no vault in {url}: config missing") from None

    def task_keys(self, url: str, vault_id: str, key: KeyWrapper) -> list[key_pb2.TaskKey]:
        """An encrypted vault's keys, unwrapped with ``key``, for one agent command.

        Refuses a config naming another vault and a data key made for
        another vault: a key file copied in from elsewhere must not make a
        reader accept that vault's objects (storage format section 4.3).
        """
        out: list[key_pb2.TaskKey] = []
        with _reading(url):
            backend = layout.sharded(self.backend(url))
            config = VaultConfig.from_json(backend.get(layout.CONFIG))
            if config.vault_id != vault_id:
                raise RepoError(f"config names vault {config.vault_id}, not {vault_id}")
            for info in backend.list(layout.KEYS):
                wrapped = key_from_json(backend.get(info.name), info.name)
                if wrapped.purpose == PURPOSE_DATA and wrapped.vault_id != vault_id:
                    raise RepoError(f"{info.name}: a data key of vault {wrapped.vault_id}")
                if not wrapped.is_wrapped:
                    continue
                clear = unwrap_key(wrapped, key.unwrap)
                out.append(key_pb2.TaskKey(key_id=wrapped.key_id.hex(), purpose=wrapped.purpose,
                                           vault_id=wrapped.vault_id, key=clear))
        return out

    def chunk_keys(self, url: str, backup_id: str, key: KeyWrapper | None,
                   expected_sha256: str) -> dict[bytes, bytes]:
        """The chunk-id keys a backup's manifests use, by key id: what a
        replica of it needs in its vault (storage format section 16)."""
        with _reading(url), self.repository(url, load_index=False, key=key,
                                            expect_encrypted=key is not None) as repo:
            top = repo.load_manifest(backup_id, expected_sha256=expected_sha256)
            ids = {top.chunk_key_id}
            for child in top.children:
                ids.add(repo.load_manifest(child).chunk_key_id)
            return {kid: repo.hasher(kid).key for kid in ids}

    def add_chunk_keys(self, url: str, keys: dict[bytes, bytes], source_vault_id: str,
                       key: KeyWrapper | None) -> None:
        """Stores another lineage's chunk-id keys in a vault, wrapped by the
        vault's master key when it is encrypted; a key already there must be
        the same key."""
        with _reading(url), self.repository(url, load_index=False, key=key,
                                            expect_encrypted=key is not None) as repo:
            for key_id, material in keys.items():
                try:
                    known = repo.hasher(key_id).key
                except KeyUnavailable:
                    repo.add_chunk_key(key_id, material, source_vault_id=source_vault_id,
                                       wrapper=key)
                    continue
                if known != material:
                    raise RepoError(f"chunk-id key {key_id.hex()} differs from the one the "
                                    "vault holds under that id")

    @contextmanager
    def repository(self, url: str, *, load_index: bool = True, key: KeyWrapper | None = None,
                   expect_encrypted: bool | None = None) -> Iterator[Repository]:
        """A freshly opened repository, closed after use; ``key`` unwraps the
        keys of an encrypted vault."""
        with _reading(url):
            repo = Repository.open(self.backend(url), load_index=load_index,
                                   unwrap=key.unwrap if key is not None else None,
                                   expect_encrypted=expect_encrypted)
        try:
            yield repo
        finally:
            close = getattr(repo, "close", None)
            if close is not None:
                close()

    def reader(self, url: str, *, key: KeyWrapper | None = None,
               expect_encrypted: bool | None = None) -> Repository:
        """A cached read-only repository whose index matches the storage's now.

        The caller checks that an encrypted vault's key may be used before
        every call; a cached repository holds its vault's keys in memory."""
        with _reading(url):
            backend = self.backend(url)
            probe = Repository.open(backend, load_index=False,
                                    unwrap=key.unwrap if key is not None else None,
                                    expect_encrypted=expect_encrypted)
            current = frozenset(probe.list_index_files())
            with self._lock:
                cached = self._cache.get(url)
            if cached is not None and cached[0] == current:
                return cached[1]
            probe.load_index()
        with self._lock:
            self._cache[url] = (current, probe)
            if len(self._cache) > 16:
                self._cache.pop(next(iter(self._cache)))
        return probe
