"""A vault's capacity, on SQLite and PostgreSQL: crossing its threshold
raises one event per crossing (re-armed when usage falls below it), and
auto_expand grows the vault by steps within the account's vault quota,
raising the event, with the reason, only when the quota stops it."""

from __future__ import annotations

from sqlalchemy import select

from controller.app import App
from controller.persistence.models import Account, Event, Vault
from controller.persistence.vocabulary import EventType
from controller.services import capacity, runs, vaults
from tests.state.conftest import NOW, Inventory
from tests.state.test_runs import _succeed
from tests.state.test_vaults import add, make_vault

GB = 1024**3


def _disk_vault(app: App, project: str, inventory: Inventory, name: str = "v",
                **kw: object) -> str:
    vid = make_vault(app, project, name=name, object_type="disk", **kw)
    add(app, project, vid, inventory.add(f"{name}-vol", "disk"))
    return vid


def _back_up(app: App, project: str, vault_id: str, stored: int, online: set[str]) -> None:
    with app.db.begin() as s:
        _cp, [dispatch] = runs.create_checkpoint(s, project, vault_id, [], name="",
                                                 description="", full=False, now=NOW,
                                                 online=online)
    _succeed(app, dispatch.task_id, stored=stored)


def _vault(app: App, vault_id: str) -> Vault:
    with app.db.begin() as s:
        vault = s.get(Vault, vault_id)
        assert vault is not None
        s.expunge(vault)
        return vault


def _threshold_events(app: App) -> list[Event]:
    with app.db.begin() as s:
        rows = list(s.scalars(select(Event).where(
            Event.event_type == EventType.VAULT_THRESHOLD_EXCEEDED)
            .order_by(Event.occurred_at)))
        s.expunge_all()
        return rows


def _quota(app: App, project: str, gb: int) -> None:
    with app.db.begin() as s:
        account = s.get(Account, project)
        assert account is not None
        account.vault_quota_gb = gb


def test_crossing_the_threshold_raises_one_event_until_usage_falls_below_it(
        app: App, project: str, inventory: Inventory) -> None:
    online = {inventory.agent_id}
    vid = _disk_vault(app, project, inventory)  # 100 GB, threshold 80
    _back_up(app, project, vid, 70 * GB, online)
    assert _threshold_events(app) == [] and not _vault(app, vid).threshold_exceeded
    _back_up(app, project, vid, 15 * GB, online)  # 85%
    [event] = _threshold_events(app)
    assert event.resource_id == vid and "85% of 100 GB, past its 80% threshold" in event.summary
    assert _vault(app, vid).threshold_exceeded
    _back_up(app, project, vid, 5 * GB, online)  # 90%: the same crossing
    assert len(_threshold_events(app)) == 1
    with app.db.begin() as s:  # more room: usage 45%, the warning re-armed
        vaults.update_vault(s, project, vid, {"size_gb": 200}, NOW)
    assert not _vault(app, vid).threshold_exceeded and len(_threshold_events(app)) == 1
    with app.db.begin() as s:  # a lower threshold is a new crossing
        vaults.update_vault(s, project, vid, {"threshold": 40}, NOW)
    assert _vault(app, vid).threshold_exceeded and len(_threshold_events(app)) == 2


def test_usage_falling_below_the_threshold_rearms_the_event(
        app: App, project: str, inventory: Inventory) -> None:
    online = {inventory.agent_id}
    vid = _disk_vault(app, project, inventory)
    _back_up(app, project, vid, 85 * GB, online)
    with app.db.begin() as s:  # what a deletion or a prune does
        vault = s.get(Vault, vid)
        assert vault is not None
        vault.used_bytes = 50 * GB
        capacity.usage_changed(s, vault, NOW)
    assert not _vault(app, vid).threshold_exceeded
    _back_up(app, project, vid, 35 * GB, online)
    assert len(_threshold_events(app)) == 2


def test_auto_expand_grows_the_vault_back_under_its_threshold_within_the_quota(
        app: App, project: str, inventory: Inventory) -> None:
    online = {inventory.agent_id}
    vid = _disk_vault(app, project, inventory, auto_expand=True)
    _back_up(app, project, vid, 85 * GB, online)
    vault = _vault(app, vid)
    # Steps of 10%: 100 -> 110 GB puts 85 GB at 77%, under 80%.
    assert vault.size_gb == 110 and not vault.threshold_exceeded
    assert _threshold_events(app) == []
    _back_up(app, project, vid, 100 * GB, online)
    vault = _vault(app, vid)
    # 185 GB needs more than 231.25 GB: 110 -> 121 -> 133 -> ... -> 212 -> 233.
    assert vault.size_gb == 233 and not vault.threshold_exceeded
    assert capacity.usage_percent(vault.used_bytes, vault.size_gb) < 80


def test_auto_expand_stopped_by_the_account_quota_raises_the_event_with_the_reason(
        app: App, project: str, inventory: Inventory) -> None:
    online = {inventory.agent_id}
    other = _disk_vault(app, project, inventory, name="other")  # 100 GB of the quota
    vid = _disk_vault(app, project, inventory, auto_expand=True)
    _quota(app, project, 205)
    _back_up(app, project, vid, 85 * GB, online)
    vault = _vault(app, vid)
    assert vault.size_gb == 105 and vault.threshold_exceeded  # 81%: as far as the quota goes
    [event] = _threshold_events(app)
    assert event.details["auto_expand_blocked"].startswith("BackupService.9921")
    assert "vault quota of 205 GB is reached (205 GB in all its vaults)" in event.summary
    assert _vault(app, other).size_gb == 100
    _back_up(app, project, vid, 1 * GB, online)
    assert len(_threshold_events(app)) == 1  # once per crossing, quota or not
