"""Simulated agents for the API benchmarks: ``bench.simagents`` processes and what they report.

Shared by ``scripts/bench api`` and ``scripts/bench policies``: starting the
worker processes, waiting until the controller shows every agent online
with its inventory, and reading their heartbeats and errors.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import common, controller
from cbr.client import Client
from cbr.v1 import agent_pb2, protectable_pb2


class Worker:
    """One ``bench.simagents`` process and the latest of what it reported."""

    def __init__(self, index: int, api: str, ca_file: Path, first: int, count: int,
                 run_id: str, keys: common.Keys, log_path: Path, disks: int = 1,
                 answer_backups: bool = False) -> None:
        self.index = index
        self.count = count
        env = controller.child_env()
        env[common.ENV_ACCESS_KEY] = keys.access_key
        env[common.ENV_SECRET_KEY] = keys.secret_key
        env["PYTHONPATH"] = os.pathsep.join(
            [str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
        self._stderr = open(log_path, "ab")  # noqa: SIM115 - open while the process runs
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.simagents", "--api", api, "--ca-file", str(ca_file),
             "--count", str(count),
             "--first", str(first), "--run-id", run_id, "--disks", str(disks),
             *(["--answer-backups"] if answer_backups else [])],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, env=env,
            start_new_session=True)
        controller.track(self.proc)
        self.events: dict[str, dict[str, Any]] = {}
        self._cond = threading.Condition()
        threading.Thread(target=self._read, name=f"worker-{index}", daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            with self._cond:
                self.events[str(event.get("event"))] = event
                self._cond.notify_all()
        with self._cond:
            self.events["exited"] = {"code": self.proc.wait()}
            self._cond.notify_all()

    def wait_for(self, event: str, timeout: float) -> dict[str, Any]:
        with self._cond:
            ok = self._cond.wait_for(
                lambda: event in self.events or "exited" in self.events, timeout)
            if event in self.events:
                return self.events[event]
        why = "exited" if ok else f"did not report {event!r} within {timeout:.0f} s"
        raise RuntimeError(f"agent worker {self.index} {why}; see its log")

    def latest(self, event: str) -> dict[str, Any]:
        with self._cond:
            return dict(self.events.get(event, {}))

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a few seconds; closes our end of its stdin."""
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        controller.untrack(self.proc)
        self._stderr.close()


def split(total: int, workers: int) -> list[int]:
    """Agents per worker: as even as possible, none empty."""
    workers = max(1, min(workers, total))
    base, extra = divmod(total, workers)
    return [base + (1 if i < extra else 0) for i in range(workers)]


def online_agents(client: Client) -> int:
    """How many agents the controller shows ONLINE, counted over every page."""
    count, token = 0, ""
    while True:
        response = client.agents.ListAgents(agent_pb2.ListAgentsRequest(
            status=agent_pb2.AGENT_STATUS_ONLINE, page_size=1000, page_token=token))
        count += len(response.agents)
        token = response.next_page_token
        if not token:
            return count


def wait_inventories(client: Client, want: int, timeout: float) -> float:
    """Polls until the agents' first reports are all recorded; seconds waited.

    An agent shows online as soon as its stream opens, but its first
    inventory is a write the controller has yet to do: measuring before they
    are all in would measure start-up, not agents heartbeating.
    """
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        reply = client.protectables.ListProtectables(
            protectable_pb2.ListProtectablesRequest(page_size=1))
        if reply.total_count >= want:
            break
        time.sleep(0.5)
    return time.monotonic() - started


def wait_online(client: Client, want: int, timeout: float) -> tuple[int, float]:
    """Polls until ``want`` agents are online; (how many were, seconds waited)."""
    started = time.monotonic()
    seen = 0
    while time.monotonic() - started < timeout:
        seen = online_agents(client)
        if seen >= want:
            break
        time.sleep(0.25)
    return seen, time.monotonic() - started


def heartbeats(workers: Sequence[Worker]) -> tuple[int, float]:
    """Heartbeats sent so far by all workers, and the oldest report time among them."""
    stats = [w.latest("stats") for w in workers]
    return (sum(int(s.get("heartbeats", 0)) for s in stats),
            min((float(s.get("at", 0.0)) for s in stats), default=0.0))


def worker_errors(workers: Sequence[Worker]) -> tuple[int, list[str]]:
    stats = [w.latest("stats") for w in workers]
    disconnects = sum(int(s.get("disconnects", 0)) for s in stats)
    messages = [m for s in stats for m in s.get("errors", [])]
    return disconnects, messages[:5]
