"""The agent's one stream to its controller, kept open forever.

Dials the TLS agent endpoint with the client certificate from enrollment
(the controller is verified against its CA by the name it was given), sends
Hello, the latest Inventory and recent results again, then heartbeats at the
interval the controller asks for, and the Inventory again whenever a rescan
finds it changed. Commands that arrive go to the executor. After any stream
error it reconnects with exponential backoff and jitter (0.5 s doubling to
30 s, back to 0.5 s once a stream got its Welcome), logging each attempt in
one line. The host needs no open port: the agent always dials out.
"""

from __future__ import annotations

import logging
import queue
import random
import socket
import threading
import time
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from agent import inventory
from agent.commands import CommandContext
from agent.config import AgentConfig
from agent.executor import Executor, result_message
from agent.journal import Journal
from agent.state import Identity, StateDir
from cbr import __version__, limits
from cbr.clock import wall_time
from cbr.v1 import agent_pb2, agent_pb2_grpc

log = logging.getLogger("cbr.agent")

BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 30.0
DEFAULT_HEARTBEAT_S = float(limits.HEARTBEAT_INTERVAL_S)
# Results of tasks finished this recently are sent again on every connect,
# in case the controller never saw them (it ignores repeats).
RESEND_RESULTS = 20
RESEND_WITHIN_S = 3600.0

CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # Our own backoff decides when to dial again.
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 30_000),
]


def next_delay(delay: float) -> float:
    """The following backoff step: doubled, capped."""
    return min(delay * 2, BACKOFF_MAX_S)


def jittered(delay: float) -> float:
    """A sleep of between half and all of delay, so agents do not dial in lockstep."""
    return delay * (0.5 + random.random() / 2)


_WAKE = object()


class _Session:
    """The outbound side of one stream: a queue the request generator drains."""

    def __init__(self, heartbeat_s: float) -> None:
        self.outbox: queue.Queue[Any] = queue.Queue()
        self.heartbeat_s = heartbeat_s
        self.closed = threading.Event()
        self.sent_inventory = ""
        self.call: Any = None

    def set_heartbeat(self, seconds: float) -> None:
        """Changes the interval and wakes the generator so it takes effect now."""
        self.heartbeat_s = seconds
        self.outbox.put(_WAKE)

    def put(self, message: Any) -> None:
        if not self.closed.is_set():
            self.outbox.put(message)

    def close(self) -> None:
        self.closed.set()
        self.outbox.put(None)
        if self.call is not None:
            self.call.cancel()

    def requests(self, first: list[Any]) -> Any:
        yield from first
        next_beat = time.monotonic() + self.heartbeat_s
        while not self.closed.is_set():
            wait = next_beat - time.monotonic()
            if wait <= 0:
                ts = timestamp_pb2.Timestamp()
                ts.GetCurrentTime()
                yield agent_pb2.ConnectRequest(heartbeat=agent_pb2.Heartbeat(sent_at=ts))
                next_beat = time.monotonic() + self.heartbeat_s
                continue
            try:
                message = self.outbox.get(timeout=wait)
            except queue.Empty:
                continue
            if message is None:
                return
            if message is _WAKE:
                next_beat = min(next_beat, time.monotonic() + self.heartbeat_s)
                continue
            yield message


class Connection:
    def __init__(self, config: AgentConfig, state: StateDir, journal: Journal) -> None:
        self._config = config
        self._state = state
        self._journal = journal
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._session: _Session | None = None
        self._scan_lock = threading.Lock()
        self._latest: Any = None
        self._latest_digest = ""
        self._heartbeat_s = DEFAULT_HEARTBEAT_S
        self.executor = Executor(journal, self._context, self.send)
        # Importers: the grants of their ImporterService, and where it listens.
        self.grants: Any = None  # agent.importer.ImportGrants
        self._importer: Any = None  # agent.importer.ImporterServer

    # -- outbound --------------------------------------------------------------

    def send(self, message: Any) -> None:
        """Queues a message on the current stream; dropped when there is none
        (results are sent again at the next connect, inventories rescanned)."""
        with self._lock:
            if self._session is not None:
                self._session.put(message)

    def _offer_inventory(self, force: bool = False) -> None:
        with self._lock:
            session = self._session
            if session is None or self._latest is None:
                return
            if force or session.sent_inventory != self._latest_digest:
                session.sent_inventory = self._latest_digest
                session.put(agent_pb2.ConnectRequest(inventory=self._latest))

    def rescan(self) -> Any:
        with self._scan_lock:
            scanned = inventory.scan(self._config)
            digest = inventory.digest(scanned)
            with self._lock:
                self._latest, self._latest_digest = scanned, digest
            return scanned

    def _report_inventory(self) -> int:
        scanned = self.rescan()
        self._offer_inventory(force=True)
        return len(scanned.protectables)

    def _context(self, task_id: str) -> CommandContext:
        def progress(percent: int, message: str, counters: dict[str, int] | None = None) -> None:
            self.send(agent_pb2.ConnectRequest(progress=agent_pb2.CommandProgress(
                task_id=task_id, progress=percent, message=message, counters=counters or {})))

        return CommandContext(self._config, self._report_inventory, progress, task_id,
                              grants=self.grants)

    # -- life ------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            session = self._session
        if session is not None:
            session.close()

    def _scanner(self) -> None:
        while not self._stop.is_set():
            try:
                self.rescan()
                self._offer_inventory()
            except Exception:
                log.exception("rescanning the protectables failed")
            self._stop.wait(self._config.rescan_interval)

    def _start_importer(self) -> None:
        """Importers serve ImporterService before they say Hello, so the
        endpoint they report already answers."""
        from agent.importer import ImporterServer, ImportGrants  # the data path, loaded lazily

        creds = self._state.credentials()
        self.grants = ImportGrants()
        self._importer = ImporterServer(self.grants, self._config.importer_listen,
                                        key_pem=creds.key_pem,
                                        certificate_pem=creds.certificate_pem,
                                        advertise=self._config.importer_advertise)
        self._importer.start()

    def run(self) -> None:
        """Connects and reconnects until stop(); returns after a clean stop."""
        identity = self._state.identity()
        if self._config.role == "importer":
            self._start_importer()
        threading.Thread(target=self._scanner, name="rescan", daemon=True).start()
        delay = BACKOFF_INITIAL_S
        attempt = 0
        while not self._stop.is_set():
            attempt += 1
            welcomed, reason = self._connect_once(identity)
            if self._stop.is_set():
                break
            if welcomed:
                delay, attempt = BACKOFF_INITIAL_S, 1
            sleep = jittered(delay)
            log.warning("connection to %s lost (%s); reconnecting in %.1f s (attempt %d)",
                        self._endpoint(identity), reason, sleep, attempt)
            self._stop.wait(sleep)
            delay = next_delay(delay)
        # Import commands stay unfinished (never journaled as failed): the
        # controller sends them again when this importer is back.
        self.executor.wait(timeout=5)
        if self._importer is not None:
            self._importer.stop()
        log.info("stopped")

    def _endpoint(self, identity: Identity) -> str:
        return self._config.agent_endpoint or identity.agent_endpoint

    def _channel(self, identity: Identity) -> grpc.Channel:
        creds = self._state.credentials()
        credentials = grpc.ssl_channel_credentials(
            root_certificates=creds.ca_pem,
            private_key=creds.key_pem,
            certificate_chain=creds.certificate_pem,
        )
        options = [*CHANNEL_OPTIONS,
                   ("grpc.ssl_target_name_override", identity.server_name)]
        return grpc.secure_channel(self._endpoint(identity), credentials, options=options)

    def _first_messages(self, identity: Identity) -> list[Any]:
        recent = self._journal.recent(RESEND_RESULTS, wall_time() - RESEND_WITHIN_S)
        hello = agent_pb2.ConnectRequest(hello=agent_pb2.Hello(
            agent_id=identity.agent_id, version=__version__, hostname=socket.gethostname(),
            finished_task_ids=[e.task_id for e in recent],
            running_task_ids=self._journal.running(),
            importer_endpoint=self._importer.endpoint if self._importer is not None else "",
            restore_roots=self._config.effective_restore_roots,
        ))
        return [hello, *(result_message(e) for e in recent)]

    def _connect_once(self, identity: Identity) -> tuple[bool, str]:
        """One stream from dial to end: (whether it got a Welcome, why it ended)."""
        session = _Session(self._heartbeat_s)
        welcomed = False
        channel = self._channel(identity)
        try:
            stub = agent_pb2_grpc.AgentServiceStub(channel)
            call = stub.Connect(session.requests(self._first_messages(identity)))
            session.call = call
            with self._lock:
                self._session = session
            if self._stop.is_set():
                session.close()
            self._offer_inventory()
            for response in call:
                kind = response.WhichOneof("message")
                if kind == "welcome":
                    session.set_heartbeat(self._heartbeat_interval(response.welcome))
                    self._heartbeat_s = session.heartbeat_s
                    if not welcomed:
                        log.info("connected to %s as agent %s (heartbeat every %.1f s)",
                                 self._endpoint(identity), identity.agent_id,
                                 session.heartbeat_s)
                    welcomed = True
                elif kind == "command":
                    self.executor.handle(response.command)
                elif kind == "cancel":
                    self.executor.cancel(response.cancel.task_id)
                elif kind == "abort_import" and self.grants is not None \
                        and self.grants.abort(response.abort_import.import_id):
                    log.info("import %s aborted by the controller",
                                 response.abort_import.import_id)
            return welcomed, "the controller ended the stream"
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
            name = code.name if code is not None else "ERROR"
            if code == grpc.StatusCode.UNAUTHENTICATED:
                log.error("the controller refused this agent: %s", details)
            return welcomed, f"{name}: {details}"
        finally:
            with self._lock:
                if self._session is session:
                    self._session = None
            session.close()
            channel.close()

    @staticmethod
    def _heartbeat_interval(welcome: Any) -> float:
        if welcome.heartbeat_interval_ms > 0:
            return max(0.05, welcome.heartbeat_interval_ms / 1000)
        return DEFAULT_HEARTBEAT_S
