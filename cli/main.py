"""The `cbr` command: root parser, dispatch, and the one place errors become exit codes.

Exit codes: 0 success; 1 the controller refused or failed (one line on
stderr), or a watched task failed; 2 bad usage or missing settings; 130
interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Sequence

import grpc

import cbr
from cli import (
    agent_cmd,
    audit_cmd,
    backup_cmd,
    cloud_cmd,
    configure_cmd,
    credential_cmd,
    iam_cmd,
    image_cmd,
    key_cmd,
    notification_cmd,
    policy_cmd,
    prefixes,
    protectable_cmd,
    replication_cmd,
    task_cmd,
    vault_cmd,
)
from cli._common import CliError, Context, Output, global_options, rpc_error_line

MODULES = (
    configure_cmd,
    vault_cmd,
    key_cmd,
    protectable_cmd,
    backup_cmd,
    image_cmd,
    policy_cmd,
    credential_cmd,
    replication_cmd,
    task_cmd,
    iam_cmd,
    agent_cmd,
    audit_cmd,
    cloud_cmd,
    notification_cmd,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cbr",
        description="Command line of the CBR cloud backup service.",
        epilog="Settings: flags > environment (CBR_ENDPOINT, CBR_ACCESS_KEY, "
        "CBR_SECRET_KEY, CBR_PROFILE) > profile in $CBR_CONFIG_DIR/config.toml "
        "or ~/.config/cbr/config.toml.",
    )
    parser.add_argument("--version", action="version", version=f"cbr {cbr.__version__}")
    global_options(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in MODULES:
        module.register(sub)
    return parser


def _fail(text: str) -> None:
    sys.stderr.write(f"cbr: error: {text}\n")
    sys.stderr.flush()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as exc:
        # argparse exits for --help, --version and usage errors; return its code
        # so that callers (tests, scripts embedding the CLI) keep control.
        return exc.code if isinstance(exc.code, int) else 2
    ctx = Context(args, Output(args.output))
    try:
        prefixes.resolve(ctx, args)
        return int(args.func(ctx, args))
    except CliError as exc:
        _fail(str(exc))
        return exc.exit_code
    except grpc.RpcError as exc:
        endpoint = ""
        with contextlib.suppress(CliError):
            endpoint = ctx.endpoint
        _fail(rpc_error_line(exc, endpoint))
        return 1
    except KeyboardInterrupt:
        _fail("interrupted")
        return 130
    except BrokenPipeError:
        # `cbr vault list | head` is not an error worth a traceback.
        return 1
    finally:
        ctx.close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
