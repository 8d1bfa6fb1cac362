"""Controller configuration: flags, then environment, then a TOML file, then defaults.

Each setting is declared once in SETTINGS with its flag, environment
variable, TOML key, default and help; ``cbr-controller --help`` is built from
the same table, so the documentation cannot drift from the code.
"""

from __future__ import annotations

import argparse
import os
import sys
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from cbr import logs
from cbr import metrics as cbr_metrics


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    help: str
    parse: Callable[[str], Any] = str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return "CBR_" + self.name.upper()


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError(f"{text!r} is not a positive number")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"{text!r} is not a positive whole number")
    return value


def _regions(text: str) -> tuple[tuple[str, bool], ...]:
    """'r1,r2:noreplication' -> (('r1', True), ('r2', False))."""
    out = []
    for item in filter(None, (p.strip() for p in text.split(","))):
        rid, _, flag = item.partition(":")
        if flag not in ("", "noreplication"):
            raise ValueError(f"region {item!r}: the only flag is ':noreplication'")
        out.append((rid, flag != "noreplication"))
    return tuple(out)


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value not in ("true", "false", "1", "0", "yes", "no"):
        raise ValueError(f"{text!r} is not true or false")
    return value in ("true", "1", "yes")


def _list(text: str) -> tuple[str, ...]:
    return tuple(filter(None, (p.strip() for p in text.split(","))))


SETTINGS: tuple[Setting, ...] = (
    Setting("data_dir", "./cbr-data", "Directory of the controller's own files: SQLite "
            "database, CA, master key, admin-credentials.json."),
    Setting("database_url", "", "SQLAlchemy URL of the state database, e.g. "
            "postgresql://user@host/db. Default: SQLite in the data dir."),
    Setting("listen", "127.0.0.1:7400", "HOST:PORT of the public cbr.v1 API (signed calls, "
            "reflection, health). Port 0 picks a free port."),
    Setting("insecure_listen", False, "Serve the API in plaintext, without TLS: only for a "
            "development controller, and only on a loopback --listen address.", _bool),
    Setting("tls_cert", "", "PEM certificate chain of the API (an operator's). Default: a "
            "certificate for the name cbr-controller from the controller's own CA (ca/ca.crt "
            "in the data dir, which clients pin)."),
    Setting("tls_key", "", "PEM private key of tls_cert."),
    Setting("max_streams", 4096, "Long-lived API streams (task and health watches, "
            "reflection) open at once; more are refused with RESOURCE_EXHAUSTED.", int),
    Setting("max_streams_per_peer", 2048, "Of those, how many one client address may hold.",
            int),
    Setting("api_threads", 32, "Threads that run API calls; long-lived streams wait on the "
            "event loop and hold none.", int),
    Setting("agent_listen", "127.0.0.1:7401", "HOST:PORT of the TLS endpoint agents connect "
            "to. Use 0.0.0.0:PORT for agents on other hosts."),
    Setting("agent_advertise", "", "HOST:PORT agents are told to connect to. Default: the "
            "agent endpoint's bound address."),
    Setting("metrics_listen", "127.0.0.1:9464", "HOST:PORT of the Prometheus /metrics "
            "listener (plain HTTP), 'off' for none. Port 0 picks a free port (the address is "
            "logged).", cbr_metrics.listen_setting),
    Setting("console_listen", "127.0.0.1:7402", "HOST:PORT of the web console (HTTPS with "
            "the API's certificate; plain HTTP only with insecure_listen), 'off' for none. "
            "Port 0 picks a free port (the address is logged and in endpoints.json).",
            cbr_metrics.listen_setting),
    Setting("cloud_name", "cbr-cloud", "Name of this cloud, as replication credentials name it."),
    Setting("region", "region-1", "The region this controller serves."),
    Setting("regions", "", "Comma-separated regions of this cloud; append ':noreplication' "
            "to a region that does not accept replicas. Default: the region alone.",
            _regions),
    Setting("heartbeat_interval", 5.0, "Seconds between agent heartbeats.", float),
    Setting("agent_offline_after", 15.0, "Seconds without a heartbeat after which an agent "
            "shows as offline.", float),
    Setting("log_level", "INFO", "DEBUG, INFO, WARNING or ERROR."),
    Setting("log_format", "text", "text (for people) or json (one object per line, for log "
            "shippers).", logs.log_format),
    Setting("storage_url", "", "Where new vaults keep their data; each vault gets the "
            "vault id appended: /abs/dir, file:///abs/dir or s3://bucket/prefix?endpoint=URL. "
            "Agents must reach it too. Default: the storage dir inside the data dir."),
    Setting("storage_roots", (), "Comma-separated places where vault storage may live: "
            "directories and s3://bucket/prefix?endpoint=URL. A vault's --storage-url and "
            "import-storage must lie inside one, never inside another vault's storage or "
            "the data dir. Default: storage_url alone (or the storage dir in the data dir).",
            _list),
    Setting("storage_access_key", "", "S3 access key for storage_url (given to agents with "
            "each command, never stored in the database)."),
    Setting("storage_secret_key", "", "S3 secret key for storage_url. Prefer the environment "
            "variable to a flag, which other users can see."),
    Setting("target_allow_local", False, "Allow tenants' replication targets, webhooks and "
            "mail servers on loopback or link-local addresses (a development machine, the "
            "quickstart). Off: a tenant cannot make this controller connect to its own "
            "host's services or a cloud's metadata service.", _bool),
    Setting("scheduler_lease", 15.0, "Seconds a controller's lead of the policy loop lasts "
            "unless renewed; among controllers sharing a database another takes over within "
            "this and a third of it more.", float),
    Setting("scheduler_tick", 0.0, "Tests only: when > 0, every backup policy runs every "
            "this many seconds instead of by its trigger rules.", float),
    Setting("replication_retry", 600.0, "Seconds a replication transfer keeps reconnecting to "
            "the target's importer (a cut connection, an importer or target restart) before "
            "it fails.", float),
    Setting("import_ttl", 24.0, "Hours a replication into this cloud may take from its "
            "start to its commit; an import not committed by then fails and its grant is "
            "forgotten. Raise it for first replications of large backups over slow links.",
            _positive),
    Setting("audit_retention_days", 90, "Days the audit trail keeps each record.",
            _positive_int),
    Setting("notification_poll", 5.0, "Seconds between the notifier's looks for due "
            "notification deliveries (a new event's are sent at once by the controller "
            "that recorded it).", _positive),
    Setting("notification_backoff", 30.0, "Seconds before a failed notification delivery is "
            "tried again; doubled after each failure (with jitter), at most an hour.",
            _positive),
    Setting("notification_attempts", 8, "Attempts after which a notification delivery that "
            "keeps failing is given up (status failed).", int),
    Setting("agent_offline_notify", 10.0, "Minutes an agent may go unheard before an "
            "agent.offline event is recorded (one per offline period).", _positive),
    Setting("root_key", "", "Base64 of the 32-byte root key that seals the key service's "
            "master keys. Give it by the environment variable, never a flag. Default: "
            "root.key in the data dir (mode 0600, made on first start)."),
)


@dataclass(frozen=True)
class Config:
    data_dir: Path
    database_url: str
    listen: str
    agent_listen: str
    agent_advertise: str
    cloud_name: str
    region: str
    regions: tuple[tuple[str, bool], ...]
    heartbeat_interval: float
    agent_offline_after: float
    log_level: str
    log_format: str
    insecure_listen: bool = False
    metrics_listen: str = "127.0.0.1:9464"
    console_listen: str = "127.0.0.1:7402"
    max_streams: int = 4096
    max_streams_per_peer: int = 2048
    api_threads: int = 32
    tls_cert: str = ""
    tls_key: str = ""
    storage_url: str = ""
    storage_roots: tuple[str, ...] = ()
    storage_access_key: str = ""
    storage_secret_key: str = ""
    root_key: str = ""
    target_allow_local: bool = False
    scheduler_lease: float = 15.0
    scheduler_tick: float = 0.0
    replication_retry: float = 600.0
    import_ttl: float = 24.0
    audit_retention_days: int = 90
    notification_poll: float = 5.0
    notification_backoff: float = 30.0
    notification_attempts: int = 8
    agent_offline_notify: float = 10.0
    sources: Mapping[str, str] = field(default_factory=dict)

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir.resolve() / 'controller.db'}"

    @property
    def effective_storage_url(self) -> str:
        return self.storage_url or str((self.data_dir / "storage").resolve())

    @property
    def effective_storage_roots(self) -> tuple[str, ...]:
        return self.storage_roots or (self.effective_storage_url,)

    @property
    def all_regions(self) -> tuple[tuple[str, bool], ...]:
        if any(r == self.region for r, _ in self.regions):
            return self.regions
        return ((self.region, True), *self.regions)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cbr-controller",
        description="The CBR controller: vaults, resources, policies, IAM, tasks and the "
        "cbr.v1 gRPC API of one cloud. Every setting comes from a flag, else the "
        "environment variable shown, else the TOML file (--config, keys as below without "
        "dashes), else the default.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", metavar="FILE", help="TOML file of settings (env CBR_CONFIG).")
    for s in SETTINGS:
        # A true/false setting given as a bare flag means true.
        extra: dict[str, Any] = {"nargs": "?", "const": "true"} if s.parse is _bool else {}
        p.add_argument(s.flag, dest=s.name, default=None, metavar=s.name.upper(),
                       help=f"{s.help} [env {s.env}; toml {s.name}; default {s.default!r}]",
                       **extra)
    return p


# Settings an older version took, which a config file may still hold: a
# warning, not a refusal to start, says what took their place.
RETIRED = {
    "scheduler_grace": "each policy's start_window_minutes says how late a run may start",
}


def _fail(message: str) -> NoReturn:
    """One line on stderr and exit status 2, as argparse does for bad usage."""
    print(f"cbr-controller: {message}", file=sys.stderr)
    raise SystemExit(2)


def load(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Config:
    env = os.environ if environ is None else environ
    args = parser().parse_args(argv)
    file_values: dict[str, Any] = {}
    config_path = args.config or env.get("CBR_CONFIG")
    if config_path:
        try:
            with open(config_path, "rb") as fh:
                file_values = tomllib.load(fh)
        except OSError as exc:
            _fail(f"cannot read the config file {config_path}: {exc.strerror or exc}")
        except tomllib.TOMLDecodeError as exc:
            _fail(f"the config file {config_path} is not valid TOML: {exc}")
        for name in sorted(set(file_values) & set(RETIRED)):
            print(f"cbr-controller: {config_path}: {name} is no longer used; "
                  f"{RETIRED[name]}", file=sys.stderr)
            del file_values[name]
        unknown = set(file_values) - {s.name for s in SETTINGS}
        if unknown:
            _fail(f"unknown settings in {config_path}: {', '.join(sorted(unknown))}")
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for s in SETTINGS:
        raw: Any
        if getattr(args, s.name) is not None:
            raw, sources[s.name] = getattr(args, s.name), "flag"
        elif s.env in env:
            raw, sources[s.name] = env[s.env], "env"
        elif s.name in file_values:
            raw, sources[s.name] = file_values[s.name], "file"
        else:
            raw, sources[s.name] = s.default, "default"
        try:
            if isinstance(raw, list):
                raw = ",".join(raw)
            values[s.name] = s.parse(raw) if isinstance(raw, str) else raw
        except ValueError as exc:
            _fail(f"bad value for {s.name}: {exc}")
    values["data_dir"] = Path(values["data_dir"])
    return Config(**values, sources=sources)
