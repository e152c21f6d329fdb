"""Partitions of ``audit_log``: bounds and names (UTC), creation, premake, registry lookups.

Bounds follow the configured interval and are computed in UTC: monthly ``audit_log_p2026_11`` covers
``[2026-11-01, 2026-12-01)``; quarterly ``audit_log_p2026_q4``; yearly ``audit_log_p2026``; day-based intervals
(daily, weekly, "<n> days") are named after their first day, ``audit_log_p2026_11_30``, and aligned on Monday
1970-01-05 so that weeks start on Mondays.

Example::

    pm = PartitionManager(connections, settings)
    pm.premake(3)                         # this period and the next three exist afterwards
    pm.find_partition(datetime.now(UTC))  # PartitionInfo(name="audit_log_p2026_11", …)
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from audit_db_core.config import AuditSettings, Period
from audit_db_core.errors import PartitionError
from audit_db_core.migrate import LOCK_CLASS, LOCK_PARTITIONS

logger = logging.getLogger("audit_db_core.partitions")

PARENT_TABLE = "audit_log"
DEFAULT_PARTITION = "audit_log_default"
_DAY_ANCHOR = dt.datetime(1970, 1, 5, tzinfo=dt.UTC)  # a Monday


class ConnectionSource(Protocol):
    def connection(self, *, operation: str = ...) -> Any: ...


@dataclass(frozen=True)
class PartitionBounds:
    name: str
    start: dt.datetime
    end: dt.datetime

    def contains(self, ts: dt.datetime) -> bool:
        return self.start <= ts < self.end


@dataclass(frozen=True)
class PartitionInfo:
    name: str
    start: dt.datetime
    end: dt.datetime
    state: str
    legal_hold: bool
    row_count: int | None
    bytes: int | None
    archive_uri: str | None
    created_at: dt.datetime | None


def _utc(ts: dt.datetime) -> dt.datetime:
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise PartitionError("partition times must be timezone-aware", operation="partition_bounds")
    return ts.astimezone(dt.UTC)


def _add_months(year: int, month0: int, months: int) -> dt.datetime:
    total = year * 12 + month0 + months
    return dt.datetime(total // 12, total % 12 + 1, 1, tzinfo=dt.UTC)


def bounds_for(ts: dt.datetime, interval: Period) -> PartitionBounds:
    """The partition of ``interval`` that holds ``ts`` (UTC)."""
    ts = _utc(ts)
    if interval.months:
        index = ts.year * 12 + ts.month - 1
        first = index - index % interval.months
        start = _add_months(0, first, 0)
        end = _add_months(0, first, interval.months)
        if interval.months % 12 == 0:
            name = f"{PARENT_TABLE}_p{start.year:04d}"
        elif interval.months == 3:
            name = f"{PARENT_TABLE}_p{start.year:04d}_q{(start.month - 1) // 3 + 1}"
        else:
            name = f"{PARENT_TABLE}_p{start.year:04d}_{start.month:02d}"
    else:
        step = dt.timedelta(days=interval.days)
        start = _DAY_ANCHOR + ((ts - _DAY_ANCHOR) // step) * step
        end = start + step
        name = f"{PARENT_TABLE}_p{start.year:04d}_{start.month:02d}_{start.day:02d}"
    return PartitionBounds(name, start, end)


def following(bounds: PartitionBounds, interval: Period, n: int = 1) -> PartitionBounds:
    """The bounds ``n`` periods after ``bounds``."""
    out = bounds
    for _ in range(n):
        out = bounds_for(out.end, interval)
    return out


class PartitionManager:
    """Creates and finds partitions; every change is recorded in the registry and the lifecycle ledger."""

    def __init__(self, connections: ConnectionSource, settings: AuditSettings) -> None:
        self._connections = connections
        self.settings = settings

    @property
    def interval(self) -> Period:
        return self.settings.partitions.interval

    @contextmanager
    def _conn(self, operation: str) -> Iterator[psycopg.Connection[Any]]:
        with self._connections.connection(operation=operation) as conn:
            yield conn

    def create_partition(self, period: dt.datetime, *, run_id: str | None = None) -> PartitionInfo:
        """Create (idempotently) the partition holding ``period``, with the parent's indexes, and register it.

        Many processes may call it at once for the same period: a transaction-level advisory lock serialises them,
        one creates, the others find it registered.
        """
        b = bounds_for(period, self.interval)
        with self._conn("create_partition") as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_CLASS, LOCK_PARTITIONS))
            existing = self._registered(conn, b.name)
            if existing is not None:
                return existing
            overlap = conn.execute(
                "SELECT partition_name FROM audit_partitions"
                " WHERE tstzrange(range_start, range_end) && tstzrange(%s, %s) LIMIT 1",
                (b.start, b.end),
            ).fetchone()
            if overlap is not None:
                raise PartitionError(
                    f"{b.name} [{b.start:%Y-%m-%d}, {b.end:%Y-%m-%d}) overlaps partition {overlap[0]}; "
                    "the partition interval was probably changed after partitions were made",
                    operation="create_partition",
                    partition=b.name,
                )
            stray = conn.execute(
                sql.SQL("SELECT count(*) FROM {} WHERE event_time >= %s AND event_time < %s").format(
                    sql.Identifier(DEFAULT_PARTITION)
                ),
                (b.start, b.end),
            ).fetchone()
            if stray and stray[0]:
                raise PartitionError(
                    f"the DEFAULT partition holds {stray[0]} rows in the range of {b.name}; "
                    "they must be moved into it before it can be created",
                    operation="create_partition",
                    partition=b.name,
                )
            conn.execute(
                sql.SQL("CREATE TABLE IF NOT EXISTS {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
                    sql.Identifier(b.name), sql.Identifier(PARENT_TABLE), sql.Literal(b.start), sql.Literal(b.end)
                )
            )
            # The parent's TRUNCATE trigger does not fire for a TRUNCATE naming the partition itself.
            conn.execute(
                sql.SQL(
                    "CREATE OR REPLACE TRIGGER {} BEFORE TRUNCATE ON {} "
                    "FOR EACH STATEMENT EXECUTE FUNCTION audit_reject_modification()"
                ).format(sql.Identifier(f"{b.name}_no_truncate"), sql.Identifier(b.name))
            )
            conn.execute(
                "INSERT INTO audit_partitions (partition_name, range_start, range_end) VALUES (%s, %s, %s)",
                (b.name, b.start, b.end),
            )
            _ledger(conn, "create", b.name, "ok", run_id=run_id, details={"start": b.start, "end": b.end})
            info = self._registered(conn, b.name)
        assert info is not None
        logger.info("partition created", extra={"audit": {"partition": b.name, "start": str(b.start)}})
        return info

    def premake(self, n: int | None = None, *, now: dt.datetime | None = None, run_id: str | None = None) -> list[
        PartitionInfo
    ]:
        """Ensure the partition of ``now`` and the ``n`` following ones exist (``n`` defaults to settings)."""
        count = self.settings.partitions.premake if n is None else n
        if count < 0:
            raise PartitionError("premake count must be >= 0", operation="premake")
        current = bounds_for(now or dt.datetime.now(dt.UTC), self.interval)
        out = []
        for i in range(count + 1):
            out.append(self.create_partition(following(current, self.interval, i).start, run_id=run_id))
        return out

    def list_partitions(self) -> list[PartitionInfo]:
        with self._conn("list_partitions") as conn:
            cur = conn.cursor(row_factory=dict_row)
            rows = cur.execute(_INFO_SELECT + sql.SQL(" ORDER BY range_start")).fetchall()
        return [_info(r) for r in rows]

    def find_partition(self, ts: dt.datetime) -> PartitionInfo | None:
        """The registered partition whose range holds ``ts``: one B-tree probe on ``range_start``."""
        ts = _utc(ts)
        with self._conn("find_partition") as conn:
            cur = conn.cursor(row_factory=dict_row)
            row = cur.execute(
                _INFO_SELECT + sql.SQL(" WHERE range_start <= %s ORDER BY range_start DESC LIMIT 1"), (ts,)
            ).fetchone()
        if row is None or not (row["range_start"] <= ts < row["range_end"]):
            return None
        return _info(row)

    def default_row_count(self) -> int:
        with self._conn("default_row_count") as conn:
            row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(DEFAULT_PARTITION))).fetchone()
        return int(row[0]) if row else 0

    @staticmethod
    def _registered(conn: psycopg.Connection[Any], name: str) -> PartitionInfo | None:
        cur = conn.cursor(row_factory=dict_row)
        row = cur.execute(_INFO_SELECT + sql.SQL(" WHERE partition_name = %s"), (name,)).fetchone()
        return _info(row) if row else None


_INFO_SELECT = sql.SQL("SELECT {} FROM audit_partitions").format(
    sql.SQL(", ").join(
        sql.Identifier(c)
        for c in (
            "partition_name", "range_start", "range_end", "state", "legal_hold", "row_count", "bytes",
            "archive_uri", "created_at",
        )
    )
)


def _info(row: dict[str, Any]) -> PartitionInfo:
    return PartitionInfo(
        name=row["partition_name"],
        start=row["range_start"].astimezone(dt.UTC),
        end=row["range_end"].astimezone(dt.UTC),
        state=row["state"],
        legal_hold=row["legal_hold"],
        row_count=row["row_count"],
        bytes=row["bytes"],
        archive_uri=row["archive_uri"],
        created_at=row["created_at"].astimezone(dt.UTC) if row["created_at"] else None,
    )


def _ledger(
    conn: psycopg.Connection[Any],
    operation: str,
    partition: str | None,
    outcome: str,
    *,
    run_id: str | None = None,
    rows: int | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    conn.execute(
        "INSERT INTO audit_lifecycle_ledger (operation, partition_name, outcome, row_count, details, run_id)"
        " VALUES (%s, %s, %s, %s, %s, %s)",
        (operation, partition, outcome, rows, Jsonb(details or {}, dumps=_dumps), run_id),
    )


def _dumps(obj: Any) -> str:
    return json.dumps(obj, default=str)
