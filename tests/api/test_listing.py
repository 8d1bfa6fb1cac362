"""List calls filter and page the way their requests say, on both databases."""

from __future__ import annotations

import datetime as dt

from cbr.v1 import common_pb2, protectable_pb2, vault_pb2
from controller.persistence.models import Agent, Protectable
from tests.support.inproc import RunningController


def _inventory(api: RunningController) -> dict[str, str]:
    """Two agents (one online), five protectables of every kind and state."""
    now = dt.datetime.now(dt.UTC)
    ids: dict[str, str] = {}
    with api.app.db.begin() as s:
        online = Agent(project_id=api.account_id, name="up", role="host",
                       certificate_fingerprint="a", enrolled_at=now, connected=True,
                       last_seen_at=now)
        offline = Agent(project_id=api.account_id, name="down", role="host",
                        certificate_fingerprint="b", enrolled_at=now, connected=False,
                        last_seen_at=now - dt.timedelta(hours=1))
        s.add_all([online, offline])
        s.flush()
        for i, (name, kind, agent, extra) in enumerate([
                ("web", "server", online, {}), ("vol", "disk", online, {}),
                ("share", "turbo", offline, {}), ("old", "disk", online, {"gone": True}),
                ("bad", "disk", online, {"error": "cannot read /dev/vdz"})]):
            p = Protectable(project_id=api.account_id, agent_id=agent.id, local_id=name,
                            name=name, object_type=kind, size_bytes=1 << 30, disks=[], tags=[],
                            created_at=now + dt.timedelta(seconds=i), updated_at=now, **extra)
            s.add(p)
            s.flush()
            ids[name] = p.id
    return ids


def _names(api: RunningController, **kw: object) -> list[str]:
    reply = api.client().protectables.ListProtectables(
        protectable_pb2.ListProtectablesRequest(**kw))  # type: ignore[arg-type]
    return [p.name for p in reply.protectables]


def test_protectables_filter_by_type_state_and_protection(api: RunningController) -> None:
    ids = _inventory(api)
    S = protectable_pb2
    assert _names(api) == ["web", "vol", "share", "old", "bad"]
    assert _names(api, type=common_pb2.OBJECT_TYPE_DISK) == ["vol", "old", "bad"]
    assert _names(api, status=S.PROTECTABLE_STATUS_AVAILABLE) == ["web", "vol"]
    assert _names(api, status=S.PROTECTABLE_STATUS_UNREACHABLE) == ["share"]
    assert _names(api, status=S.PROTECTABLE_STATUS_GONE) == ["old"]
    assert _names(api, status=S.PROTECTABLE_STATUS_ERROR) == ["bad"]
    assert _names(api, name="vol") == ["vol"]
    c = api.client()
    vault = c.vaults.CreateVault(vault_pb2.CreateVaultRequest(
        name="disks", object_type=common_pb2.OBJECT_TYPE_DISK, size_gb=10,
        resources=[vault_pb2.ResourceSpec(id=ids["vol"])])).vault
    assert [r.name for r in vault.resources] == ["vol"]
    assert _names(api, protection="protected") == ["vol"]
    assert _names(api, protection="unprotected") == ["web", "share", "old", "bad"]
    got = c.protectables.GetProtectable(
        protectable_pb2.GetProtectableRequest(protectable_id=ids["vol"])).protectable
    assert (got.vault_id, got.agent_name, got.agent_online) == (vault.id, "up", True)
    page = c.protectables.ListProtectables(protectable_pb2.ListProtectablesRequest(page_size=2))
    assert page.total_count == 5 and len(page.protectables) == 2
    rest = c.protectables.ListProtectables(protectable_pb2.ListProtectablesRequest(
        page_size=10, page_token=page.next_page_token))
    assert [p.name for p in rest.protectables] == ["share", "old", "bad"]


def test_vaults_filter_by_resource_policy_and_type(api: RunningController) -> None:
    ids = _inventory(api)
    c = api.client()
    disk = c.vaults.CreateVault(vault_pb2.CreateVaultRequest(
        name="d", object_type=common_pb2.OBJECT_TYPE_DISK, size_gb=10,
        resources=[vault_pb2.ResourceSpec(id=ids["vol"])])).vault
    c.vaults.CreateVault(vault_pb2.CreateVaultRequest(
        name="s", object_type=common_pb2.OBJECT_TYPE_SERVER, size_gb=10))

    def names(**kw: object) -> list[str]:
        reply = c.vaults.ListVaults(vault_pb2.ListVaultsRequest(**kw))  # type: ignore[arg-type]
        return [v.name for v in reply.vaults]

    assert names() == ["d", "s"]
    assert names(resource_id=ids["vol"]) == ["d"]
    assert names(object_type=common_pb2.OBJECT_TYPE_SERVER) == ["s"]
    assert names(name="d", status=vault_pb2.VAULT_STATUS_AVAILABLE) == ["d"]
    assert names(policy_id="none") == []
    assert names(page_size=1) == ["d"]
    assert disk.resources[0].id == ids["vol"]


def test_listing_the_backups_of_an_unknown_vault_is_not_found(api: RunningController) -> None:
    """Issue 20: it answered an empty list, as if the vault existed."""
    import grpc
    import pytest

    from cbr.client import error_from_rpc
    from cbr.v1 import backup_pb2

    with pytest.raises(grpc.RpcError) as refused:
        api.client().backups.ListBackups(backup_pb2.ListBackupsRequest(vault_id="no-such"))
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    err = error_from_rpc(refused.value)
    assert err is not None and err.code == "BackupService.6105"


def test_a_list_pages_newest_first_when_asked_and_keeps_that_order(
        api: RunningController) -> None:
    from cbr.v1 import audit_pb2

    c = api.client()
    for i in range(5):
        c.vaults.CreateVault(vault_pb2.CreateVaultRequest(
            name=f"v{i}", object_type=common_pb2.OBJECT_TYPE_DISK, size_gb=10))

    def names(newest_first: bool) -> list[str]:
        got: list[str] = []
        token = ""
        while True:
            page = c.audit.ListAuditRecords(audit_pb2.ListAuditRecordsRequest(
                action="cbr:vaults:create", page_size=2, page_token=token,
                newest_first=newest_first))
            got += [r.resource_ids[0] for r in page.records]
            token = page.next_page_token
            if not token:
                return got

    oldest_first = names(False)
    assert len(oldest_first) == 5
    assert names(True) == list(reversed(oldest_first))
