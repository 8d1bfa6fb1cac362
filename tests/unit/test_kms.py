"""The root key file, customer master keys as key wrappers, and the agent's per-task keys."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path
from types import SimpleNamespace

import pytest

from agent.commands.storage import TaskKeys
from cbr.repo import KeyUnavailable, Repository
from cbr.repo.config import key_from_json
from cbr.repo.content.crypto import key_context
from cbr.storage.local import LocalBackend
from controller.kms import CustomerKey, RootKey, RootKeyError, new_material


def test_root_key_file_is_made_0600_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "root.key"
    first = RootKey.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    sealed = first.seal(b"m" * 32, key_id="k", project_id="p")
    assert RootKey.load_or_create(path).unseal(sealed, key_id="k", project_id="p") == b"m" * 32


def test_a_root_key_file_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "root.key"
    RootKey.load_or_create(path)
    os.chmod(path, 0o644)
    with pytest.raises(RootKeyError, match="chmod 600"):
        RootKey.load_or_create(path)


def test_root_key_from_the_environment_must_be_base64_of_32_bytes() -> None:
    key = RootKey.from_text(base64.b64encode(b"r" * 32).decode())
    assert key.unseal(key.seal(b"x", key_id="k", project_id="p"), key_id="k",
                      project_id="p") == b"x"
    with pytest.raises(RootKeyError):
        RootKey.from_text("not base64!")
    with pytest.raises(RootKeyError):
        RootKey.from_text(base64.b64encode(b"short").decode())


def test_sealed_material_is_bound_to_its_key_and_account() -> None:
    root = RootKey(b"r" * 32)
    sealed = root.seal(b"m" * 32, key_id="k1", project_id="p1")
    for key_id, project_id in (("k2", "p1"), ("k1", "p2")):
        with pytest.raises(RootKeyError):
            root.unseal(sealed, key_id=key_id, project_id=project_id)


def test_a_vault_under_a_customer_key_opens_with_the_same_material_under_another_id(
        tmp_path: Path) -> None:
    material = new_material()
    repo = Repository.init(LocalBackend(tmp_path), vault_id="v1", encrypted=True,
                           key_wrapper=CustomerKey("key-a", material))
    chunk = repo.save_blob(0, b"secret data " * 1000)  # type: ignore[arg-type]
    repo.flush()
    repo.close()
    again = Repository.open(LocalBackend(tmp_path), unwrap=CustomerKey("key-b", material).unwrap,
                            expect_encrypted=True)
    assert again.load_blob(chunk) == b"secret data " * 1000
    with pytest.raises(KeyUnavailable):
        Repository.open(LocalBackend(tmp_path),
                        unwrap=CustomerKey("key-a", new_material()).unwrap)


def _task_keys(root: Path, wrapper: CustomerKey) -> list[SimpleNamespace]:
    out = []
    for path in sorted((root / "keys").iterdir()):
        wrapped = key_from_json(path.read_bytes(), path.name)
        clear = wrapper.unwrap(wrapped.kek_id, wrapped.key,
                               key_context(wrapped.vault_id, wrapped.key_id, wrapped.purpose))
        out.append(SimpleNamespace(key_id=wrapped.key_id.hex(), purpose=wrapped.purpose,
                                   vault_id=wrapped.vault_id, key=clear))
    return out


def test_task_keys_open_the_vault_they_were_sent_for_and_no_other(tmp_path: Path) -> None:
    wrapper = CustomerKey("key-a", new_material())
    Repository.init(LocalBackend(tmp_path / "a"), vault_id="va", encrypted=True,
                    key_wrapper=wrapper)
    Repository.init(LocalBackend(tmp_path / "b"), vault_id="vb", encrypted=True,
                    key_wrapper=wrapper)
    keys = TaskKeys(_task_keys(tmp_path / "a", wrapper))
    assert repr(keys) == "TaskKeys(2 keys)"
    repo = Repository.open(LocalBackend(tmp_path / "a"), unwrap=keys.unwrap,
                           expect_encrypted=True)
    assert repo.config.vault_id == "va"
    with pytest.raises(KeyUnavailable, match="sent no key"):
        Repository.open(LocalBackend(tmp_path / "b"), unwrap=keys.unwrap)
