"""The two clouds as processes, and the `cbr` commands that drive them.

Kept apart from the demo's steps so that what the quickstart starts, how it
prints each command as a user would type it, and how it stops everything
(however the run ends, or later with ``--stop``) is one place to read: the
steps only ask for commands, never for processes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
PROCS: list[subprocess.Popen[bytes]] = []
# Every child's environment: ours without the user's CBR_ settings (the
# quickstart's main sets CBR_CONFIG_DIR to its own).
ENV = {k: v for k, v in os.environ.items() if not k.startswith("CBR_")}
T0 = time.time()


def say(text: str) -> None:
    print(f"\n==> [{time.time() - T0:5.1f} s] {text}", flush=True)


def human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


POLLED: set[tuple[str, ...]] = set()


def cbr(profile: str, *args: str, quiet: bool = False, poll: bool = False) -> str:
    """Runs one `cbr` command, printing it as you would type it (every one:
    a polled command once, with a note). ``quiet`` keeps its output to
    itself (JSON the quickstart reads, or a secret)."""
    cmd = [str(BIN / "cbr"), "--profile", profile, *args]
    shown = ("cbr", "--profile", profile, *args)
    if not poll or shown not in POLLED:
        note = "   (repeated until it is done)" if poll else ""
        print("$ " + shlex.join(shown) + note, flush=True)
        POLLED.add(shown)
    out = subprocess.run(cmd, capture_output=True, text=True, env=ENV)
    if out.returncode != 0:
        raise SystemExit(f"quickstart: `cbr {' '.join(args)}` failed:\n{out.stderr}")
    if not quiet and "json" not in args:
        print(out.stdout.rstrip(), flush=True)
    return out.stdout


def cbr_json(profile: str, *args: str, quiet: bool = False, poll: bool = False) -> object:
    return json.loads(cbr(profile, *args, "--output", "json", quiet=quiet, poll=poll))


def start(name: str, cmd: list[str], log_dir: Path) -> subprocess.Popen[bytes]:
    log = open(log_dir / f"{name}.log", "wb")  # noqa: SIM115 - kept open for the child
    print("$ " + shlex.join([Path(cmd[0]).name, *cmd[1:]]) + f"   (log: {log.name})",
          flush=True)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=ENV,
                            start_new_session=True)
    PROCS.append(proc)
    return proc


def stop_all() -> None:
    for proc in reversed(PROCS):
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.time() + 10
    for proc in PROCS:
        try:
            proc.wait(max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_for(what: str, check: object, timeout: float = 60) -> object:
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = check()  # type: ignore[operator]
        if value:
            return value
        time.sleep(0.3)
    raise SystemExit(f"quickstart: timed out waiting for {what}")


def controller(name: str, work: Path, cloud: str, region: str, regions: str) -> dict[str, str]:
    data = work / name
    start(name, [str(BIN / "cbr-controller"), "--data-dir", str(data),
                 "--listen", "127.0.0.1:0", "--agent-listen", "127.0.0.1:0",
                 # Two controllers and their agents on one host: free ports,
                 # found in endpoints.json and the agents' logs (metrics_urls).
                 "--metrics-listen", "127.0.0.1:0", "--console-listen", "127.0.0.1:0",
                 "--cloud-name", cloud, "--region", region, "--regions", regions,
                 # Both clouds run on this machine's loopback; allow that target.
                 "--target-allow-local", "true"],
          work / "logs")
    endpoints = wait_for(f"{name} to serve", lambda: (data / "endpoints.json").exists()
                         and json.loads((data / "endpoints.json").read_text()))
    assert isinstance(endpoints, dict)
    cbr(name, "configure", "--import-admin-credentials", str(data / "admin-credentials.json"))
    return endpoints


def agent_config(work: Path, name: str, endpoint: str, role: str, images: Path | None) -> Path:
    # Where restores to new places may go: the host refuses any other path.
    roots = {"host-1": "restored", "restore-host": "restored-on-cloud-b"}
    lines = ["[agent]", f'name = "{name}"', f'controller = "{endpoint}"',
             f'state_dir = "{work / name}"', f'role = "{role}"',
             'metrics_listen = "127.0.0.1:0"',
             *([f'restore_roots = ["{work / roots[name]}"]'] if name in roots else []), ""]
    if images is not None:
        for server, env in (("web-1", "prod"), ("db-1", "prod")):
            lines += ["[[servers]]", f'name = "{server}"', f'tags = {{ env = "{env}" }}',
                      "[[servers.disks]]", 'name = "system"',
                      f'path = "{images / (server + "-system.img")}"', "system = true",
                      "[[servers.disks]]", 'name = "data"',
                      f'path = "{images / (server + "-data.img")}"', ""]
        lines += ["[[disks]]", 'name = "vol-1"', f'path = "{images / "vol-1.img"}"', "",
                  "[[file_systems]]", 'name = "share"', f'path = "{work / "share"}"', ""]
    path = work / f"{name}.toml"
    path.write_text("\n".join(lines))
    return path


def enroll_and_run(profile: str, work: Path, name: str, config: Path) -> None:
    token = cbr_json(profile, "agent", "enroll-token", "--description", name)
    assert isinstance(token, dict)
    cmd = [str(BIN / "cbr-agent"), "--config", str(config), "enroll", "--token", token["token"]]
    print("$ " + shlex.join(["cbr-agent", "--config", str(config), "enroll", "--token",
                             token["token"][:18] + "..."]), flush=True)
    out = subprocess.run(cmd, capture_output=True, text=True, env=ENV)
    if out.returncode != 0:
        raise SystemExit(f"quickstart: enrollment failed:\n{out.stdout}{out.stderr}")
    start(name, [str(BIN / "cbr-agent"), "--config", str(config), "run"], work / "logs")


def stop_kept(work: Path) -> int:
    """Stops what an earlier ``--keep-running`` left running; how many."""
    pids_file = work / "pids.json"
    try:
        pids = [int(p) for p in json.loads(pids_file.read_text())]
    except (OSError, ValueError, TypeError):
        return 0
    alive = []
    for pid in pids:
        try:
            os.killpg(pid, signal.SIGTERM)
            alive.append(pid)
        except (ProcessLookupError, PermissionError):
            continue
    deadline = time.time() + 10
    for pid in alive:
        while time.time() < deadline:
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
    pids_file.unlink(missing_ok=True)
    return len(alive)


def metrics_urls(work: Path) -> dict[str, str]:
    """Each running controller's and agent's /metrics (they listen on free ports)."""
    urls: dict[str, str] = {}
    for endpoints in sorted(work.glob("*/endpoints.json")):
        with contextlib.suppress(OSError, ValueError):
            urls[endpoints.parent.name] = str(json.loads(endpoints.read_text())["metrics"])
    for log in sorted((work / "logs").glob("*.log")):
        found = re.findall(r"metrics on (http://\S+/metrics)",
                           log.read_text(errors="replace"))
        if found and log.stem not in urls:
            urls[log.stem] = found[-1]
    return urls


def show_metrics(work: Path) -> None:
    say("Prometheus metrics of each process (curl them; docs/operations.md lists the series)")
    for name, url in metrics_urls(work).items():
        print(f"  {name:<14} {url}", flush=True)


def keep_running(work: Path) -> None:
    (work / "pids.json").write_text(json.dumps([p.pid for p in PROCS]))
    config = work / "cli-config"
    rel = os.path.relpath(config)
    cli = os.path.relpath(BIN / "cbr")
    print(f"""
Both clouds are still running (stop them with: scripts/quickstart --stop).
Use the CLI against them, as the commands above did:

  export CBR_CONFIG_DIR={rel}
  {cli} --profile source vault list
  {cli} --profile source backup list
  {cli} --profile target backup list --output json

(or `source .venv/bin/activate` and plain `cbr`). Logs: {os.path.relpath(work / "logs")}/
Metrics: {", ".join(f"{name} {url}" for name, url in metrics_urls(work).items())}
Web consoles: {_consoles(work)}
  sign in with account admin, user admin and the password in
  {os.path.relpath(work / "console-password-source")} (or -target); the browser will not know the
  controller's own CA ({os.path.relpath(work / "source" / "ca" / "ca.crt")}): import it, or accept
  the warning for this loopback address.
""", flush=True)


def _consoles(work: Path) -> str:
    out = []
    for cloud in ("source", "target"):
        endpoints = json.loads((work / cloud / "endpoints.json").read_text())
        out.append(f"{cloud} {endpoints.get('console', '')}")
    return ", ".join(out)
