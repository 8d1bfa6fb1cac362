"""The agent's state directory: its key, certificate, CA and identity.

Layout under ``state_dir``: ``agent.key`` (0600, made here, never leaves the
host), ``agent.crt`` (issued by the controller), ``ca.crt`` (the controller
CA, checked against the token at enrollment), ``identity.json`` (agent id,
agent endpoint, server name; written last, so its presence means enrolled)
and ``journal/``.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from cbr import private

log = logging.getLogger("cbr.agent")

KEY_FILE = "agent.key"
CERT_FILE = "agent.crt"
CA_FILE = "ca.crt"
IDENTITY_FILE = "identity.json"
JOURNAL_DIR = "journal"


@dataclass(frozen=True)
class Identity:
    agent_id: str
    agent_endpoint: str
    server_name: str
    controller: str
    name: str
    enrolled_at: str


@dataclass(frozen=True)
class Credentials:
    key_pem: bytes
    certificate_pem: bytes
    ca_pem: bytes


def write_file(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Atomically replaces path with data (fsync, rename, fsync directory)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class StateDir:
    def __init__(self, path: Path) -> None:
        self.path = path

    def ensure(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True, mode=private.PRIVATE_DIR)
        private.close_up_own(self.path, [KEY_FILE, CERT_FILE, CA_FILE, IDENTITY_FILE],
                             [JOURNAL_DIR], log)

    @property
    def journal_dir(self) -> Path:
        return self.path / JOURNAL_DIR

    def enrolled(self) -> bool:
        return (self.path / IDENTITY_FILE).exists()

    def identity(self) -> Identity:
        data = json.loads((self.path / IDENTITY_FILE).read_text())
        return Identity(**data)

    def credentials(self) -> Credentials:
        return Credentials(
            (self.path / KEY_FILE).read_bytes(),
            (self.path / CERT_FILE).read_bytes(),
            (self.path / CA_FILE).read_bytes(),
        )

    def save(self, identity: Identity, credentials: Credentials) -> None:
        self.ensure()
        write_file(self.path / KEY_FILE, credentials.key_pem, 0o600)
        write_file(self.path / CERT_FILE, credentials.certificate_pem)
        write_file(self.path / CA_FILE, credentials.ca_pem)
        write_file(self.path / IDENTITY_FILE,
                   (json.dumps(asdict(identity), indent=2) + "\n").encode())
