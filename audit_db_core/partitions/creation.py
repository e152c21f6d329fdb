"""Creating partitions: one period (with the rows DEFAULT holds for it), the premake window ahead of the clock, and
every period that has rows in DEFAULT.

Locks: a transaction-level advisory lock serialises creators; the new table is filled and then ATTACHed, which
takes SHARE UPDATE EXCLUSIVE on ``audit_log`` (inserts and reads go on) and ACCESS EXCLUSIVE on
``audit_log_default`` for the transaction (only writes routed to DEFAULT and reads that scan it wait).

Example::

    pm = db.partitions
    pm.premake(3)                                   # this period and the next three exist afterwards
    pm.create_partition("2026-11").rescued_rows     # rows moved out of DEFAULT into the new partition
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from audit_db_core import ledger
from audit_db_core.errors import PartitionError
from audit_db_core.migrate import LOCK_CLASS, LOCK_PARTITIONS
from audit_db_core.partitions.bounds import (
    DEFAULT_PARTITION,
    PARENT_TABLE,
    PartitionBounds,
    bounds_for,
    following,
    resolve_period,
)
from audit_db_core.partitions.inspection import default_ranges, registered, registered_among, single_read
from audit_db_core.partitions.results import CreateResult, PartitionInfo, _elapsed_ms

if TYPE_CHECKING:
    from audit_db_core.partitions.state import ManagerState

logger = logging.getLogger("audit_db_core.partitions")

#: Owner of the audit tables and of every partition (migration 0007_roles): lifecycle DDL needs ownership, and a
#: partition owned by whichever login role created it would be out of reach of the other maintainers.
MAINTAINER_ROLE = "audit_maintainer"


def create_partition(pm: ManagerState, period: Any, *, run_id: str | None = None) -> CreateResult:
    """Create (idempotently) the partition of ``period`` with the parent's indexes, and register it.

    Rows that sit in the DEFAULT partition for this range are moved into the new partition in the same
    transaction (none lost, none duplicated), so creation never fails because DEFAULT holds rows for it.
    Many processes may call it at once: an advisory lock serialises them; one creates, the others find it.
    """
    b = resolve_period(period, pm.interval)
    started = time.perf_counter()
    with pm._conn("create_partition") as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_CLASS, LOCK_PARTITIONS))
        existing = registered(conn, b.name)
        if existing is not None:
            return CreateResult(existing, created=False)
        overlap = overlapping(conn, b)
        if overlap is not None:
            raise PartitionError(
                f"{b.name} [{b.start:%Y-%m-%d}, {b.end:%Y-%m-%d}) overlaps partition {overlap}; "
                "the partition interval was probably changed after partitions were made",
                operation="create_partition",
                partition=b.name,
            )
        rescued = _create_and_attach(conn, b)
        conn.execute(
            "INSERT INTO audit_partitions (partition_name, range_start, range_end) VALUES (%s, %s, %s)",
            (b.name, b.start, b.end),
        )
        ms = _elapsed_ms(started)
        ledger.record(conn, "create", b.name, run_id=run_id, duration_ms=ms,
                      details={"start": b.start, "end": b.end, "rescued_rows": rescued})
        if rescued:
            ledger.record(conn, "rescue", b.name, run_id=run_id, rows=rescued,
                          details={"from": DEFAULT_PARTITION})
        info = registered(conn, b.name)
    assert info is not None
    logger.info(
        "partition created",
        extra={"audit": {"partition": b.name, "start": str(b.start), "rescued_rows": rescued, "ms": ms}},
    )
    return CreateResult(info, created=True, rescued_rows=rescued, duration_ms=ms)


def _create_and_attach(conn: psycopg.Connection[Any], b: PartitionBounds) -> int:
    """Build the table apart, move DEFAULT rows of its range into it, ATTACH it. Returns the rows moved."""
    table = sql.Identifier(b.name)
    in_range = sql.SQL("event_time >= {} AND event_time < {}").format(sql.Literal(b.start), sql.Literal(b.end))
    conn.execute(sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)").format(
        table, sql.Identifier(PARENT_TABLE)))
    conn.execute(sql.SQL("ALTER TABLE {} OWNER TO {}").format(table, sql.Identifier(MAINTAINER_ROLE)))
    # With this constraint in place ATTACH need not scan the new table to validate it.
    conn.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} CHECK ({})").format(
        table, sql.Identifier(f"{b.name}_bounds"), in_range))
    rescued = _move_default_rows(conn, b, in_range)
    conn.execute(sql.SQL("ALTER TABLE {} ATTACH PARTITION {} FOR VALUES FROM ({}) TO ({})").format(
        sql.Identifier(PARENT_TABLE), table, sql.Literal(b.start), sql.Literal(b.end)))
    conn.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(table, sql.Identifier(f"{b.name}_bounds")))
    # The parent's TRUNCATE trigger does not fire for a TRUNCATE naming the partition itself.
    conn.execute(sql.SQL(
        "CREATE TRIGGER {} BEFORE TRUNCATE ON {} FOR EACH STATEMENT EXECUTE FUNCTION audit_reject_modification()"
    ).format(sql.Identifier(f"{b.name}_no_truncate"), table))
    return rescued


def _move_default_rows(conn: psycopg.Connection[Any], b: PartitionBounds, in_range: sql.Composable) -> int:
    """Move the rows of ``b``'s range from DEFAULT into the (not yet attached) table ``b.name``; the count moved."""
    table, default = sql.Identifier(b.name), sql.Identifier(DEFAULT_PARTITION)
    # Writers routed to DEFAULT wait from here to commit; writers to every other partition do not.
    conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(default))
    moved = conn.execute(sql.SQL("INSERT INTO {} SELECT * FROM {} WHERE {}").format(table, default, in_range))
    rescued = moved.rowcount or 0
    if rescued:
        # The append-only trigger is disabled only inside this transaction, under the exclusive lock: no other
        # session can observe it disabled, and the rows deleted are exactly the rows just copied.
        trigger = sql.Identifier("audit_log_append_only")
        conn.execute(sql.SQL("ALTER TABLE {} DISABLE TRIGGER {}").format(default, trigger))
        deleted = conn.execute(sql.SQL("DELETE FROM {} WHERE {}").format(default, in_range)).rowcount
        conn.execute(sql.SQL("ALTER TABLE {} ENABLE TRIGGER {}").format(default, trigger))
        if deleted != rescued:
            raise PartitionError(
                f"rescue of {b.name}: copied {rescued} rows but removed {deleted} from DEFAULT; rolled back",
                operation="create_partition", partition=b.name,
            )
    return rescued


def premake(
    pm: ManagerState, n: int | None = None, *, now: dt.datetime | None = None, run_id: str | None = None
) -> list[CreateResult]:
    """Ensure the partition of ``now`` and the ``n`` following ones exist (``n`` defaults to settings).

    One statement finds the registered ones; only the missing ones go through :func:`create_partition` (its lock,
    its re-check), so a premake with nothing to make costs one round trip."""
    window = premake_window(pm, n, now)
    with single_read(pm, "premake") as conn:
        found = registered_among(conn, [b.name for b in window])
    return complete_window(pm, window, found, run_id=run_id)


def premake_window(pm: ManagerState, n: int | None = None, now: dt.datetime | None = None) -> list[PartitionBounds]:
    """The period of ``now`` and the ``n`` following ones (``n`` defaults to ``AUDIT_PARTITIONS__PREMAKE``)."""
    count = pm.settings.partitions.premake if n is None else n
    if count < 0:
        raise PartitionError("premake count must be >= 0", operation="premake")
    current = bounds_for(now or dt.datetime.now(dt.UTC), pm.interval)
    return [following(current, pm.interval, i) for i in range(count + 1)]


def complete_window(
    pm: ManagerState, window: list[PartitionBounds], found: dict[str, PartitionInfo], *, run_id: str | None
) -> list[CreateResult]:
    """One result per period of ``window``: the registry row ``found`` for it (what :func:`create_partition` would
    answer for a registered period), else a partition created now."""
    return [CreateResult(found[b.name], created=False) if b.name in found else create_partition(pm, b, run_id=run_id)
            for b in window]


def rescue_default(pm: ManagerState, *, run_id: str | None = None) -> list[CreateResult]:
    """Give every period that has rows in DEFAULT its partition (moving the rows). Periods whose partition
    was archived and detached cannot take rows any more: they are left and reported by :meth:`plan`."""
    results = []
    for bounds, _rows in default_ranges(pm):
        with pm._conn("rescue_default") as conn:
            if overlapping(conn, bounds) is not None:
                continue
        results.append(create_partition(pm, bounds, run_id=run_id))
    return results


def overlapping(conn: psycopg.Connection[Any], b: PartitionBounds) -> str | None:
    """The registered partition whose range overlaps ``b``, or None."""
    row = conn.execute(
        "SELECT partition_name FROM audit_partitions WHERE tstzrange(range_start, range_end) && tstzrange(%s, %s)"
        " LIMIT 1",
        (b.start, b.end),
    ).fetchone()
    return row[0] if row else None
