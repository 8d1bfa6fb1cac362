"""The agent hub keeps heartbeats in memory and writes them in batches."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select

from cbr.clock import FakeClock
from controller import config as config_mod
from controller.agents.hub import AgentHub
from controller.app import App
from controller.keyring import Keyring
from controller.persistence import migrate
from controller.persistence.db import Database
from controller.persistence.models import Account, Agent
from controller.services import commands


@pytest.fixture
def app(tmp_path: Path) -> Iterator[App]:
    cfg = config_mod.load(["--data-dir", str(tmp_path), "--agent-offline-after", "2"],
                          environ={})
    db = Database(f"sqlite:///{tmp_path}/controller.db")
    migrate.upgrade(db.engine)
    clock = FakeClock()
    with db.begin() as s:
        s.add(Account(id="p1", name="p", administrator=False, created_at=clock.now()))
        for i in range(50):
            s.add(Agent(id=f"a{i}", project_id="p1", name=f"h{i}", role="host",
                        certificate_fingerprint="f", enrolled_at=clock.now(), connected=True))
    yield App(config=cfg, db=db, clock=clock,
              keyring=Keyring.load_or_create(tmp_path / "master.key"))
    db.dispose()


def _count_statements(app: App) -> list[str]:
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement.split()[0].upper())

    event.listen(app.db.engine, "before_cursor_execute", record)
    return statements


def test_heartbeats_of_many_agents_are_one_batched_write(app: App) -> None:
    hub = AgentHub(app)
    hub.start()  # forgets the stale 'connected' flags of a previous run
    hub._stop.set()  # no background flushing: this test flushes by hand
    clock: FakeClock = app.clock  # type: ignore[assignment]
    with app.db.begin() as s:
        assert not any(s.scalars(select(Agent.connected)))
    streams = [hub._attach(f"a{i}", "p1") for i in range(50)]
    hub.flush()
    statements = _count_statements(app)
    for _ in range(10):  # ten heartbeats of every agent between two flushes
        clock.advance(0.5)
        for stream in streams:
            stream.last_seen = clock.time()
    hub.flush()
    assert statements.count("UPDATE") == 1  # one executemany for 50 agents
    with app.db.begin() as s:
        seen = set(s.scalars(select(Agent.last_seen_at)))
        assert seen == {dt.datetime.fromtimestamp(clock.time(), dt.UTC)}
        assert all(s.scalars(select(Agent.connected)))
    statements.clear()
    hub.flush()
    assert statements == []  # nothing new, nothing written
    hub.stop()


def test_online_follows_the_last_heartbeat_and_the_stream(app: App) -> None:
    hub = AgentHub(app)
    clock: FakeClock = app.clock  # type: ignore[assignment]
    stream = hub._attach("a1", "p1")
    assert hub.is_online("a1") and hub.online_agent_ids() == {"a1"}
    clock.advance(3)
    assert not hub.is_online("a1")
    stream.last_seen = clock.time()
    assert hub.is_online("a1")
    hub._detach(stream)
    assert not hub.is_online("a1")
    assert not hub.live_states()["a1"].connected


def test_a_second_connection_replaces_the_first(app: App) -> None:
    hub = AgentHub(app)
    first = hub._attach("a1", "p1")
    second = hub._attach("a1", "p1")
    assert first.closed.is_set() and not second.closed.is_set()
    hub._detach(first)  # the old stream ending does not disconnect the agent
    assert hub.is_online("a1") and hub.connected_count() == 1


def test_nothing_is_sent_to_an_agent_before_its_hello_is_handled(app: App) -> None:
    """A waiting task sent between a reconnect and its Hello was missing from
    that Hello, which then failed it as lost (seen in CI: a sync made while
    the agent was offline failed on its reconnect)."""
    from controller.persistence.models import Task
    from controller.services import tasks

    hub = AgentHub(app)
    hub._stop.set()
    with app.db.begin() as s:
        task_id = tasks.create_task(s, project_id="p1", operation_type="sync",
                                    now=app.clock.now(), agent_id="a1",
                                    command=commands.sync()).id
    stream = hub._attach("a1", "p1")
    assert not hub.dispatch("a1", task_id) and hub.send_waiting() == 0
    with app.db.begin() as s:
        assert s.get(Task, task_id).status == "waiting"  # type: ignore[union-attr]
    stream.greeted.set()  # what handling the Hello ends with
    hub.dispatch("a1", task_id)
    with app.db.begin() as s:
        assert s.get(Task, task_id).status == "running"  # type: ignore[union-attr]
