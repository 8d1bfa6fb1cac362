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

from cbr import tls
from cli._common import (
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
        "save endpoint, keys and the pinned CA as a profile (uses --profile, --endpoint, "
        "--access-key, --secret-key, --ca-file, --insecure)",
    )
    p.add_argument(
        "--import-admin-credentials",
        type=Path,
        metavar="PATH",
        help="the admin-credentials.json the controller wrote (keys and its CA); flags "
        "override its values",
    )
    p.add_argument(
        "--ca-sha256",
        metavar="HEX",
        help="pin the controller's CA by its SHA-256 (logged by the controller at start, "
        "printed by `cbr cloud show`): fetched from its TLS handshake, kept if it matches",
    )
    p.add_argument(
        "--server-name",
        metavar="NAME",
        help=f"the name the API's certificate is verified by (default {tls.SERVER_NAME}; "
        "an operator's certificate may name the controller otherwise)",
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
        for key in ("endpoint", "access_key", "secret_key", "account_id", "ca_certificate")
        if doc.get(key)
    }


def _pin(env: Mapping[str, str], profile: str, pem: bytes) -> str:
    """Keeps a profile's CA beside the config file; returns its path."""
    path = config_path(env).parent / f"{profile}.ca.pem"
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.write_bytes(pem)
    return str(path)


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


def store_profile(env: Mapping[str, str], name: str, values: Mapping[str, str],
                  drop: tuple[str, ...] = ()) -> Path:
    """Merges values (empty ones ignored) into a profile, without the keys
    ``drop``, and saves the file."""
    path = config_path(env)
    profiles = load_profiles(path)
    merged = {k: v for k, v in profiles.get(name, {}).items() if k not in drop}
    merged.update({k: v for k, v in values.items() if v and k not in drop})
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
    ca_pem = imported.pop("ca_certificate", "")
    if ca_pem and not args.ca_file:
        imported["ca_file"] = _pin(ctx.env, name, ca_pem.encode())
    flags = {
        "endpoint": args.endpoint,
        "access_key": args.access_key,
        "secret_key": args.secret_key,
        "ca_file": args.ca_file,
        "server_name": args.server_name,
        "insecure": "true" if args.insecure else None,
    }
    values = merge_profile(current, imported, flags)
    if args.ca_sha256:
        endpoint = values.get("endpoint", "")
        if not endpoint:
            raise ConfigError("--ca-sha256 needs the endpoint (--endpoint HOST:PORT)")
        try:
            values["ca_file"] = _pin(ctx.env, name, tls.fetch_ca(endpoint, args.ca_sha256))
        except tls.TlsError as exc:
            raise ConfigError(f"cannot pin the CA of {endpoint}: {exc}") from None
    if values.get("ca_file"):
        values.pop("insecure", None)
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
    path = store_profile(ctx.env, name, values, drop=() if values.get("insecure") else
                         ("insecure",))
    ca_sha256 = _fingerprint_of(values.get("ca_file", ""))
    if ctx.out.json:
        ctx.out.json_value(
            {
                "profile": name,
                "path": str(path),
                "endpoint": values["endpoint"],
                "access_key": values["access_key"],
                "ca_sha256": ca_sha256,
            }
        )
    else:
        ctx.out.message(f"saved profile '{name}' ({values['endpoint']}) to {path}")
        ctx.out.message(
            f"TLS, CA SHA-256 {ca_sha256}" if ca_sha256 else "PLAINTEXT (--insecure)"
            if values.get("insecure") else "no CA pinned yet: add --ca-file or --ca-sha256")
    return 0


def _fingerprint_of(path: str) -> str:
    if not path:
        return ""
    try:
        return tls.fingerprint(Path(path).expanduser().read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read CA file {path}: {exc}") from None
