"""`cbr configure`: write a profile of the config file.

Values come, later ones winning, from the profile as it is, the
admin-credentials.json the controller writes at its first start
(--import-admin-credentials), and the global flags. Whatever is still missing
is asked for on a terminal; without one the command fails rather than
writing a profile that cannot sign a call.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from cbr.cli._common import (
    DEFAULT_PROFILE,
    ENV_PROFILE,
    ConfigError,
    Context,
    add_command,
    config_path,
    load_profiles,
    save_profiles,
)

REQUIRED = ("endpoint", "access_key", "secret_key")
Ask = Callable[[str], str]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = add_command(
        sub,
        "configure",
        cmd_configure,
        "save endpoint and keys as a profile (uses --profile, --endpoint, --access-key, "
        "--secret-key, --ca-file)",
    )
    p.add_argument(
        "--import-admin-credentials",
        type=Path,
        metavar="PATH",
        help="the admin-credentials.json the controller wrote; flags override its values",
    )


def read_admin_credentials(path: Path) -> dict[str, str]:
    """endpoint, access_key, secret_key and account_id of the controller's file."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read admin credentials {path}: {exc}") from exc
    if not isinstance(doc, dict) or not doc.get("access_key") or not doc.get("secret_key"):
        raise ConfigError(f"{path} has no access_key and secret_key")
    return {
        key: str(doc[key])
        for key in ("endpoint", "access_key", "secret_key", "account_id")
        if doc.get(key)
    }


def merge_profile(
    current: Mapping[str, str], imported: Mapping[str, str], flags: Mapping[str, str | None]
) -> dict[str, str]:
    values = dict(current)
    values.update({k: v for k, v in imported.items() if v})
    values.update({k: v for k, v in flags.items() if v})
    return values


def ask_missing(
    values: dict[str, str], given: set[str], ask: Ask, ask_secret: Ask
) -> dict[str, str]:
    """Asks for every required value not given on this run, the stored one as default."""
    labels = {
        "endpoint": "Endpoint (host:port)",
        "access_key": "Access key",
        "secret_key": "Secret key",
    }
    for key in REQUIRED:
        if key in given:
            continue
        old = values.get(key, "")
        if key == "secret_key":
            shown = f" [****{old[-4:]}]" if old else ""
            answer = ask_secret(f"{labels[key]}{shown}: ")
        else:
            answer = ask(f"{labels[key]}{f' [{old}]' if old else ''}: ")
        if answer.strip():
            values[key] = answer.strip()
    return values


def store_profile(env: Mapping[str, str], name: str, values: Mapping[str, str]) -> Path:
    """Merges values (empty ones ignored) into a profile and saves the file."""
    path = config_path(env)
    profiles = load_profiles(path)
    merged = dict(profiles.get(name, {}))
    merged.update({k: v for k, v in values.items() if v})
    profiles[name] = merged
    save_profiles(path, profiles)
    return path


def cmd_configure(ctx: Context, args: argparse.Namespace) -> int:
    name = args.profile or ctx.env.get(ENV_PROFILE) or DEFAULT_PROFILE
    path = config_path(ctx.env)
    current = load_profiles(path).get(name, {})
    imported = (
        read_admin_credentials(args.import_admin_credentials)
        if args.import_admin_credentials
        else {}
    )
    flags = {
        "endpoint": args.endpoint,
        "access_key": args.access_key,
        "secret_key": args.secret_key,
        "ca_file": args.ca_file,
    }
    values = merge_profile(current, imported, flags)
    given = {k for k, v in {**imported, **flags}.items() if v}
    if not all(k in given for k in REQUIRED) and sys.stdin.isatty():
        values = ask_missing(values, given, input, getpass.getpass)
    missing = [k for k in REQUIRED if not values.get(k)]
    if missing:
        raise ConfigError(
            f"profile '{name}' needs {', '.join(missing)}: pass "
            f"{' '.join('--' + m.replace('_', '-') for m in missing)} "
            "or --import-admin-credentials PATH"
        )
    path = store_profile(ctx.env, name, values)
    if ctx.out.json:
        ctx.out.json_value(
            {
                "profile": name,
                "path": str(path),
                "endpoint": values["endpoint"],
                "access_key": values["access_key"],
            }
        )
    else:
        ctx.out.message(f"saved profile '{name}' ({values['endpoint']}) to {path}")
    return 0
