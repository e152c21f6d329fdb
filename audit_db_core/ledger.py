"""The lifecycle ledger: one append-only row per create / rescue / archive / detach / purge / optimize / hold /
release / restore / delete_archive, with counts, checksums, duration and the caller's run id. Never purged.

Example::

    with db.connections.connection() as conn:
        for entry in entries(conn, partition="audit_log_p2026_11"):
            print(entry.occurred_at, entry.operation, entry.outcome, entry.row_count)
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

OPERATIONS = (
    "create", "rescue", "archive", "detach", "purge", "delete_archive", "optimize", "hold", "release", "restore",
    "seal", "integrity_verify", "integrity_copy",  # audit_db_core.integrity
    "subject_export", "subject_erasure",  # audit_db_core.privacy
    "report_export",  # audit_db_core.reports
)


@dataclass(frozen=True)
class LedgerEntry:
    entry_id: int
    occurred_at: dt.datetime
    operation: str
    partition_name: str | None
    outcome: str
    row_count: int | None
    byte_count: int | None
    checksum: str | None
    duration_ms: float | None
    details: dict[str, Any]
    actor: str
    run_id: str | None


def _dumps(obj: Any) -> str:
    return json.dumps(obj, default=str, sort_keys=True)


def record(
    conn: psycopg.Connection[Any],
    operation: str,
    partition: str | None,
    outcome: str = "ok",
    *,
    run_id: str | None = None,
    rows: int | None = None,
    byte_count: int | None = None,
    checksum: str | None = None,
    duration_ms: float | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """Append one entry (inside the caller's transaction, so it commits with the change it describes)."""
    conn.execute(
        "INSERT INTO audit_lifecycle_ledger (operation, partition_name, outcome, row_count, byte_count, checksum,"
        " duration_ms, details, run_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (operation, partition, outcome, rows, byte_count, checksum, duration_ms, Jsonb(details or {}, dumps=_dumps),
         run_id),
    )


def entries(
    conn: psycopg.Connection[Any], *, partition: str | None = None, operation: str | None = None, limit: int = 1000
) -> list[LedgerEntry]:
    """Ledger entries, oldest first, optionally for one partition and/or one operation."""
    cur = conn.cursor(row_factory=dict_row)
    rows = cur.execute(
        "SELECT * FROM audit_lifecycle_ledger"
        " WHERE (%(p)s::text IS NULL OR partition_name = %(p)s) AND (%(o)s::text IS NULL OR operation = %(o)s)"
        " ORDER BY entry_id LIMIT %(n)s",
        {"p": partition, "o": operation, "n": limit},
    ).fetchall()
    return [LedgerEntry(**r) for r in rows]
