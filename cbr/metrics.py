"""The Prometheus listener every process runs, written once.

Each process (controller, host agent, importer) serves its own
``/metrics`` on a plain HTTP listener of its own, set by a
``metrics_listen`` setting: ``HOST:PORT``, ``off``, or port 0 for a free
port. It is loopback by default because the series name resources and
vaults; an operator who scrapes from another host opens it on purpose.
The bound address is logged, so a process started on port 0 can be found.
"""

from __future__ import annotations

import errno
import logging
import threading
from collections.abc import Iterable
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, disable_created_metrics, start_http_server
from prometheus_client.registry import Collector

OFF = "off"

# No ``_created`` series beside each counter and histogram: they double the
# exposition and no dashboard here reads them.
disable_created_metrics()


def parse_listen(text: str) -> tuple[str, int] | None:
    """``HOST:PORT`` as (host, port), or None for ``off``; ValueError says
    what is wrong with anything else."""
    value = text.strip()
    if value.lower() == OFF:
        return None
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{text!r} is not HOST:PORT (port 0 picks a free port) or 'off'")
    return host, int(port)


def listen_setting(text: str) -> str:
    """The setting as a config parser keeps it: checked, and ``off`` or
    ``HOST:PORT`` as given."""
    return OFF if parse_listen(text) is None else text.strip()


class Forward(Collector):
    """Serves the series of a registry shared by the whole process (the
    counters code increments) in a listener's own registry, beside the
    collectors that belong to one listener (a controller's database)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterable[Any]:
        return self._registry.collect()


class MetricsServer:
    """One process's ``/metrics`` listener: started once, stopped on shutdown."""

    def __init__(self, registry: CollectorRegistry, log: logging.Logger) -> None:
        self._registry = registry
        self._log = log
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    def start(self, listen: str, setting: str) -> int:
        """Binds ``listen`` (already checked by parse_listen); returns the
        bound port, or 0 when the setting is ``off``. A taken port is an
        OSError naming the setting, so the operator knows what to change."""
        address = parse_listen(listen)
        if address is None:
            self._log.info("metrics off (%s)", setting)
            return 0
        host, port = address
        try:
            self._server, self._thread = start_http_server(port, host, registry=self._registry)
        except OSError as exc:
            why = ("the port is in use (by another process, or a second controller or agent "
                   "given the same address)" if exc.errno == errno.EADDRINUSE
                   else exc.strerror or str(exc))
            raise OSError(f"cannot listen on {listen} for metrics ({setting}): {why}; "
                          f"choose another {setting}, port 0 for a free one, or 'off'") from None
        bound = int(self._server.server_port)
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{bound}/metrics"
        self._log.info("metrics on %s", self.url)
        return bound

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
