"""One log format for the controller and the agents.

Every line names its logger (``cbr.controller.hub``, ``cbr.agent``, ...), so
a line says which part of which program wrote it. ``text`` is for people;
``json`` (one object per line: time, level, logger, program, message,
exception) is for log shippers, which then need no pattern to parse it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys

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
