"""What every part of a running controller shares: config, database, clock, keys.

Built once by ``controller.main`` and handed to servicers and background
jobs; tests build one over a temporary directory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cbr.clock import Clock
from controller.config import Config
from controller.keyring import Keyring
from controller.kms import ROOT_KEY_FILE, RootKey
from controller.persistence.db import Database
from controller.pki import CA_DIR
from controller.storage import VaultStorage

if TYPE_CHECKING:  # the parts above this module, set on it once built
    from controller.agents.hub import AgentHub
    from controller.jobs.audit_log import AuditLog
    from controller.jobs.maintenance import Maintenance
    from controller.jobs.notifier import Notifier
    from controller.jobs.replicator import Replicator
    from controller.jobs.scheduler import PolicyScheduler
    from controller.pki import CertificateAuthority
    from controller.services.iam import AccessKeyCache


@dataclass
class App:
    config: Config
    db: Database
    clock: Clock
    keyring: Keyring
    # host:port agents are told to dial; set once the agent endpoint is bound.
    agent_endpoint: str = ""
    # The agent hub, set by controller.main before the agent endpoint starts.
    hub: AgentHub | None = None
    # Vault maintenance, the policy loop and replication, set by build_app.
    maintenance: Maintenance | None = None
    scheduler: PolicyScheduler | None = None
    replicator: Replicator | None = None
    # The audit trail's writer, set by build_app.
    audit: AuditLog | None = None
    # Sends notification deliveries (controller.jobs.notifier), set by build_app.
    notifier: Notifier | None = None
    # Made on first use and then shared: the controller CA
    # (controller.pki.certificate_authority) and the access key
    # cache (controller.services.iam.access_key_cache).
    ca: CertificateAuthority | None = None
    access_keys: AccessKeyCache | None = None
    # The private socket the web console calls the API over (console.api);
    # "" when the console is off. Set by controller.main.
    console_socket: str = ""
    storage: VaultStorage = field(init=False)
    _api_ca_pem: str | None = field(default=None, init=False, repr=False)
    _root_key: RootKey | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.storage = VaultStorage(self.config)

    @property
    def jobs(self) -> tuple[Maintenance, PolicyScheduler, Replicator]:
        """Maintenance, the policy loop and replication of a controller that
        serves the API (build_app makes them; a bare App in a test has none)."""
        if self.maintenance is None or self.scheduler is None or self.replicator is None:
            raise RuntimeError("this App was built without its jobs (use build_app)")
        return self.maintenance, self.scheduler, self.replicator

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
        if self._api_ca_pem is not None:
            return self._api_ca_pem
        cfg = self.config
        path = cfg.data_dir / CA_DIR / "ca.crt"
        if cfg.insecure_listen or cfg.tls_cert or not path.exists():
            return ""
        # The CA lives as long as the controller: read once, not per call.
        self._api_ca_pem = pem = path.read_text()
        return pem
