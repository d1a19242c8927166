"""JSON logs: one object per line. Request lines carry id, key id (never the key), route, status, latency."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

REQUEST_FIELDS = ("request_id", "key_id", "method", "route", "path", "status", "latency_ms", "client")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({field: getattr(record, field) for field in REQUEST_FIELDS if hasattr(record, field)})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(level: str = "INFO") -> None:
    """The process's logging, set by its entry point (`python -m gateway`): the root logger writes JSON lines to
    stdout, uvicorn's loggers go through it, and uvicorn's access log is off (the request line replaces it)."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = name != "uvicorn.access"  # our request line replaces the access log
