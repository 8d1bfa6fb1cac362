"""``cbr-agent``: the command line of the agent, and nothing but wiring.

``cbr-agent --config FILE enroll --token TOKEN [--controller HOST:PORT]``,
``cbr-agent --config FILE run [--token TOKEN]`` (enrolls first when not yet
enrolled and a token is given, also via CBR_ENROLL_TOKEN) and
``cbr-agent --config FILE inventory`` (prints what would be reported, JSON).
SIGTERM and SIGINT stop ``run`` cleanly.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from types import FrameType

from google.protobuf import json_format

from agent import config as agent_config
from agent import inventory, restore_targets
from agent.connection import Connection
from agent.enroll import EnrollError, enroll
from agent.journal import Journal
from agent.state import StateDir
from cbr import logs
from cbr.metrics import listen_setting

log = logging.getLogger("cbr.agent")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _metrics_listen(text: str) -> str:
    try:
        return listen_setting(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cbr-agent",
        description="The CBR agent: enrolls with a controller, reports what this host can "
        "protect, and runs the controller's commands over one outbound TLS stream.",
    )
    p.add_argument("--config", metavar="FILE",
                   default=os.environ.get("CBR_AGENT_CONFIG", agent_config.DEFAULT_CONFIG),
                   help="TOML configuration (env CBR_AGENT_CONFIG; default %(default)s).")
    p.add_argument("--role", choices=agent_config.ROLES, default=None,
                   help="host (protects this host) or importer (writes replicas into this "
                   "cloud's vaults); overrides [agent] role.")
    p.add_argument("--importer-listen", metavar="HOST:PORT", default=None,
                   help="Importers: where ImporterService listens (overrides [agent] "
                   f"importer_listen; default {agent_config.DEFAULT_IMPORTER_LISTEN}).")
    p.add_argument("--metrics-listen", metavar="HOST:PORT", default=None,
                   type=_metrics_listen,
                   help="Where the Prometheus /metrics listener (plain HTTP) listens, or "
                   "'off'; port 0 picks a free port, logged at start (overrides [agent] "
                   f"metrics_listen; default {agent_config.DEFAULT_METRICS_LISTEN}).")
    p.add_argument("--log-level", default=os.environ.get("CBR_LOG_LEVEL", "INFO"),
                   help="DEBUG, INFO, WARNING or ERROR (default %(default)s).")
    p.add_argument("--log-format", type=logs.log_format,
                   default=os.environ.get("CBR_LOG_FORMAT", "text"),
                   help="text (for people) or json (one object per line, for log "
                   "shippers); default %(default)s.")
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("enroll", help="Enroll with a one-time token, then exit.")
    e.add_argument("--token", required=True, help="Token from 'cbr agent enroll-token'.")
    e.add_argument("--controller", default="",
                   help="HOST:PORT of the controller's API (default: [agent] controller).")
    e.add_argument("--force", action="store_true",
                   help="Enroll again although this agent is enrolled (a new identity).")
    r = sub.add_parser("run", help="Connect to the controller and serve it until stopped.")
    r.add_argument("--token", default=os.environ.get("CBR_ENROLL_TOKEN", ""),
                   help="Enroll with this token first if not enrolled (env CBR_ENROLL_TOKEN).")
    r.add_argument("--controller", default="", help="HOST:PORT of the controller's API.")
    sub.add_parser("inventory", help="Print the protectables this agent would report (JSON).")
    return p


def _enroll(cfg: agent_config.AgentConfig, token: str, controller: str, force: bool) -> int:
    try:
        identity = enroll(cfg, token, controller, force=force)
    except EnrollError as exc:
        print(f"cbr-agent: {exc}", file=sys.stderr)
        return EXIT_FAILED
    log.info("enrolled as agent %s; the agent endpoint is %s", identity.agent_id,
             identity.agent_endpoint)
    return EXIT_OK


def _run(cfg: agent_config.AgentConfig, token: str, controller: str) -> int:
    from agent.memory import pin_mmap_threshold

    pin_mmap_threshold()
    state = StateDir(cfg.state_dir)
    state.ensure()
    if not state.enrolled():
        if not token:
            print(f"cbr-agent: not enrolled (no identity in {cfg.state_dir}); run "
                  "'cbr-agent enroll --token TOKEN' or pass --token.", file=sys.stderr)
            return EXIT_USAGE
        code = _enroll(cfg, token, controller, False)
        if code != EXIT_OK:
            return code
    restore_targets.ensure_default_root(cfg)
    connection = Connection(cfg, state, Journal(state.journal_dir))

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s; stopping", signal.Signals(signum).name)
        connection.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("agent %s starting (state in %s; restores allowed under %s)", cfg.name,
             cfg.state_dir, ", ".join(cfg.effective_restore_roots))
    from agent import metrics

    try:
        listener = metrics.start(cfg.metrics_listen, cfg.role)
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return EXIT_FAILED
    try:
        connection.run()
    except OSError as exc:  # e.g. the importer's port is taken: one line, no traceback
        log.error("stopping: %s", exc)
        return EXIT_FAILED
    finally:
        listener.stop()
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logs.configure("cbr-agent", str(args.log_level), args.log_format)
    logs.route_native_stderr()
    try:
        cfg = agent_config.load(args.config)
    except agent_config.ConfigError as exc:
        print(f"cbr-agent: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.role is not None:
        cfg = dataclasses.replace(cfg, role=args.role)
    if args.importer_listen is not None:
        cfg = dataclasses.replace(cfg, importer_listen=args.importer_listen)
    if args.metrics_listen is not None:
        cfg = dataclasses.replace(cfg, metrics_listen=args.metrics_listen)
    if args.command == "enroll":
        return _enroll(cfg, args.token, args.controller, args.force)
    if args.command == "inventory":
        scanned = inventory.scan(cfg)
        print(json.dumps(json_format.MessageToDict(scanned, preserving_proto_field_name=True),
                         indent=2))
        return EXIT_OK
    return _run(cfg, args.token, args.controller)


if __name__ == "__main__":
    sys.exit(main())
