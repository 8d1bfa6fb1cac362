"""A controller built in this process: the real App, real gRPC on port 0.

For the state and API tests, which need the controller's rules and wire
behaviour but not separate processes. The database is whatever
``database_url`` gives (SQLite and PostgreSQL).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cbr.client import Client
from controller import config as config_mod
from controller.aioserver import LoopServer
from controller.api.server import build_public_server
from controller.app import App
from controller.main import build_app
from controller.services import iam


@dataclass
class RunningController:
    app: App
    server: LoopServer
    endpoint: str
    access_key: str
    secret_key: str
    account_id: str

    def client(self, **kwargs: object) -> Client:
        kwargs.setdefault("insecure", True)
        return Client(self.endpoint, self.access_key, self.secret_key, **kwargs)  # type: ignore[arg-type]


def make_app(tmp_path: Path, database_url: str, *extra: str) -> App:
    # Plaintext on loopback: these tests are about the API's rules and wire
    # behaviour; TLS is proven on the real processes (tests/integration).
    cfg = config_mod.load(["--data-dir", str(tmp_path / "data"), "--database-url", database_url,
                           "--listen", "127.0.0.1:0", "--agent-listen", "127.0.0.1:0",
                           "--insecure-listen", *extra], environ={})
    return build_app(cfg)


@contextmanager
def running_controller(tmp_path: Path, database_url: str, *extra: str
                       ) -> Iterator[RunningController]:
    app = make_app(tmp_path, database_url, *extra)
    server, port = build_public_server(app)
    endpoint = f"127.0.0.1:{port}"
    iam.bootstrap_admin(app.db, app.keyring, app.config.data_dir, endpoint, app.clock.now())
    server.start()
    creds = json.loads((app.config.data_dir / iam.ADMIN_CREDENTIALS_FILE).read_text())
    try:
        yield RunningController(app, server, endpoint, creds["access_key"],
                                creds["secret_key"], creds["account_id"])
    finally:
        server.stop(grace=None)
        if app.audit is not None:
            app.audit.stop()
        if app.hub is not None:
            app.hub.stop()
        app.db.dispose()
