"""Vault storage lies only where the controller's operator allows it."""

from __future__ import annotations

from pathlib import Path

import pytest

from cbr import errors
from controller import config as config_mod
from controller.storage import StorageRoots

S3 = "s3://vaults/tenants?endpoint=http://127.0.0.1:8333"


def _roots(tmp_path: Path, *roots: str) -> StorageRoots:
    argv = ["--data-dir", str(tmp_path / "data")]
    if roots:
        argv += ["--storage-roots", ",".join(roots)]
    return StorageRoots(config_mod.load(argv, environ={}))


def test_by_default_only_the_default_storage_directory_is_allowed(tmp_path: Path) -> None:
    roots = _roots(tmp_path)
    inside = str(tmp_path / "data" / "storage" / "v1")
    assert roots.check(inside, []) == inside
    for elsewhere in ("/etc/config", str(tmp_path / "data" / "storage"),
                      str(tmp_path / "data" / "ca"), str(tmp_path / "data"),
                      f"file://{tmp_path}/data/storage/../ca", "/", S3):
        with pytest.raises(errors.StorageNotAllowed) as caught:
            roots.check(elsewhere, [])
        assert caught.value.code == "BackupService.6120"


def test_a_place_inside_an_operator_root_is_allowed_and_named_roots_in_the_refusal(
        tmp_path: Path) -> None:
    roots = _roots(tmp_path, str(tmp_path / "vaults"), S3)
    assert roots.check(str(tmp_path / "vaults" / "a"), [])
    assert roots.check(f"file://{tmp_path}/vaults/b/c", [])
    assert roots.check("s3://vaults/tenants/a?endpoint=http://127.0.0.1:8333", [])
    with pytest.raises(errors.StorageNotAllowed, match="tenants"):
        roots.check("/etc/keys", [])


@pytest.mark.parametrize("url", [
    "s3://vaults/other/a?endpoint=http://127.0.0.1:8333",
    "s3://other-bucket/tenants/a?endpoint=http://127.0.0.1:8333",
    "s3://vaults/tenants/a?endpoint=http://10.0.0.1:8333",
    "s3://vaults/tenants/a",
    "s3://vaults/tenants/a?endpoint=http://127.0.0.1:8333&endpoint_url=http://10.0.0.1",
    "s3://vaults/tenants/../a?endpoint=http://127.0.0.1:8333",
])
def test_an_s3_place_must_match_a_roots_bucket_endpoint_and_options(
        tmp_path: Path, url: str) -> None:
    with pytest.raises(errors.StorageNotAllowed):
        _roots(tmp_path, S3).check(url, [])


def test_a_symlink_inside_a_root_does_not_lead_storage_out_of_it(tmp_path: Path) -> None:
    (tmp_path / "vaults").mkdir()
    (tmp_path / "vaults" / "etc").symlink_to("/etc")
    with pytest.raises(errors.StorageNotAllowed):
        _roots(tmp_path, str(tmp_path / "vaults")).check(str(tmp_path / "vaults" / "etc"), [])


def test_a_place_never_overlaps_another_vaults_storage(tmp_path: Path) -> None:
    roots = _roots(tmp_path, str(tmp_path / "vaults"))
    taken = [str(tmp_path / "vaults" / "a"), "s3://b/p?endpoint=http://127.0.0.1:1"]
    with pytest.raises(errors.DuplicateVault):
        roots.check(str(tmp_path / "vaults" / "a"), taken)
    for overlapping in (tmp_path / "vaults" / "a" / "inner", tmp_path / "vaults"):
        with pytest.raises(errors.StorageNotAllowed):
            roots.check(str(overlapping), taken)
    assert roots.check(str(tmp_path / "vaults" / "ab"), taken)
