"""State tests: the domain services on SQLite and on PostgreSQL."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.app import App
from controller.persistence.models import Account, Agent, Protectable
from tests.support.inproc import make_app

NOW = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
def app(tmp_path: Path, database_url: str) -> Iterator[App]:
    app = make_app(tmp_path, database_url)
    try:
        yield app
    finally:
        app.db.dispose()


@pytest.fixture
def project(app: App) -> str:
    with app.db.begin() as s:
        account = Account(name="tenant", created_at=NOW)
        s.add(account)
        s.flush()
        return account.id


class Inventory:
    """Protectables as an agent would have reported them."""

    def __init__(self, app: App, project: str) -> None:
        self.app = app
        self.project = project
        with app.db.begin() as s:
            agent = Agent(project_id=project, name="host-1", role="host",
                          certificate_fingerprint="0" * 64, enrolled_at=NOW,
                          restore_roots=["/restore"])
            s.add(agent)
            s.flush()
            self.agent_id = agent.id

    def add(self, name: str, object_type: str, tags: list[dict[str, str]] | None = None,
            project: str | None = None) -> str:
        disks = []
        if object_type == "server":
            disks = [{"id": f"{name}-sys", "name": "system", "path": f"/img/{name}-sys.img",
                      "size_bytes": 10 << 30, "system_disk": True, "device_type": "file"},
                     {"id": f"{name}-data", "name": "data", "path": f"/img/{name}-data.img",
                      "size_bytes": 20 << 30, "system_disk": False, "device_type": "file"}]
        with self.app.db.begin() as s:
            p = Protectable(project_id=project or self.project, agent_id=self.agent_id,
                            local_id=f"{object_type}:{name}", name=name,
                            object_type=object_type, size_bytes=30 << 30, disks=disks,
                            path=f"/img/{name}.img" if object_type == "disk" else "",
                            tags=tags or [], created_at=NOW, updated_at=NOW)
            s.add(p)
            s.flush()
            return p.id


@pytest.fixture
def inventory(app: App, project: str) -> Inventory:
    return Inventory(app, project)
