"""Fixtures of the storage backend contract suite.

- ``backend``: an empty backend, once per kind: ``local`` (a directory under
  the test's tmp dir) and ``s3`` (a fresh bucket on the session's real
  SeaweedFS, under a key prefix so prefix handling is exercised too).
- ``seaweed`` (in ``tests/conftest.py``): the session's SeaweedFS server.
- ``s3_backend_factory``: more S3 backends on the session server, with
  settings of the test's choosing (credentials, page size, conditional writes).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cbr.storage.backend import Backend
from cbr.storage.local import LocalBackend
from cbr.storage.s3 import S3Backend
from tests.support.seaweed import S3Factory, SeaweedServer, make_s3_backend


@pytest.fixture
def s3_backend_factory(seaweed: SeaweedServer) -> Iterator[S3Factory]:
    made: list[S3Backend] = []

    def factory(**settings: Any) -> S3Backend:
        backend = make_s3_backend(seaweed, **settings)
        made.append(backend)
        return backend

    yield factory
    for backend in made:
        backend.close()


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """An empty backend of each kind; the contract tests run once per kind."""
    if request.param == "local":
        made: Backend = LocalBackend(tmp_path / "vault")
    else:
        made = make_s3_backend(request.getfixturevalue("seaweed"))
    try:
        yield made
    finally:
        made.close()
