"""Structured logs: the library logs through ``logging`` with an ``audit`` dict in each record's ``extra``.

:class:`JsonFormatter` renders one JSON object per line (time, level, logger, message and the ``audit`` fields),
with any password that slipped into a message masked. Tracebacks show each exception of the chain with its safe
message only: a database error's DETAIL / CONTEXT lines, which quote row values, are never rendered
(:func:`format_exception`; :class:`TextFormatter` does the same for plain-text lines).

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
import traceback
from typing import Any

from audit_db_core.errors import redact, redact_value, server_message

_CAUSE = "\nThe above exception was the direct cause of the following exception:\n\n"
_CONTEXT = "\nDuring handling of the above exception, another exception occurred:\n\n"


def format_exception(exc: BaseException) -> str:
    """A traceback of ``exc`` and its chain (``__cause__`` / ``__context__``) as Python prints it, except that
    each exception's line carries :func:`~audit_db_core.errors.server_message`: the primary message of a database
    error (never its DETAIL / CONTEXT lines) and passwords masked.

    Example::

        logging.getLogger("app").error("failed:\n%s", format_exception(exc))
    """
    chain: list[tuple[BaseException, str]] = []  # (exception, how it led to the one before it in the list)
    seen: set[int] = set()
    current: BaseException | None = exc
    link = ""
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append((current, link))
        if current.__cause__ is not None:
            current, link = current.__cause__, _CAUSE
        elif current.__context__ is not None and not current.__suppress_context__:
            current, link = current.__context__, _CONTEXT
        else:
            current = None
    parts: list[str] = []
    for index in range(len(chain) - 1, -1, -1):  # the root cause first, as Python prints it
        item, _ = chain[index]
        if item.__traceback__ is not None:
            parts.append("Traceback (most recent call last):\n")
            parts.extend(traceback.format_tb(item.__traceback__))
        kind = type(item)
        name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
        parts.append(f"{name}: {server_message(item)}\n" if str(item).strip() else f"{name}\n")
        if index > 0:
            parts.append(chain[index][1])
    return redact("".join(parts).rstrip("\n"))


def _format_exc_info(ei: Any) -> str:
    return format_exception(ei[1]) if ei and ei[1] is not None else ""


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time``, ``level``, ``logger``, ``message``, the record's ``audit`` fields and,
    with ``exc_info``, a safe ``exception`` (see :func:`format_exception`)."""

    def formatException(self, ei: Any) -> str:  # noqa: N802 - logging's name
        return _format_exc_info(ei)

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        fields = getattr(record, "audit", None)
        if isinstance(fields, dict):
            payload.update({k: redact_value(v) for k, v in fields.items() if k not in payload})
        if record.exc_info:
            payload["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(payload, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``logging.Formatter`` with passwords masked in every line and safe tracebacks (see :func:`format_exception`)."""

    def formatException(self, ei: Any) -> str:  # noqa: N802 - logging's name
        return _format_exc_info(ei)

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def configure_logging(level: int = logging.INFO, *, json_lines: bool = True) -> logging.Handler:
    """Attach one stderr handler to the ``audit_db_core`` logger (idempotent) and return it."""
    logger = logging.getLogger("audit_db_core")
    for handler in list(logger.handlers):
        if getattr(handler, "_audit_db_core", False):
            logger.removeHandler(handler)
    handler = logging.StreamHandler()
    handler._audit_db_core = True  # type: ignore[attr-defined]
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)
    return handler
