"""Logging: one line per event, journald-friendly text or opt-in JSON, never the API key.

The key is only revealed inside the upstream client; as a second line of
defence a filter replaces any occurrence of it (and of a ``Bearer`` header)
in every record before it is formatted.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time

_BEARER = re.compile(r"(Bearer\s+)\S+", re.IGNORECASE)


class RedactSecrets(logging.Filter):
    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self._secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = _BEARER.sub(r"\1<redacted>", message)
        for secret in self._secrets:
            clean = clean.replace(secret, "<redacted>")
        if clean != message:
            record.msg, record.args = clean, None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str = "INFO", fmt: str = "text", secrets: list[str] | None = None) -> None:
    """Log to stderr (journald captures it); systemd adds its own timestamps, so text lines have none."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactSecrets(secrets or []))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore", "apscheduler"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    logging.Formatter.converter = time.gmtime
