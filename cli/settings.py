"""Where the CLI's settings come from, in one order everywhere: flags, then
the environment, then the profile that `cbr configure` writes; and the
CLI's own errors."""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_PROFILE = "default"
# Unary calls get this deadline unless --timeout says otherwise, so that a
# wedged controller cannot hang a script forever.
DEFAULT_TIMEOUT_S = 60.0

ENV_ENDPOINT = "CBR_ENDPOINT"
ENV_ACCESS_KEY = "CBR_ACCESS_KEY"
ENV_SECRET_KEY = "CBR_SECRET_KEY"
ENV_PROFILE = "CBR_PROFILE"
ENV_CA_FILE = "CBR_CA_FILE"
ENV_INSECURE = "CBR_INSECURE"
ENV_CONFIG_DIR = "CBR_CONFIG_DIR"

PROFILE_KEYS = ("endpoint", "access_key", "secret_key", "ca_file", "server_name", "insecure",
                "account_id")


class CliError(Exception):
    """A failure of the command line itself (exit 2), not of the controller."""

    exit_code = 2


class ConfigError(CliError):
    """Settings are missing or unreadable; the message says how to fix them."""


class UsageError(CliError):
    """Arguments parse but do not make a request (for example nothing to update)."""


# -- settings and profiles ----------------------------------------------------


def config_path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    base = env.get(ENV_CONFIG_DIR)
    if base:
        return Path(base) / "config.toml"
    return Path.home() / ".config" / "cbr" / "config.toml"


def load_profiles(path: Path) -> dict[str, dict[str, str]]:
    """Every profile of the file; a missing file has none."""
    try:
        with path.open("rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    profiles = doc.get("profiles", {})
    if not isinstance(profiles, dict):
        raise ConfigError(f"cannot read {path}: 'profiles' is not a table")
    out: dict[str, dict[str, str]] = {}
    for name, values in profiles.items():
        if isinstance(values, dict):
            out[name] = {str(k): str(v) for k, v in values.items()}
    return out


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_string(value: str) -> str:
    """A TOML basic string: JSON's escaping is a valid subset of TOML's."""
    return json.dumps(value, ensure_ascii=False)


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else _toml_string(key)


def render_profiles(profiles: Mapping[str, Mapping[str, str]]) -> str:
    lines = ["# Written by `cbr configure`. Holds secret keys: keep it mode 0600.", ""]
    for name in sorted(profiles):
        lines.append(f"[profiles.{_toml_key(name)}]")
        for key, value in profiles[name].items():
            lines.append(f"{_toml_key(key)} = {_toml_string(value)}")
        lines.append("")
    return "\n".join(lines)


def save_profiles(path: Path, profiles: Mapping[str, Mapping[str, str]]) -> None:
    """Replaces the file atomically; it is never readable by others, even briefly."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=".config.", suffix=".toml", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(render_profiles(profiles))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class Settings:
    profile: str
    endpoint: str
    access_key: str
    secret_key: str
    ca_file: str = ""
    # The name the API's certificate is verified by (cbr.tls.SERVER_NAME
    # unless the operator's certificate names the controller otherwise).
    server_name: str = ""
    # Plaintext, for a development controller with insecure_listen.
    insecure: str = ""
    # Where each value came from, for error messages.
    sources: Mapping[str, str] = field(default_factory=dict)

    def require(self) -> None:
        missing = [
            flag
            for flag, value in (
                ("--endpoint", self.endpoint),
                ("--access-key", self.access_key),
                ("--secret-key", self.secret_key),
            )
            if not value
        ]
        if missing:
            raise ConfigError(
                f"no {', '.join(m.lstrip('-') for m in missing)} configured for profile "
                f"'{self.profile}'; run `cbr configure` (or pass {' '.join(missing)}, "
                f"or set {ENV_ENDPOINT}/{ENV_ACCESS_KEY}/{ENV_SECRET_KEY})"
            )


def resolve_settings(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> Settings:
    """Flags win over the environment, which wins over the profile file."""
    env = os.environ if env is None else env
    explicit_profile = getattr(args, "profile", None) or env.get(ENV_PROFILE)
    profile = explicit_profile or DEFAULT_PROFILE
    path = config_path(env)
    profiles = load_profiles(path)
    if explicit_profile and profile not in profiles and profile != DEFAULT_PROFILE:
        raise ConfigError(
            f"profile '{profile}' is not in {path}; create it with "
            f"`cbr configure --profile {profile}`"
        )
    stored = profiles.get(profile, {})
    values: dict[str, str] = {}
    sources: dict[str, str] = {}
    for key, env_name in (
        ("endpoint", ENV_ENDPOINT),
        ("access_key", ENV_ACCESS_KEY),
        ("secret_key", ENV_SECRET_KEY),
        ("ca_file", ENV_CA_FILE),
        ("server_name", ""),
        ("insecure", ENV_INSECURE),
    ):
        flag = getattr(args, key, None)
        if flag:
            values[key], sources[key] = "true" if flag is True else flag, "flag"
        elif env_name and env.get(env_name):
            values[key], sources[key] = env[env_name], env_name
        elif stored.get(key):
            values[key], sources[key] = stored[key], f"profile {profile}"
        else:
            values[key] = ""
    return Settings(profile=profile, sources=sources, **values)
