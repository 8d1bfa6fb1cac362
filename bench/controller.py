"""A real ``cbr-controller`` process for one benchmark run, always stopped at the end.

The benchmark measures what a user runs, so it starts the venv's console
script on loopback ports (port 0: the controller picks free ones and writes
``endpoints.json`` once it serves). The process gets its own session so it and
anything it starts can be signalled as a group, and an ``atexit`` hook kills
it if the benchmark dies before its ``finally`` runs.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

START_TIMEOUT_S = 60.0

_live: set[subprocess.Popen[bytes]] = set()


def _command() -> list[str]:
    script = Path(sys.executable).parent / "cbr-controller"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "controller.main"]


def child_env() -> dict[str, str]:
    """Our environment without CBR_* settings, which the controller would read as config."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CBR_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Controller:
    """One controller on ``data_dir``; ``start()`` returns once it serves."""

    def __init__(self, data_dir: Path, *, database_url: str = "",
                 extra_args: Sequence[str] = ()) -> None:
        self.data_dir = data_dir
        self.log_path = data_dir.parent / "controller.log"
        self.database_url = database_url
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.endpoints: dict[str, Any] = {}
        self.credentials: dict[str, Any] = {}

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    @property
    def api(self) -> str:
        return str(self.endpoints["api"])

    @property
    def agent(self) -> str:
        return str(self.endpoints["agent"])

    @property
    def ca_file(self) -> Path:
        """The CA of the API's TLS certificate, which clients pin."""
        return self.data_dir / "ca" / "ca.crt"

    @property
    def ca_pem(self) -> bytes:
        return self.ca_file.read_bytes()

    def start(self) -> Controller:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = [*_command(), "--data-dir", str(self.data_dir),
                "--listen", "127.0.0.1:0", "--agent-listen", "127.0.0.1:0",
                "--metrics-listen", "127.0.0.1:0", "--console-listen", "127.0.0.1:0"]
        if self.database_url:
            argv += ["--database-url", self.database_url]
        argv += self.extra_args
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - open while the process runs
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, env=child_env(),
                                     start_new_session=True)
        _live.add(self.proc)
        endpoints_path = self.data_dir / "endpoints.json"
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
                data = json.loads(endpoints_path.read_text())
                if isinstance(data, dict) and data.get("pid") == self.proc.pid:
                    self.endpoints = data
                    break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                code = self.proc.poll()
                self.stop()
                raise RuntimeError(
                    f"cbr-controller did not start (exit code {code}); log:\n{self.log_tail()}")
            time.sleep(0.05)
        self.credentials = json.loads((self.data_dir / "admin-credentials.json").read_text())
        return self

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM to the group (a clean shutdown), SIGKILL if it lingers; idempotent."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            _signal_group(proc, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=timeout)
        _signal_group(proc, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        _live.discard(proc)
        if self._log is not None:
            self._log.close()
            self._log = None


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        if proc.poll() is None:
            proc.send_signal(sig)


def track(proc: subprocess.Popen[bytes]) -> None:
    """Adds another child (e.g. an agent worker) to the atexit safety net."""
    _live.add(proc)


def untrack(proc: subprocess.Popen[bytes]) -> None:
    _live.discard(proc)


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_live):
        with contextlib.suppress(Exception):
            _signal_group(proc, signal.SIGKILL)
