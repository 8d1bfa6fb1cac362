"""Real controller and agent processes for the multi-process tests.

The integration tests run what a user runs: the venv's ``cbr-controller`` and
``cbr-agent`` console scripts, as separate processes on loopback ports. Each
helper here owns one process and guarantees it is gone when the test ends,
whatever way the test ends: every process starts in its own session (process
group), teardown signals the whole group, and an ``atexit`` hook kills anything
still alive if pytest itself is interrupted. Output goes to a log file in the
test's tmp dir so a failure can show the tail of every process's log.

Free ports come from the controller itself: started with port 0 it binds any
free port and writes ``<data-dir>/endpoints.json`` once it serves; a restart
then reuses those ports so agents reconnect to the same address.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

import grpc

from cbr.client import Client
from cbr.client import channel as cbr_channel

T = TypeVar("T")

BIN_DIR = Path(sys.executable).parent
START_TIMEOUT = 30.0
LOG_TAIL_LINES = 80

# Every started process until it is reaped, for the atexit safety net.
_live: set[ManagedProcess] = set()


def console_script(name: str) -> Path:
    """The venv's console script ``name``; fails clearly when the project is not installed."""
    path = BIN_DIR / name
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: install the project into the venv (run scripts/test)"
        )
    return path


def wait_until(
    predicate: Callable[[], T],
    timeout: float = 30,
    interval: float = 0.1,
    message: str = "",
    *,
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Polls ``predicate`` until it returns something truthy, and returns that.

    Tests of asynchronous behaviour wait for an observable condition rather than
    sleeping a guessed time. Exceptions of the types in ``ignore`` count as "not
    yet" (e.g. ``grpc.RpcError`` while a controller restarts); the last one is
    quoted in the AssertionError raised on timeout.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            result = predicate()
        except ignore as exc:
            last_error = exc
        else:
            if result:
                return result
        if time.monotonic() >= deadline:
            detail = message or f"condition {getattr(predicate, '__name__', predicate)!r} not met"
            if last_error is not None:
                detail += f" (last error: {last_error!r})"
            raise AssertionError(f"timed out after {timeout}s: {detail}")
        time.sleep(interval)


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a child: ours without CBR_* settings, plus ``extra``.

    The controller and agent read CBR_* variables as settings, so a developer's
    own CBR_DATABASE_URL or CBR_CONFIG must not leak into a test's processes.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("CBR_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def _tail(text: str, lines: int = LOG_TAIL_LINES) -> str:
    return "\n".join(text.splitlines()[-lines:])


class ManagedProcess:
    """One child process in its own process group, logging to ``<log_dir>/<name>.log``.

    Base of the controller and agent helpers: it knows how to start a command,
    signal its whole group, and read its log; subclasses know what to run.
    """

    def __init__(self, name: str, log_dir: Path, env: Mapping[str, str] | None = None) -> None:
        self.name = name
        self.log_dir = Path(log_dir)
        self.log_path = self.log_dir / f"{name}.log"
        self._env = dict(env or {})
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._starts = 0

    # -- lifecycle -------------------------------------------------------------------------

    def _spawn(self, argv: Sequence[str]) -> subprocess.Popen[bytes]:
        """Starts ``argv`` in a new session with output appended to the log file."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._starts += 1
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - kept open while the process runs
        header = f"===== start #{self._starts}: {' '.join(map(str, argv))}\n"
        self._log.write(header.encode())
        self._log.flush()
        self._proc = subprocess.Popen(
            [str(a) for a in argv],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=child_env(self._env),
            start_new_session=True,
        )
        _live.add(self)
        return self._proc

    def stop(self, timeout: float = 10) -> int | None:
        """SIGTERM to the process group, SIGKILL if it has not exited within ``timeout``.

        Returns the exit code (None if it was never started). Graceful first so
        tests also exercise the process's own shutdown path.
        """
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._append_log(f"===== {self.name} ignored SIGTERM for {timeout}s: SIGKILL\n")
        return self._reap()

    def kill(self) -> int | None:
        """SIGKILL to the process group: a crash, with no chance to clean up."""
        if self._proc is None:
            return None
        return self._reap()

    def _reap(self) -> int | None:
        """Kills whatever is left of the group, waits for the leader, closes the log."""
        proc = self._proc
        assert proc is not None
        self._signal_group(signal.SIGKILL)
        try:
            code = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - the kernel did not deliver
            code = None
        if self._log is not None:
            self._log.close()
            self._log = None
        _live.discard(self)
        return code

    def _signal_group(self, sig: signal.Signals) -> None:
        proc = self._proc
        if proc is None:
            return
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            # The group is gone; the leader may still need the signal if it left the group.
            if proc.poll() is None:
                proc.send_signal(sig)

    def _append_log(self, text: str) -> None:
        if self._log is not None:
            self._log.write(text.encode())
            self._log.flush()

    # -- state ---------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc is not None else None

    def log_text(self) -> str:
        """Everything the process (all its starts) wrote to stdout and stderr."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return _tail(self.log_text(), lines)

    def wait_for_log(self, substring: str, timeout: float = 30) -> str:
        """Waits until ``substring`` appears in the log; fails early if the process exits."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.log_text()
            if substring in text:
                return text
            if not self.running:
                raise AssertionError(
                    f"{self.name} exited (code {self.returncode}) before logging {substring!r};"
                    f" log tail:\n{_tail(text)}"
                )
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"{self.name} did not log {substring!r} within {timeout}s;"
                    f" log tail:\n{_tail(text)}"
                )
            time.sleep(0.1)

    def close(self) -> None:
        """Final cleanup: stop the process. Subclasses release more."""
        self.stop()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} pid={self.pid} running={self.running}>"


def _port_of(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


class ControllerProcess(ManagedProcess):
    """A real ``cbr-controller`` on loopback ports, with its data dir.

    ``api_port``/``agent_port`` 0 mean "any free port"; after the first start the
    ports actually bound are remembered, so ``restart()`` comes back on the same
    address and running agents reconnect to it.
    """

    def __init__(
        self,
        data_dir: Path,
        log_dir: Path,
        *,
        database_url: str | None = None,
        extra_args: Sequence[str] = (),
        api_port: int = 0,
        agent_port: int = 0,
        name: str = "controller",
        env: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(name, log_dir, env)
        self.data_dir = Path(data_dir)
        self.database_url = database_url
        self.extra_args = list(extra_args)
        self.api_port = api_port
        self.agent_port = agent_port
        self._endpoints: dict[str, Any] | None = None
        self._clients: list[Client] = []

    @property
    def endpoints_path(self) -> Path:
        return self.data_dir / "endpoints.json"

    @property
    def credentials_path(self) -> Path:
        return self.data_dir / "admin-credentials.json"

    def command(self) -> list[str]:
        argv = [
            str(console_script("cbr-controller")),
            "--data-dir", str(self.data_dir),
            "--listen", f"127.0.0.1:{self.api_port}",
            "--agent-listen", f"127.0.0.1:{self.agent_port}",
            # Several controllers share this host: each takes a free port.
            "--metrics-listen", "127.0.0.1:0",
            "--console-listen", "127.0.0.1:0",
            # Every cloud of a test is on loopback, as in the quickstart.
            "--target-allow-local", "true",
        ]  # fmt: skip
        if self.database_url:
            argv += ["--database-url", self.database_url]
        return argv + self.extra_args

    def start(self, timeout: float = START_TIMEOUT) -> ControllerProcess:
        """Starts the controller and waits until it serves (endpoints.json with our pid)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.endpoints_path.unlink(missing_ok=True)
        self._endpoints = None
        proc = self._spawn(self.command())
        deadline = time.monotonic() + timeout
        while True:
            endpoints = self._read_endpoints()
            if endpoints is not None and endpoints.get("pid") == proc.pid:
                break
            if proc.poll() is not None:
                code = proc.returncode
                self._reap()
                raise RuntimeError(
                    f"{self.name} exited with code {code} before serving;"
                    f" log tail:\n{self.log_tail()}"
                )
            if time.monotonic() >= deadline:
                self._reap()
                raise RuntimeError(
                    f"{self.name} did not write {self.endpoints_path} within {timeout}s"
                    f" (found: {endpoints!r}); log tail:\n{self.log_tail()}"
                )
            time.sleep(0.05)
        self._endpoints = endpoints
        self.api_port = _port_of(endpoints["api"])
        self.agent_port = _port_of(endpoints["agent"])
        return self

    def _read_endpoints(self) -> dict[str, Any] | None:
        """endpoints.json, or None while it is absent or still being written."""
        try:
            data = json.loads(self.endpoints_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return data if isinstance(data, dict) else None

    def restart(self, timeout: float = START_TIMEOUT) -> ControllerProcess:
        """Graceful stop and start on the same data dir and the same ports."""
        self.stop()
        return self.start(timeout)

    @property
    def ca_pem(self) -> bytes:
        """The CA the API's TLS certificate comes from (what clients pin)."""
        return (self.data_dir / "ca" / "ca.crt").read_bytes()

    def channel(self) -> grpc.Channel:
        """An unsigned channel to the API over TLS, for raw calls."""
        return cbr_channel(self.api_endpoint, root_certificates=self.ca_pem)

    @property
    def endpoints(self) -> dict[str, Any]:
        if self._endpoints is None:
            raise RuntimeError(f"{self.name} has not been started")
        return self._endpoints

    @property
    def api_endpoint(self) -> str:
        """host:port of the public cbr.v1 API."""
        return str(self.endpoints["api"])

    @property
    def agent_endpoint(self) -> str:
        """host:port agents connect to."""
        return str(self.endpoints["agent"])

    @property
    def metrics_url(self) -> str:
        """http://host:port/metrics of the controller's Prometheus listener."""
        return str(self.endpoints["metrics"])

    @property
    def console_url(self) -> str:
        """https://host:port of the controller's web console."""
        return str(self.endpoints["console"])

    @property
    def admin_credentials(self) -> dict[str, Any]:
        """The admin AK/SK the controller wrote on its first start."""
        try:
            data = json.loads(self.credentials_path.read_text())
        except FileNotFoundError:
            raise RuntimeError(
                f"{self.credentials_path} missing: has {self.name} been started?"
            ) from None
        assert isinstance(data, dict), data
        return data

    def client(self) -> Client:
        """A signed client as the admin account; closed when this helper is closed."""
        creds = self.admin_credentials
        client = Client(self.api_endpoint, creds["access_key"], creds["secret_key"],
                        root_certificates=self.ca_pem)
        self._clients.append(client)
        return client

    def close(self) -> None:
        super().close()
        for client in self._clients:
            client.close()
        self._clients.clear()


class AgentProcess(ManagedProcess):
    """A real ``cbr-agent --config CONFIG run``; the config says which controller to use."""

    def __init__(
        self,
        config_path: Path,
        log_dir: Path,
        name: str = "agent",
        *,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(name, log_dir, env)
        self.config_path = Path(config_path)
        self.extra_args = list(extra_args)

    def command(self) -> list[str]:
        return [
            str(console_script("cbr-agent")),
            "--config", str(self.config_path),
            # Several agents share this host: each takes a free port.
            "--metrics-listen", "127.0.0.1:0",
            "run",
            *self.extra_args,
        ]  # fmt: skip

    def metrics_url(self, timeout: float = 30) -> str:
        """http://host:port/metrics of the agent's latest run, from its log."""
        text = self.wait_for_log("metrics on http://", timeout)
        return str(re.findall(r"metrics on (http://\S+/metrics)", text)[-1])

    def start(self) -> AgentProcess:
        """Starts the agent; readiness is the test's to wait for (``wait_for_log`` or the API)."""
        self._spawn(self.command())
        return self

    def restart(self) -> AgentProcess:
        self.stop()
        return self.start()


def enroll(
    config_path: Path,
    token: str,
    *,
    timeout: float = 60,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Runs ``cbr-agent --config CONFIG enroll --token TOKEN`` to completion.

    Returns the completed process (not checked) so a test can assert on the exit
    code and output of a failed enrollment too.
    """
    argv = [
        str(console_script("cbr-agent")),
        "--config", str(config_path),
        "enroll", "--token", token,
        *extra_args,
    ]  # fmt: skip
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env=child_env(env),
        check=False,
    )


class _Factory:
    """Shared bookkeeping of the factories: unique names, and closing everything made."""

    def __init__(self, base_dir: Path, registry: list[ManagedProcess] | None = None) -> None:
        self.base_dir = Path(base_dir)
        self.log_dir = self.base_dir / "logs"
        self.processes: list[ManagedProcess] = []
        self._registry = registry if registry is not None else []
        self._names: set[str] = set()

    def _unique(self, name: str) -> str:
        candidate, n = name, 1
        while candidate in self._names:
            n += 1
            candidate = f"{name}-{n}"
        self._names.add(candidate)
        return candidate

    def _track(self, process: ManagedProcess) -> None:
        self.processes.append(process)
        self._registry.append(process)

    def close(self) -> None:
        """Stops every process made, newest first, even if stopping one fails."""
        errors: list[BaseException] = []
        for process in reversed(self.processes):
            try:
                process.close()
            except BaseException as exc:  # keep cleaning up the others
                errors.append(exc)
        self.processes.clear()
        if errors:
            raise errors[0]


class ControllerFactory(_Factory):
    """Makes controllers with data dirs ``<base>/<name>`` and logs in ``<base>/logs``."""

    def __call__(
        self,
        name: str = "controller",
        *,
        database_url: str | None = None,
        extra_args: Sequence[str] = (),
        api_port: int = 0,
        agent_port: int = 0,
        env: Mapping[str, str] | None = None,
        start: bool = True,
    ) -> ControllerProcess:
        name = self._unique(name)
        controller = ControllerProcess(
            self.base_dir / name,
            self.log_dir,
            database_url=database_url,
            extra_args=extra_args,
            api_port=api_port,
            agent_port=agent_port,
            name=name,
            env=env,
        )
        self._track(controller)
        if start:
            controller.start()
        return controller


class AgentFactory(_Factory):
    """Makes agents from config files, logging to ``<base>/logs/<name>.log``."""

    def __call__(
        self,
        config_path: Path,
        name: str = "agent",
        *,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        start: bool = True,
    ) -> AgentProcess:
        agent = AgentProcess(
            config_path, self.log_dir, self._unique(name), extra_args=extra_args, env=env
        )
        self._track(agent)
        if start:
            agent.start()
        return agent


@atexit.register
def _kill_leftovers() -> None:
    """Last resort if pytest dies before teardown: no orphaned controllers or agents."""
    for process in list(_live):
        with contextlib.suppress(Exception):  # best effort at interpreter exit
            process.kill()
