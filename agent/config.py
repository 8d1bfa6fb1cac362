"""The agent's TOML configuration: loading and validation, nothing else.

A config names the agent, the controller's public endpoint (for
enrollment), the state directory, the role, and what the host protects:
servers (disks, exactly one of them the system disk), single disks (a raw
image file or a block device) and file systems (a directory). Every mistake
is reported with where it is, so a person can fix the file without guessing.
"""

from __future__ import annotations

import os
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cbr import limits
from cbr.metrics import listen_setting as metrics_listen

DEFAULT_CONFIG = "/etc/cbr/agent.toml"
DEFAULT_RESCAN_INTERVAL = 60.0
ROLES = ("host", "importer")
DEFAULT_IMPORTER_LISTEN = "127.0.0.1:7444"
DEFAULT_METRICS_LISTEN = "127.0.0.1:9465"
DEFAULT_RESTORE_DIR = "restores"


class ConfigError(Exception):
    """The configuration file is missing or wrong; the message says where and why."""


@dataclass(frozen=True)
class DiskSpec:
    name: str
    path: str
    system: bool = False


@dataclass(frozen=True)
class ServerSpec:
    name: str
    disks: tuple[DiskSpec, ...]
    tags: dict[str, str] = field(default_factory=dict)
    # argv run before the disks are snapshotted (freeze) and after (thaw).
    pre_snapshot: tuple[str, ...] = ()
    post_snapshot: tuple[str, ...] = ()
    hook_timeout: float = 60.0

    @property
    def local_id(self) -> str:
        return f"server:{self.name}"

    def disk_id(self, disk: DiskSpec) -> str:
        return f"{self.local_id}/disk:{disk.name}"


@dataclass(frozen=True)
class SingleDiskSpec:
    name: str
    path: str
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def local_id(self) -> str:
        return f"disk:{self.name}"


@dataclass(frozen=True)
class FileSystemSpec:
    name: str
    path: str
    tags: dict[str, str] = field(default_factory=dict)
    # Incrementals from the kernel's change journal (agent.dataplane.changes);
    # false: every incremental walks the whole tree, and no watch is set.
    change_journal: bool = True

    @property
    def local_id(self) -> str:
        return f"turbo:{self.name}"


@dataclass(frozen=True)
class AgentConfig:
    name: str
    controller: str
    state_dir: Path
    role: str = "host"
    # Overrides the agent endpoint the controller gave at enrollment.
    agent_endpoint: str = ""
    rescan_interval: float = DEFAULT_RESCAN_INTERVAL
    # Importers: where ImporterService listens, and the host:port source
    # agents should dial when that differs (NAT, a load balancer).
    importer_listen: str = DEFAULT_IMPORTER_LISTEN
    importer_advertise: str = ""
    # The Prometheus /metrics listener (cbr.metrics): HOST:PORT or "off".
    metrics_listen: str = DEFAULT_METRICS_LISTEN
    servers: tuple[ServerSpec, ...] = ()
    disks: tuple[SingleDiskSpec, ...] = ()
    file_systems: tuple[FileSystemSpec, ...] = ()
    source: str = ""
    # Directories a restore to a new place may write under (agent.restore_targets);
    # empty means the default, <state_dir>/restores.
    restore_roots: tuple[str, ...] = ()

    @property
    def effective_restore_roots(self) -> tuple[str, ...]:
        return self.restore_roots or (str(self.state_dir / DEFAULT_RESTORE_DIR),)


_AGENT_KEYS = {"name", "controller", "state_dir", "role", "agent_endpoint", "rescan_interval",
               "importer_listen", "importer_advertise", "restore_roots", "metrics_listen"}
_TOP_KEYS = {"agent", "servers", "disks", "file_systems"}


def _unknown(where: str, table: dict[str, Any], allowed: set[str]) -> None:
    extra = sorted(set(table) - allowed)
    if extra:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(extra)}; allowed: "
                          f"{', '.join(sorted(allowed))}")


def _str(where: str, table: dict[str, Any], key: str, *, required: bool = True,
         default: str = "") -> str:
    value = table.get(key)
    if value is None:
        if required:
            raise ConfigError(f"{where}: '{key}' is required")
        return default
    if not isinstance(value, str):
        raise ConfigError(f"{where}: '{key}' must be a string")
    return value


def _name(where: str, table: dict[str, Any]) -> str:
    name = _str(where, table, "name").strip()
    if not name or len(name) > limits.NAME_MAX_LENGTH:
        raise ConfigError(f"{where}: name must be 1 to {limits.NAME_MAX_LENGTH} characters")
    if "/" in name or ":" in name or any(ord(c) < 32 for c in name):
        raise ConfigError(f"{where}: name {name!r} must not contain '/', ':' or control "
                          "characters")
    return name


def _path(where: str, table: dict[str, Any]) -> str:
    path = _str(where, table, "path")
    if not os.path.isabs(path):
        raise ConfigError(f"{where}: path {path!r} must be absolute")
    return os.path.normpath(path)


def _roots(where: str, table: dict[str, Any]) -> tuple[str, ...]:
    value = table.get("restore_roots", [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where}: restore_roots must be a list of directories, e.g. "
                          '["/srv/restores"]')
    for root in value:
        if not os.path.isabs(root) or "\x00" in root:
            raise ConfigError(f"{where}: restore root {root!r} must be an absolute path")
    return tuple(os.path.normpath(root) for root in value)


def _metrics_listen(value: str) -> str:
    try:
        return metrics_listen(value)
    except ValueError as exc:
        raise ConfigError(f"[agent]: metrics_listen: {exc}") from None


def _argv(where: str, table: dict[str, Any], key: str) -> tuple[str, ...]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where}: {key} must be a command as a list of strings, e.g. "
                          '["/usr/sbin/fsfreeze", "--freeze", "/data"]')
    return tuple(value)


def _tags(where: str, table: dict[str, Any]) -> dict[str, str]:
    tags = table.get("tags", {})
    if not isinstance(tags, dict):
        raise ConfigError(f"{where}: tags must be a table like tags = {{ env = \"prod\" }}")
    if len(tags) > limits.TAGS_MAX:
        raise ConfigError(f"{where}: at most {limits.TAGS_MAX} tags")
    out: dict[str, str] = {}
    for key, value in tags.items():
        if not isinstance(value, str):
            raise ConfigError(f"{where}: tag {key!r} must have a string value")
        if not key or len(key) > limits.TAG_KEY_MAX_LENGTH:
            raise ConfigError(f"{where}: tag key {key!r} must be 1 to "
                              f"{limits.TAG_KEY_MAX_LENGTH} characters")
        if len(value) > limits.TAG_VALUE_MAX_LENGTH:
            raise ConfigError(f"{where}: tag {key!r}: value longer than "
                              f"{limits.TAG_VALUE_MAX_LENGTH} characters")
        out[key] = value
    return out


def _tables(where: str, value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ConfigError(f"{where} must be an array of tables ([[{where}]])")
    return value


def _unique(kind: str, names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ConfigError(f"{kind}: the name {name!r} is used twice; names must be unique")
        seen.add(name)


def parse(data: dict[str, Any], *, source: str = "", base_dir: Path | None = None) -> AgentConfig:
    """Validates a parsed TOML document into an AgentConfig (ConfigError if wrong)."""
    _unknown(source or "config", data, _TOP_KEYS)
    agent = data.get("agent")
    if not isinstance(agent, dict):
        raise ConfigError(f"{source or 'config'}: the [agent] table is required")
    _unknown("[agent]", agent, _AGENT_KEYS)
    name = _name("[agent]", {"name": agent.get("name") or socket.gethostname()})
    controller = _str("[agent]", agent, "controller", required=False)
    state_raw = _str("[agent]", agent, "state_dir")
    state_dir = Path(state_raw).expanduser()
    if not state_dir.is_absolute():
        state_dir = (base_dir or Path.cwd()) / state_dir
    role = _str("[agent]", agent, "role", required=False, default="host")
    if role not in ROLES:
        raise ConfigError(f"[agent]: role must be one of {', '.join(ROLES)}; got {role!r}")
    rescan = agent.get("rescan_interval", DEFAULT_RESCAN_INTERVAL)
    if not isinstance(rescan, int | float) or isinstance(rescan, bool) or rescan <= 0:
        raise ConfigError("[agent]: rescan_interval must be a positive number of seconds")

    servers: list[ServerSpec] = []
    for i, table in enumerate(_tables("servers", data.get("servers", []))):
        where = f"servers[{i}]"
        _unknown(where, table, {"name", "disks", "tags", "pre_snapshot", "post_snapshot",
                                "hook_timeout"})
        sname = _name(where, table)
        hooks = {key: _argv(f"server {sname!r}", table, key)
                 for key in ("pre_snapshot", "post_snapshot")}
        hook_timeout = table.get("hook_timeout", 60.0)
        if (not isinstance(hook_timeout, int | float) or isinstance(hook_timeout, bool)
                or hook_timeout <= 0):
            raise ConfigError(f"server {sname!r}: hook_timeout must be a positive number of "
                              "seconds")
        where = f"server {sname!r}"
        disks: list[DiskSpec] = []
        for j, dt in enumerate(_tables(f"{where}: disks", table.get("disks", []))):
            dwhere = f"{where}: disks[{j}]"
            _unknown(dwhere, dt, {"name", "path", "system"})
            system = dt.get("system", False)
            if not isinstance(system, bool):
                raise ConfigError(f"{dwhere}: system must be true or false")
            disks.append(DiskSpec(_name(dwhere, dt), _path(dwhere, dt), system))
        if not disks:
            raise ConfigError(f"{where}: a server needs at least one disk ([[servers.disks]])")
        n_system = sum(d.system for d in disks)
        if n_system != 1:
            raise ConfigError(f"{where}: exactly one disk must have system = true; found "
                              f"{n_system}")
        _unique(f"{where}: disks", [d.name for d in disks])
        servers.append(ServerSpec(sname, tuple(disks), _tags(where, table),
                                  hooks["pre_snapshot"], hooks["post_snapshot"],
                                  float(hook_timeout)))

    single: list[SingleDiskSpec] = []
    for i, table in enumerate(_tables("disks", data.get("disks", []))):
        where = f"disks[{i}]"
        _unknown(where, table, {"name", "path", "tags"})
        single.append(SingleDiskSpec(_name(where, table), _path(where, table),
                                     _tags(where, table)))

    file_systems: list[FileSystemSpec] = []
    for i, table in enumerate(_tables("file_systems", data.get("file_systems", []))):
        where = f"file_systems[{i}]"
        _unknown(where, table, {"name", "path", "tags", "change_journal"})
        journal = table.get("change_journal", True)
        if not isinstance(journal, bool):
            raise ConfigError(f"{where}: change_journal must be true or false")
        file_systems.append(FileSystemSpec(_name(where, table), _path(where, table),
                                           _tags(where, table), journal))

    _unique("servers", [s.name for s in servers])
    _unique("disks", [d.name for d in single])
    _unique("file_systems", [f.name for f in file_systems])
    device_paths = [d.path for s in servers for d in s.disks] + [d.path for d in single]
    seen: set[str] = set()
    for path in device_paths:
        if path in seen:
            raise ConfigError(f"the disk path {path} is configured twice; a disk belongs to "
                              "one server or is one single disk")
        seen.add(path)

    return AgentConfig(
        name=name,
        controller=controller,
        state_dir=state_dir,
        role=role,
        importer_listen=_str("[agent]", agent, "importer_listen", required=False,
                             default=DEFAULT_IMPORTER_LISTEN),
        importer_advertise=_str("[agent]", agent, "importer_advertise", required=False),
        metrics_listen=_metrics_listen(_str("[agent]", agent, "metrics_listen", required=False,
                                            default=DEFAULT_METRICS_LISTEN)),
        agent_endpoint=_str("[agent]", agent, "agent_endpoint", required=False),
        rescan_interval=float(rescan),
        restore_roots=_roots("[agent]", agent),
        servers=tuple(servers),
        disks=tuple(single),
        file_systems=tuple(file_systems),
        source=source,
    )


def load(path: str | Path) -> AgentConfig:
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse(data, source=str(path), base_dir=path.resolve().parent)
