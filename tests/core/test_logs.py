"""Structured logging: one JSON object per line, with the error's category and context, and no secrets."""

from __future__ import annotations

import io
import json
import logging

import pytest

from audit_db_core import AuditDatabase, AuditEvent, AuditSettings, ComplianceError
from audit_db_core.logs import JsonFormatter


def test_failed_operation_is_logged_as_json_with_context(db: AuditDatabase) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("audit_db_core")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        db.insert(AuditEvent(action="a", status="success", principal_id="u"))
        with pytest.raises(ComplianceError):
            with db.transaction() as tx:
                tx._conn.execute("UPDATE audit_log SET action = 'b'")
        logging.getLogger("audit_db_core.test").warning(
            "connecting to postgresql://app:NotForLogs@db/audit failed", extra={"audit": {"operation": "connect"}}
        )
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    assert any(line.get("operation") == "connect" and "app:***@db" in line["message"] for line in lines)
    failed = [line for line in lines if line["logger"] == "audit_db_core.database"]
    assert failed and failed[0]["category"] == "compliance" and failed[0]["context"]["operation"] == "transaction"
    assert failed[0]["level"] == "warning" and failed[0]["error"] == "ComplianceError"
    assert "NotForLogs" not in stream.getvalue()


def test_settings_repr_in_a_log_line_hides_the_password() -> None:
    s = AuditSettings(database_url="postgresql://app:LogPw1@db/audit")
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "settings %r", (s,), None)
    assert "LogPw1" not in JsonFormatter().format(record)
