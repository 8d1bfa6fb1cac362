"""The backups pages' pure parts: the restore form as the request the CLI
would send, and the page drawn for a user who may list nothing extra (the
sections fall back to what the user may do instead of failing the page)."""

from __future__ import annotations

from typing import Any

import pytest
from multidict import MultiDict

from cbr.v1 import backup_pb2, common_pb2
from console import web as cw
from console.api import ApiError
from console.views import backups


def _form(**fields: str) -> MultiDict[str]:
    return MultiDict(fields)


def test_the_original_place_ignores_the_new_place_fields() -> None:
    req = backups.restore_request("b1", _form(place="original", target_path="/x",
                                              target_agent_id="a1", target_resource_id="r1"))
    assert req == backup_pb2.RestoreBackupRequest(backup_id="b1")


def test_a_new_place_carries_the_agent_path_and_one_path_like_the_cli() -> None:
    req = backups.restore_request("b1", _form(
        place="new", target_agent_id="a1", target_path=" /srv/out ",
        source_path="/docs//./a.txt", encrypted="on"))
    assert req == backup_pb2.RestoreBackupRequest(
        backup_id="b1", target_agent_id="a1", target_path="/srv/out",
        source_path="docs/a.txt", encrypted=True)


def test_a_server_restores_each_disk_to_its_own_path() -> None:
    req = backups.restore_request("b1", _form(place="new", mapping_d1="/out/sys.img",
                                              mapping_d2="", power_on="on"))
    assert dict(req.mappings) == {"d1": "/out/sys.img"} and req.power_on
    assert not req.target_path


@pytest.mark.parametrize(("fields", "field"), [
    ({"place": "new"}, "target_path"),
    ({"place": "resource"}, "target_resource_id"),
    ({"place": "elsewhere"}, "place"),
])
def test_an_incomplete_restore_form_is_refused_naming_the_field(
        fields: dict[str, str], field: str) -> None:
    with pytest.raises(ApiError) as err:
        backups.restore_request("b1", _form(**fields))
    assert err.value.status == "INVALID_ARGUMENT" and f"(field {field})" in err.value.message


def _render(template: str, lacking: str, **context: Any) -> str:
    env = cw.templates()
    return env.get_template(template).render(
        current=None, csrf_token="t", needs=lambda method: lacking,
        cloud={"name": "c", "region": "r"}, htmx_integrity="", path="/backups",
        **backups.KINDS, **context)


def test_a_user_who_may_list_nothing_more_still_gets_the_page() -> None:
    backup = backup_pb2.Backup(id="b1", name="n", resource_type=common_pb2.OBJECT_TYPE_TURBO)
    page = _render(
        "backup.html", "cbr:x:y", backup=backup, vault_name="", files=None,
        files_error=ApiError("FAILED_PRECONDITION", "BackupService.2004", "Backup <b1> is busy"),
        dir_path="", crumbs=[("/", "")], restore_path="", records=None, credentials=None,
        clouds=[], agents=None, is_server=False, is_disk=False, is_file_system=True,
        is_replica=False)
    assert "Backup &lt;b1&gt; is busy" in page  # the listing's refusal, escaped
    assert "Replication records need cbr:x:y" in page
    assert '<input id="c-credential" name="credential_id" required' in page
    assert '<input id="r-agent" name="target_agent_id"' in page
    assert 'disabled aria-disabled="true" title="Needs cbr:x:y">Create Replica' in page
