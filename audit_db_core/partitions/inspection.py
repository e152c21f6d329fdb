"""Read-only views of the partitions: the registry (``audit_partitions``) row by row, the rows waiting in the
DEFAULT partition, what a partition holds now, when a period may be archived, and whether the registry and the
lifecycle ledger agree. Nothing here changes data; health checks and reports call these.

Each function takes the :class:`~audit_db_core.partitions.PartitionManager` whose method it is.

Example::

    pm = db.partitions
    pm.list_partitions("active")                    # registry rows, oldest first
    pm.default_ranges()                             # [(PartitionBounds(...), rows), …] for rows sitting in DEFAULT
    pm.stats("2026-11").rows                        # an exact count, measured now
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from audit_db_core.errors import PartitionError
from audit_db_core.partitions.bounds import (
    _DAY_ANCHOR,
    DEFAULT_PARTITION,
    PartitionBounds,
    _utc,
    bounds_for,
    resolve_period,
)
from audit_db_core.partitions.results import IndexStats, PartitionInfo, PartitionStats
from audit_db_core.retention import add_period

if TYPE_CHECKING:
    from audit_db_core.partitions.state import ManagerState

# -- the registry ---------------------------------------------------------------------------------------------------

_INFO_FIELDS = (
    "partition_name", "range_start", "range_end", "state", "legal_hold", "legal_hold_reason", "row_count", "bytes",
    "archive_uri", "archive_checksum", "archive_manifest_sha256", "archived_at", "purged_at", "detached",
    "retention_classes", "archive_deleted_at", "created_at",
)
_INFO_SELECT = sql.SQL("SELECT {} FROM audit_partitions").format(
    sql.SQL(", ").join(sql.Identifier(c) for c in _INFO_FIELDS)
)


def _info(row: dict[str, Any]) -> PartitionInfo:
    def utc(v: Any) -> Any:
        return v.astimezone(dt.UTC) if isinstance(v, dt.datetime) else v

    return PartitionInfo(
        name=row["partition_name"],
        start=utc(row["range_start"]),
        end=utc(row["range_end"]),
        **{k: utc(row[k]) for k in _INFO_FIELDS[3:]},
    )


def registered(conn: psycopg.Connection[Any], name: str, *, lock: bool = False) -> PartitionInfo | None:
    """The registry row of partition ``name`` in the caller's transaction (``lock``: FOR UPDATE), or None."""
    cur = conn.cursor(row_factory=dict_row)
    stmt = _INFO_SELECT + sql.SQL(" WHERE partition_name = %s")
    if lock:
        stmt += sql.SQL(" FOR UPDATE")
    row = cur.execute(stmt, (name,)).fetchone()
    return _info(row) if row else None


def registered_among(conn: psycopg.Connection[Any], names: Sequence[str]) -> dict[str, PartitionInfo]:
    """The registry rows of those of ``names`` that are registered, by name: one statement."""
    cur = conn.cursor(row_factory=dict_row)
    rows = cur.execute(_INFO_SELECT + sql.SQL(" WHERE partition_name = ANY(%s)"), (list(names),)).fetchall()
    return {r["partition_name"]: _info(r) for r in rows}


@contextmanager
def single_read(pm: ManagerState, operation: str) -> Iterator[psycopg.Connection[Any]]:
    """A pooled primary connection for one read statement, in autocommit: a single round trip, with no BEGIN and
    COMMIT around it (a lone SELECT needs no transaction). The connection goes back to the pool as it came."""
    with pm._conn(operation) as conn:
        previous = conn.autocommit
        conn.autocommit = True
        try:
            yield conn
        finally:
            if conn.pgconn.transaction_status == psycopg.pq.TransactionStatus.IDLE:  # else broken: the pool drops it
                conn.autocommit = previous


def list_partitions(pm: ManagerState, state: str | None = None) -> list[PartitionInfo]:
    """The registered partitions (of one ``state`` when given), oldest first."""
    with pm._conn("list_partitions") as conn:
        cur = conn.cursor(row_factory=dict_row)
        rows = cur.execute(
            _INFO_SELECT + sql.SQL(" WHERE (%s::text IS NULL OR state = %s) ORDER BY range_start"),
            (state, state),
        ).fetchall()
    return [_info(r) for r in rows]


def find_partition(pm: ManagerState, ts: dt.datetime) -> PartitionInfo | None:
    """The registered partition whose range holds ``ts``: one B-tree probe on ``range_start``."""
    ts = _utc(ts)
    with pm._conn("find_partition") as conn:
        cur = conn.cursor(row_factory=dict_row)
        row = cur.execute(
            _INFO_SELECT + sql.SQL(" WHERE range_start <= %s ORDER BY range_start DESC LIMIT 1"), (ts,)
        ).fetchone()
    if row is None or not (row["range_start"] <= ts < row["range_end"]):
        return None
    return _info(row)


def get(pm: ManagerState, period: Any) -> PartitionInfo:
    """The registered partition of ``period`` (see :func:`resolve_period`); PartitionError when there is none."""
    b = resolve_period(period, pm.interval)
    with pm._conn("get_partition") as conn:
        info = registered(conn, b.name)
    if info is None:
        raise PartitionError(f"no partition {b.name} is registered", operation="get_partition", partition=b.name)
    return info


# -- the DEFAULT partition ------------------------------------------------------------------------------------------


def default_row_count(pm: ManagerState) -> int:
    """Rows in the DEFAULT partition (rows whose period had no partition when they were written)."""
    with pm._conn("default_row_count") as conn:
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(DEFAULT_PARTITION))).fetchone()
    return int(row[0]) if row else 0


def default_ranges(pm: ManagerState) -> list[tuple[PartitionBounds, int]]:
    """The periods that rows in the DEFAULT partition belong to, with their row counts (one grouped scan)."""
    interval = pm.interval
    if interval.months:
        key = sql.SQL(
            "floor((extract(year FROM event_time AT TIME ZONE 'UTC') * 12"
            " + extract(month FROM event_time AT TIME ZONE 'UTC') - 1) / {})::bigint"
        ).format(sql.Literal(interval.months))
    else:
        key = sql.SQL("floor((extract(epoch FROM event_time) - {}) / {})::bigint").format(
            sql.Literal(_DAY_ANCHOR.timestamp()), sql.Literal(interval.days * 86400)
        )
    stmt = sql.SQL("SELECT {k} AS k, count(*), min(event_time) FROM {t} GROUP BY 1 ORDER BY 1").format(
        k=key, t=sql.Identifier(DEFAULT_PARTITION)
    )
    with single_read(pm, "default_ranges") as conn:
        rows = conn.execute(stmt).fetchall()
    return [(bounds_for(first, interval), int(n)) for _, n, first in rows]


# -- one partition, measured ----------------------------------------------------------------------------------------


def stats(pm: ManagerState, period: Any) -> PartitionStats:
    """Rows (an exact count), total bytes (table, indexes, TOAST) and indexes of the registered partition of
    ``period``, measured now. One sequential count per call: meant for one partition at a time.

    Example::

        s = pm.stats("2026-11")
        s.rows, s.bytes, s.indexes          # 1234, 901120, ['audit_log_p2026_11_action_event_time_idx', …]
    """
    info = get(pm, period)
    with pm._conn("partition_stats") as conn:
        if conn.execute("SELECT to_regclass(%s)", (info.name,)).fetchone() == (None,):
            return PartitionStats(info.name, info.row_count or 0, 0, [], [], info.state, exists=False)
        (rows,) = conn.execute(
            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(info.name))).fetchone()  # type: ignore[misc]
        (size,) = conn.execute(
            "SELECT pg_total_relation_size(%s::regclass)", (info.name,)).fetchone()  # type: ignore[misc]
        indexes = [
            IndexStats(name, method, int(nbytes), bool(valid))
            for name, method, nbytes, valid in conn.execute(
                "SELECT c.relname, a.amname, pg_relation_size(c.oid), i.indisvalid FROM pg_index i"
                " JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam"
                " WHERE i.indrelid = %s::regclass ORDER BY c.relname",
                (info.name,),
            ).fetchall()
        ]
    return PartitionStats(info.name, int(rows), int(size), [i.name for i in indexes], indexes, info.state)


# -- the active window ----------------------------------------------------------------------------------------------


def archive_cutoff(pm: ManagerState, now: dt.datetime | None = None) -> dt.datetime:
    """Partitions that end at or before this instant are past the active window."""
    return add_period(_utc(now or dt.datetime.now(dt.UTC)), pm.settings.partitions.active_window, -1)


def archivable_from(pm: ManagerState, period: Any) -> dt.datetime:
    """The instant the period leaves the active window: its end plus ``AUDIT_PARTITIONS__ACTIVE_WINDOW``
    (before then :meth:`archive` refuses it and :meth:`plan` does not list it)."""
    b = resolve_period(period, pm.interval)
    return add_period(b.end, pm.settings.partitions.active_window)


# -- registry against ledger ----------------------------------------------------------------------------------------


def ledger_consistency(pm: ManagerState) -> list[str]:
    """Problems between the registry and the lifecycle ledger (empty when consistent): every registered
    partition has a successful ``create`` entry, every archived or purged one a successful ``archive``, every
    purged one a successful ``purge``."""
    stmt = (
        "SELECT p.partition_name, p.state,"
        " EXISTS (SELECT 1 FROM audit_lifecycle_ledger l WHERE l.partition_name = p.partition_name"
        "         AND l.operation = %(create)s AND l.outcome = 'ok'),"
        " EXISTS (SELECT 1 FROM audit_lifecycle_ledger l WHERE l.partition_name = p.partition_name"
        "         AND l.operation = %(archive)s AND l.outcome = 'ok'),"
        " EXISTS (SELECT 1 FROM audit_lifecycle_ledger l WHERE l.partition_name = p.partition_name"
        "         AND l.operation = %(purge)s AND l.outcome = 'ok')"
        " FROM audit_partitions p ORDER BY p.range_start"
    )
    with pm._conn("ledger_consistency") as conn:
        rows = conn.execute(stmt, {"create": "create", "archive": "archive", "purge": "purge"}).fetchall()
    problems = []
    for name, state, created, archived, purged in rows:
        if not created:
            problems.append(f"{name}: registered, but the ledger has no successful create")
        if state in ("archived", "purged") and not archived:
            problems.append(f"{name}: {state}, but the ledger has no successful archive")
        if state == "purged" and not purged:
            problems.append(f"{name}: purged, but the ledger has no successful purge")
    return problems
