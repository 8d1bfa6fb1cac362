"""One log format for the controller and the agents.

Every line names its logger (``cbr.controller.hub``, ``cbr.agent``, ...), so
a line says which part of which program wrote it. ``text`` is for people;
``json`` (one object per line: time, level, logger, program, message,
exception) is for log shippers, which then need no pattern to parse it.

gRPC's C core (and any other native library) writes its own lines straight
to file descriptor 2, past Python's logging. ``route_native_stderr`` puts a
pipe there and logs each such line through the same handler, as logger
``grpc.core`` with the level its prefix names, so a log shipper sees one
format.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import sys
import threading

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    def __init__(self, program: str) -> None:
        super().__init__()
        self._program = program

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "program": self._program,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


def log_format(text: str) -> str:
    """A --log-format value, checked."""
    if text not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {text!r}")
    return text


def configure(program: str, level: str, fmt: str = "text") -> None:
    """Sends every logger of the process to stderr in one format, replacing
    whatever handlers were there."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(program) if fmt == "json"
                         else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))


# absl's prefix: severity letter, MMDD, time, thread id, file:line] message.
_NATIVE = re.compile(r"^([IWEF])\d{4} [\d:.]+ +\d+ ([^\]]+)\] ?(.*)$")
_NATIVE_LEVELS = {"I": logging.INFO, "W": logging.WARNING, "E": logging.ERROR,
                  "F": logging.CRITICAL}


def native_record(line: str) -> tuple[str, int, str]:
    """(logger, level, message) of one line a native library wrote to stderr."""
    match = _NATIVE.match(line)
    if match is None:
        return "stderr", logging.WARNING, line
    letter, where, message = match.groups()
    return "grpc.core", _NATIVE_LEVELS[letter], f"{message} ({where.strip()})"


def route_native_stderr() -> threading.Thread:
    """Points fd 2 at a pipe read by a thread that logs each line.

    Python's own stderr (and so the log handler) keeps the original
    descriptor, so nothing loops. The pipe's write end is non-blocking: if
    the reader ever fell behind by a full pipe, a native line is dropped
    rather than a gRPC thread blocked."""
    original = os.dup(2)
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    sys.stderr.flush()
    stream = os.fdopen(original, "w", buffering=1, encoding="utf-8", errors="replace")
    sys.stderr = stream
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(stream)
    os.dup2(write_fd, 2)
    os.close(write_fd)

    def pump() -> None:
        with os.fdopen(read_fd, "rb") as pipe:
            for raw in pipe:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                if line.strip():
                    name, level, message = native_record(line)
                    logging.getLogger(name).log(level, "%s", message)

    thread = threading.Thread(target=pump, name="native-stderr", daemon=True)
    thread.start()
    return thread
