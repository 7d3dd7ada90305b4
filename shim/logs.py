"""Structured logging: one JSON object per line on stderr, as etcd's zap logger writes them.

Fields given with ``extra={...}`` become keys of the object, so logs can be filtered by them.
Never pass a secret (account key, client secret, password) in a message or a field.
"""
from __future__ import annotations

import datetime
import json
import logging
import sys

_STANDARD_ATTRIBUTES = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "error": logging.ERROR}


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "level": record.levelname.lower(),
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc).isoformat(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update((k, v) for k, v in vars(record).items() if k not in _STANDARD_ATTRIBUTES)
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LEVELS[level])
    # The Azure SDK logs every HTTP request at INFO: only at debug level is that wanted.
    logging.getLogger("azure").setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
