"""What every part of a running controller shares: config, database, clock, keys.

Built once by ``controller.main`` and handed to servicers and background
jobs; tests build one over a temporary directory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cbr.clock import Clock
from controller.agents.pki import CA_DIR
from controller.config import Config
from controller.keyring import Keyring
from controller.kms import ROOT_KEY_FILE, RootKey
from controller.persistence.db import Database
from controller.storage import VaultStorage


@dataclass
class App:
    config: Config
    db: Database
    clock: Clock
    keyring: Keyring
    # host:port agents are told to dial; set once the agent endpoint is bound.
    agent_endpoint: str = ""
    # The agent hub (controller.agents.hub.AgentHub), set by the wiring.
    hub: Any = None
    # Vault maintenance (controller.jobs.maintenance.Maintenance), set by build_app.
    maintenance: Any = None
    # The policy loop (controller.jobs.scheduler.PolicyScheduler), set by build_app.
    scheduler: Any = None
    # Cross-cloud replication (controller.jobs.replicator.Replicator), set by build_app.
    replicator: Any = None
    extras: dict[str, Any] = field(default_factory=dict)
    storage: VaultStorage = field(init=False)
    _root_key: RootKey | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.storage = VaultStorage(self.config)

    @property
    def root_key(self) -> RootKey:
        """The key service's root key: ``CBR_ROOT_KEY`` or ``root.key`` in the data dir.

        Loaded on first use, so a controller that never touches a key needs
        none (and tests that build an App without one keep working)."""
        if self._root_key is None:
            self._root_key = (RootKey.from_text(self.config.root_key) if self.config.root_key
                              else RootKey.load_or_create(self.config.data_dir / ROOT_KEY_FILE))
        return self._root_key

    @property
    def data_dir(self) -> Path:
        return self.config.data_dir

    @property
    def api_ca_pem(self) -> str:
        """The CA clients pin for the API: the controller's own (ca/ca.crt,
        made with the agent endpoint's), or "" when an operator's certificate
        or no TLS serves the API (then it is not ours to hand out)."""
        cached = self.extras.get("api_ca_pem")
        if cached is not None:
            return str(cached)
        cfg = self.config
        path = cfg.data_dir / CA_DIR / "ca.crt"
        if cfg.insecure_listen or cfg.tls_cert or not path.exists():
            return ""
        # The CA lives as long as the controller: read once, not per call.
        self.extras["api_ca_pem"] = pem = path.read_text()
        return pem
