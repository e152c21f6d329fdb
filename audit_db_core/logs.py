"""Structured logs: the library logs through ``logging`` with an ``audit`` dict in each record's ``extra``.

:class:`JsonFormatter` renders one JSON object per line (time, level, logger, message and the ``audit`` fields),
with any password that slipped into a message masked.

Example::

    import logging
    from audit_db_core.logs import configure_logging
    configure_logging(logging.INFO)                       # JSON lines on stderr
    logging.getLogger("audit_db_core.database").info("ready", extra={"audit": {"pool": "primary"}})
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

from audit_db_core.errors import redact


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        fields = getattr(record, "audit", None)
        if isinstance(fields, dict):
            payload.update({k: v for k, v in fields.items() if k not in payload})
        if record.exc_info:
            payload["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(payload, default=str, ensure_ascii=False)


def configure_logging(level: int = logging.INFO, *, json_lines: bool = True) -> logging.Handler:
    """Attach one stderr handler to the ``audit_db_core`` logger (idempotent) and return it."""
    logger = logging.getLogger("audit_db_core")
    for handler in list(logger.handlers):
        if getattr(handler, "_audit_db_core", False):
            logger.removeHandler(handler)
    handler = logging.StreamHandler()
    handler._audit_db_core = True  # type: ignore[attr-defined]
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)
    return handler
