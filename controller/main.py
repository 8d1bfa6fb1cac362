"""``cbr-controller``: wires configuration to the state, the servers and the hub.

Start order matters: migrate the schema, create the administrator on first
start, bind both listeners, then announce the endpoints (endpoints.json) only
once everything serves, so whoever waits for that file can call at once.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import shutil
import signal
import socket
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy
import sqlalchemy.exc

from cbr import logs, private, tls
from cbr import metrics as cbr_metrics
from cbr.clock import SystemClock
from controller import config as config_mod
from controller.api.server import build_public_server
from controller.app import App
from controller.keyring import Keyring
from controller.kms import ROOT_KEY_FILE, RootKeyError
from controller.persistence import migrate
from controller.persistence.db import Database
from controller.pki import CA_DIR
from controller.services import iam, vaults
from controller.storage import Place

if TYPE_CHECKING:
    from console.server import ConsoleServer

log = logging.getLogger("cbr.controller")

ENDPOINTS_FILE = "endpoints.json"


def _advertised(listen: str, port: int) -> str:
    host = listen.rpartition(":")[0].strip("[]")
    if host in ("", "0.0.0.0", "::"):
        host = socket.gethostname()
    return f"{host}:{port}"


def _write_json_atomic(path: Path, payload: dict[str, object], mode: int = 0o644) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as fh:
        json.dump(payload, fh, indent=2)
        fh.write("\n")
    os.replace(tmp, path)


def _make_private(cfg: config_mod.Config) -> None:
    """Closes up the data dir (catalog, keys, CA, credentials), and makes a
    new SQLite file 0600 before SQLite does (its WAL and shared-memory files
    take that file's mode)."""
    cfg.data_dir.mkdir(parents=True, exist_ok=True, mode=private.PRIVATE_DIR)
    private.close_up_own(
        cfg.data_dir, ["controller.db", "controller.db-wal", "controller.db-shm",
                       "master.key", ROOT_KEY_FILE, iam.ADMIN_CREDENTIALS_FILE,
                       ENDPOINTS_FILE, "storage"], [CA_DIR], log)
    url = sqlalchemy.engine.make_url(cfg.effective_database_url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        path = Path(url.database)
        if not path.exists():
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                             private.PRIVATE_FILE))


def build_app(cfg: config_mod.Config) -> App:
    _make_private(cfg)
    if not cfg.storage_url:  # the default storage is ours to make; an operator's is not
        (cfg.data_dir / "storage").mkdir(mode=private.PRIVATE_DIR, exist_ok=True)
    db = Database(cfg.effective_database_url)
    migrate.upgrade(db.engine)
    # Each local vault's directory is closed up, not the operator's roots
    # (which may be shared directories such as /srv).
    with db.begin() as session:
        for url in vaults.storage_urls(session):
            if url.startswith("/") or url.startswith("file:"):
                private.close_up(Path(Place.of(url).path), log)
    keyring = Keyring.load_or_create(cfg.data_dir / "master.key")
    app = App(config=cfg, db=db, clock=SystemClock(), keyring=keyring)
    _ = app.root_key  # refuse to start with a malformed or world-readable root key
    from controller.jobs.maintenance import Maintenance

    app.maintenance = Maintenance(app)
    from controller.jobs.scheduler import PolicyScheduler

    app.scheduler = PolicyScheduler(app)
    from controller.jobs.replicator import Replicator

    app.replicator = Replicator(app)
    from controller.jobs.audit_log import AuditLog

    app.audit = AuditLog(app)
    from controller.jobs.notifier import Notifier

    app.notifier = Notifier(app)
    return app


def _console_dir(cfg: config_mod.Config) -> Path | None:
    """A private directory for the socket the console calls the API over:
    under /tmp, not the data dir, since a socket's path has at most 107
    bytes; mode 0700, so only this process's user can connect."""
    if cbr_metrics.parse_listen(cfg.console_listen) is None:
        return None
    return Path(tempfile.mkdtemp(prefix="cbr-console-"))


def _start_console(app: App, workdir: Path | None) -> ConsoleServer | None:
    if workdir is None:
        return None
    from console.server import ConsoleServer

    console = ConsoleServer(app, workdir)
    console.start()
    log.info("web console on %s", console.url)
    return console


def run(cfg: config_mod.Config, stop: threading.Event) -> None:
    console_dir = _console_dir(cfg)
    try:
        _serve(cfg, stop, console_dir)
    finally:
        if console_dir is not None:
            shutil.rmtree(console_dir, ignore_errors=True)


def _serve(cfg: config_mod.Config, stop: threading.Event, console_dir: Path | None) -> None:
    app = build_app(cfg)
    (cfg.data_dir / ENDPOINTS_FILE).unlink(missing_ok=True)
    from controller.metrics import collector

    metrics = collector.start(app)
    if console_dir is not None:
        app.console_socket = str(console_dir / "api.sock")
    public, api_port = build_public_server(app)
    from controller import jobs
    from controller.agents import wiring
    from controller.agents.hub import AgentHub

    app.hub = AgentHub(app)
    jobs.install(app.hub, app)
    app.hub.start()
    agent_endpoint, agent_port = wiring.start_agent_endpoint(app)
    api_endpoint = _advertised(cfg.listen, api_port)
    ca_pem = app.api_ca_pem
    iam.bootstrap_admin(app.db, app.keyring, cfg.data_dir, api_endpoint, app.clock.now(),
                        ca_pem=ca_pem)
    public.start()
    console = _start_console(app, console_dir)
    maintenance, scheduler, replicator = app.jobs
    maintenance.start()
    scheduler.start()
    replicator.start()
    if app.notifier is not None:
        app.notifier.start()
    # Everything built so far lives as long as the process; keep it out of the
    # collector's way, so a full collection does not pause every call.
    gc.freeze()
    ca_sha256 = tls.fingerprint(ca_pem) if ca_pem else ""
    _write_json_atomic(cfg.data_dir / ENDPOINTS_FILE, {
        "api": api_endpoint, "agent": app.agent_endpoint or f"127.0.0.1:{agent_port}",
        "tls": not cfg.insecure_listen, "ca_sha256": ca_sha256, "pid": os.getpid(),
        "metrics": metrics.url, "console": console.url if console else ""})
    log.info("serving cbr.v1 on %s (%s; agents on %s), cloud %s region %s, state %s",
             api_endpoint, "PLAINTEXT" if cfg.insecure_listen else
             f"TLS, CA sha256 {ca_sha256 or 'of the operator'}", app.agent_endpoint,
             cfg.cloud_name, cfg.region, app.db.engine.url.render_as_string(hide_password=True))
    stop.wait()
    log.info("stopping")
    if console is not None:
        console.stop()
    scheduler.stop()
    replicator.stop()
    if app.notifier is not None:
        app.notifier.stop()
    public.stop(grace=5)
    if app.audit is not None:
        app.audit.stop()
    agent_endpoint.stop()
    if app.hub is not None:
        app.hub.stop()
    maintenance.stop()
    metrics.stop()
    app.db.dispose()
    (cfg.data_dir / ENDPOINTS_FILE).unlink(missing_ok=True)


def main(argv: Sequence[str] | None = None) -> int:
    # Whatever this process creates is its own (cbr.private).
    os.umask(0o077)
    cfg = config_mod.load(argv)
    logs.configure("cbr-controller", cfg.log_level, cfg.log_format)
    logs.route_native_stderr()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        run(cfg, stop)
    except (OSError, RootKeyError) as exc:
        log.error("cannot start: %s", exc)
        return 2
    except sqlalchemy.exc.OperationalError as exc:
        log.error("cannot start: the state database %s is not usable: %s",
                  sqlalchemy.engine.make_url(cfg.effective_database_url)
                  .render_as_string(hide_password=True), exc.orig)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
