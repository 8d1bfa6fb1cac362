"""The task journal: which task ids this agent has run, and their results.

One small JSON file per finished task under ``<state_dir>/journal``, written
to a temporary file, fsynced and renamed into place (then the directory
fsynced), so after a crash an entry is either whole or absent. A command
whose task id has an entry is never run again; its stored result is sent
instead. In memory the journal also knows which task ids are running now,
so a command delivered twice at once runs once.

An entry keeps the command's typed result as proto3 JSON (``result``), so a
result sent again is the very message sent the first time. An entry of an
older agent (its figures in ``extra_info``) reads with no typed result: the
controller then treats the task as not understood, never as done.
"""

from __future__ import annotations

import json
import os
import re
import threading
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from cbr.clock import wall_time

_SAFE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# Entries older than this are dropped at start; the controller finished them long ago.
RETENTION_SECONDS = 30 * 24 * 3600


@dataclass(frozen=True)
class Entry:
    task_id: str
    action: str
    success: bool
    error_code: str = ""
    error_message: str = ""
    # The typed result (``SyncResult``, ``BackupResult``, ...) as proto3 JSON.
    result: dict[str, Any] = field(default_factory=dict)
    finished_at: float = 0.0

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Entry:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class Journal:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._running: set[str] = set()
        self._prune()

    @staticmethod
    def valid_id(task_id: str) -> bool:
        return bool(_SAFE_ID.match(task_id))

    def _path(self, task_id: str) -> Path:
        if not self.valid_id(task_id):
            raise ValueError(f"task id {task_id!r} is not a journal-safe id")
        return self.directory / f"{task_id}.json"

    def get(self, task_id: str) -> Entry | None:
        try:
            data: dict[str, Any] = json.loads(self._path(task_id).read_text())
        except FileNotFoundError:
            return None
        return Entry.from_json(data)

    def begin(self, task_id: str) -> bool:
        """Claims a task id for running: False if it finished or is running now."""
        with self._lock:
            if task_id in self._running or self._path(task_id).exists():
                return False
            self._running.add(task_id)
            return True

    def running(self) -> list[str]:
        """Task ids running now in this process."""
        with self._lock:
            return sorted(self._running)

    def abandon(self, task_id: str) -> None:
        with self._lock:
            self._running.discard(task_id)

    def finish(self, entry: Entry) -> Entry:
        """Records a result durably, then releases the claim."""
        if not entry.finished_at:
            entry = Entry(**{**asdict(entry), "finished_at": wall_time()})
        path = self._path(entry.task_id)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w") as fh:
            json.dump(asdict(entry), fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        self._fsync_dir()
        with self._lock:
            self._running.discard(entry.task_id)
        return entry

    def _fsync_dir(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def recent(self, limit: int, since: float) -> list[Entry]:
        """The newest finished entries (at most limit) finished after since."""
        entries = []
        for path in self.directory.glob("*.json"):
            try:
                entry = Entry.from_json(json.loads(path.read_text()))
            except (OSError, ValueError, TypeError):
                continue
            if entry.finished_at >= since:
                entries.append(entry)
        entries.sort(key=lambda e: e.finished_at, reverse=True)
        return entries[:limit]

    def _prune(self) -> None:
        cutoff = wall_time() - RETENTION_SECONDS
        for path in self.directory.iterdir():
            try:
                if path.suffix == ".tmp" or (path.suffix == ".json"
                                             and path.stat().st_mtime < cutoff):
                    path.unlink()
            except OSError:
                continue
