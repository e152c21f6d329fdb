"""Partition lifecycle of ``audit_log``: creation (with rescue of DEFAULT rows), archival, retention purge,
legal holds, index maintenance, restore — every step recorded in the registry and the lifecycle ledger.

Bounds follow the configured interval and are computed in UTC: monthly ``audit_log_p2026_11`` covers
``[2026-11-01, 2026-12-01)``; quarterly ``audit_log_p2026_q4``; yearly ``audit_log_p2026``; other month counts are
named after their first month; day-based intervals (daily, weekly, "<n> days") after their first day,
``audit_log_p2026_11_30``, aligned on Monday 1970-01-05 so that weeks start on Mondays.

States: ``active`` (writable) → ``archived`` (a verified Parquet archive exists; the partition is read-only or
detached) → ``purged`` (dropped after retention; the archive is kept until the archive retention passes).

Locks (see docs/guides/lifecycle.md):

- create: a transaction-level advisory lock serialises creators; the new table is filled and then ATTACHed, which
  takes SHARE UPDATE EXCLUSIVE on ``audit_log`` (inserts and reads go on) and ACCESS EXCLUSIVE on
  ``audit_log_default`` for the transaction (only writes routed to DEFAULT and reads that scan it wait).
- archive: SHARE ROW EXCLUSIVE on the one partition for the export (late inserts into that period wait; a second
  archiver of the same period waits), REPEATABLE READ so the export and its verification see one snapshot.
- detach (archive mode "detach") and purge: ACCESS EXCLUSIVE on ``audit_log`` for the instant of the DETACH or
  DROP (catalog changes; no data is read), with a lock timeout.

Example::

    pm = db.partitions
    pm.premake(3)                                # this period and the next three exist afterwards
    pm.plan()                                    # what maintenance would do now, without doing it
    pm.archive("2026-07")                        # export + verify + read-only, once past the active window
    pm.purge(dry_run=True).decisions             # what a purge would drop, and why
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from audit_db_core import ledger
from audit_db_core.config import AuditSettings, Period
from audit_db_core.errors import ArchiveError, AuditError, ComplianceError, ConfigurationError, PartitionError
from audit_db_core.migrate import LOCK_CLASS, LOCK_PARTITIONS
from audit_db_core.retention import (
    PurgeDecision,
    PurgeReport,
    add_period,
    check_against_active_window,
    retention_for,
)

if TYPE_CHECKING:
    from audit_db_core.archive import ArchiveManifest, ArchiveStore

logger = logging.getLogger("audit_db_core.partitions")

PARENT_TABLE = "audit_log"
DEFAULT_PARTITION = "audit_log_default"
#: Owner of the audit tables and of every partition (migration 0007_roles): lifecycle DDL needs ownership, and a
#: partition owned by whichever login role created it would be out of reach of the other maintainers.
MAINTAINER_ROLE = "audit_maintainer"
_DAY_ANCHOR = dt.datetime(1970, 1, 5, tzinfo=dt.UTC)  # a Monday


class ConnectionSource(Protocol):
    def connection(self, *, operation: str = ...) -> Any: ...

    def dedicated_connection(self, *, operation: str = ..., autocommit: bool = ...) -> Any: ...


# -- bounds ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PartitionBounds:
    name: str
    start: dt.datetime
    end: dt.datetime

    def contains(self, ts: dt.datetime) -> bool:
        return self.start <= ts < self.end


def _utc(ts: dt.datetime) -> dt.datetime:
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise PartitionError("partition times must be timezone-aware", operation="partition_bounds")
    return ts.astimezone(dt.UTC)


def _month_start(index: int) -> dt.datetime:
    return dt.datetime(index // 12, index % 12 + 1, 1, tzinfo=dt.UTC)


def bounds_for(ts: dt.datetime, interval: Period) -> PartitionBounds:
    """The partition of ``interval`` that holds ``ts`` (UTC)."""
    ts = _utc(ts)
    if interval.months:
        index = ts.year * 12 + ts.month - 1
        first = index - index % interval.months
        start, end = _month_start(first), _month_start(first + interval.months)
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


_KEY = re.compile(
    r"^(?:audit_log_p)?(?P<y>\d{4})(?:[-_](?:(?P<q>[qQ][1-4])|(?P<m>\d{2})(?:[-_](?P<d>\d{2}))?))?$"
)


def resolve_period(period: Any, interval: Period) -> PartitionBounds:
    """The partition a caller names: a period start (aware ``datetime``), a ``date``, a key such as ``2026-11``,
    ``2026-Q4``, ``2026`` or ``2026-11-23``, or a partition name. It must be aligned to the interval's start."""
    if isinstance(period, PartitionBounds):
        return period
    if isinstance(period, dt.datetime):
        start = _utc(period)
    elif isinstance(period, dt.date):
        start = dt.datetime(period.year, period.month, period.day, tzinfo=dt.UTC)
    elif isinstance(period, str):
        m = _KEY.match(period.strip())
        if not m:
            raise PartitionError(
                f"period {period!r} is not a period key: use YYYY-MM, YYYY-Qn, YYYY, YYYY-MM-DD or a partition name",
                operation="resolve_period",
            )
        month = (int(m["q"][1]) - 1) * 3 + 1 if m["q"] else int(m["m"] or 1)
        try:
            start = dt.datetime(int(m["y"]), month, int(m["d"] or 1), tzinfo=dt.UTC)
        except ValueError as exc:
            raise PartitionError(f"period {period!r}: {exc}", operation="resolve_period") from None
    else:
        raise PartitionError(
            f"period must be a datetime, a date or a period key, not {type(period).__name__}",
            operation="resolve_period",
        )
    bounds = bounds_for(start, interval)
    if bounds.start != start:
        raise PartitionError(
            f"period {period!s} is not aligned to the {interval} interval: the period holding it starts at "
            f"{bounds.start:%Y-%m-%d %H:%M} UTC ({bounds.name})",
            operation="resolve_period",
            partition=bounds.name,
        )
    return bounds


# -- results --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PartitionInfo:
    """One registry row."""

    name: str
    start: dt.datetime
    end: dt.datetime
    state: str
    legal_hold: bool
    legal_hold_reason: str | None
    row_count: int | None
    bytes: int | None
    archive_uri: str | None
    archive_checksum: str | None
    archive_manifest_sha256: str | None
    archived_at: dt.datetime | None
    purged_at: dt.datetime | None
    detached: bool
    retention_classes: list[list[str]] | None
    archive_deleted_at: dt.datetime | None
    created_at: dt.datetime | None

    def to_dict(self) -> dict[str, Any]:
        return {k: (v.isoformat() if isinstance(v, dt.datetime) else v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class CreateResult:
    partition: PartitionInfo
    created: bool
    rescued_rows: int = 0
    duration_ms: float = 0.0

    @property
    def name(self) -> str:
        return self.partition.name


@dataclass(frozen=True)
class ArchiveResult:
    partition: str
    status: str  # "archived" | "already_archived"
    archive_uri: str
    rows: int
    bytes: int
    content_digest: str
    manifest_sha256: str
    files: int
    archive_bytes: int
    duration_ms: float
    detached: bool


@dataclass(frozen=True)
class RestoreResult:
    partition: str
    table: str
    rows: int
    status: str  # "restored" | "already_restored"


@dataclass(frozen=True)
class PlannedAction:
    kind: str  # create | rescue | archive | purge | delete_archive | optimize | late
    partition: str
    start: dt.datetime
    end: dt.datetime
    reason: str
    rows: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: (v.isoformat() if isinstance(v, dt.datetime) else v) for k, v in asdict(self).items()}


@dataclass
class MaintenancePlan:
    now: dt.datetime
    actions: list[PlannedAction] = field(default_factory=list)

    def of(self, kind: str) -> list[PlannedAction]:
        return [a for a in self.actions if a.kind == kind]

    def to_dict(self) -> dict[str, Any]:
        return {"now": self.now.isoformat(), "actions": [a.to_dict() for a in self.actions]}


@dataclass(frozen=True)
class IndexStats:
    """One index of a partition, from the catalog."""

    name: str
    method: str  # btree | brin | gin | …
    bytes: int
    valid: bool


@dataclass(frozen=True)
class PartitionStats:
    """What a partition holds now, measured in the database (not the registry's last recorded numbers).

    ``exists`` is False once the table is gone (purged, or detached and dropped elsewhere): ``rows`` then is the
    registry's last count and ``bytes`` 0."""

    name: str
    rows: int
    bytes: int
    indexes: list[str]
    index_details: list[IndexStats] = field(default_factory=list)
    state: str = "active"
    exists: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class OptimizeStep:
    partition: str
    action: str  # analyze | brin_summarize | reindex | stats
    target: str
    duration_ms: float
    detail: str = ""


@dataclass
class OptimizeReport:
    steps: list[OptimizeStep] = field(default_factory=list)
    bloat_check: str = "pgstattuple"

    def to_dict(self) -> dict[str, Any]:
        return {"bloat_check": self.bloat_check, "steps": [asdict(s) for s in self.steps]}


# -- SQL fragments --------------------------------------------------------------------------------------------------

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


def _not_future(now: dt.datetime | None, operation: str) -> dt.datetime:
    """``now`` for an operation that changes data: it may be earlier than the clock, never later (a future
    ``now`` would let retention or the active window pass early). Dry runs and plans may look ahead."""
    real = dt.datetime.now(dt.UTC)
    if now is None:
        return real
    now = _utc(now)
    if now > real + dt.timedelta(minutes=5):
        raise PartitionError(f"now={now:%Y-%m-%d %H:%M} UTC is in the future; {operation} only looks ahead as a "
                             "dry run", operation=operation)
    return now


def _elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


class PartitionManager:
    """Creates, rescues, archives, purges, holds, optimizes and restores partitions."""

    def __init__(
        self,
        connections: ConnectionSource,
        settings: AuditSettings,
        *,
        on_removed: Callable[[PartitionBounds], None] | None = None,
    ) -> None:
        self._connections = connections
        self.settings = settings
        self._on_removed = on_removed  # rows of these bounds left the log (the query cache forgets them)

    def _removed(self, info: PartitionInfo) -> None:
        if self._on_removed is not None:
            try:
                self._on_removed(PartitionBounds(info.name, info.start, info.end))
            except Exception:
                logger.exception("cache invalidation after removing %s failed", info.name)

    @property
    def interval(self) -> Period:
        return self.settings.partitions.interval

    @contextmanager
    def _conn(self, operation: str) -> Iterator[psycopg.Connection[Any]]:
        with self._connections.connection(operation=operation) as conn:
            yield conn

    def archive_store(self) -> ArchiveStore:
        """The configured :class:`ArchiveStore` (``AUDIT_ARCHIVE__ROOT_URI``)."""
        from audit_db_core.archive import ArchiveStore

        cfg = self.settings.archive
        if not cfg.root_uri:
            raise ConfigurationError(
                "settings", [("AUDIT_ARCHIVE__ROOT_URI", "is not set: archival, purge and restore need the archive root")]
            )
        return ArchiveStore(cfg.root_uri, rows_per_file=cfg.rows_per_file, batch_rows=cfg.batch_rows)

    # -- registry ------------------------------------------------------------------------------------------------

    def list_partitions(self, state: str | None = None) -> list[PartitionInfo]:
        with self._conn("list_partitions") as conn:
            cur = conn.cursor(row_factory=dict_row)
            rows = cur.execute(
                _INFO_SELECT + sql.SQL(" WHERE (%s::text IS NULL OR state = %s) ORDER BY range_start"),
                (state, state),
            ).fetchall()
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

    def get(self, period: Any) -> PartitionInfo:
        """The registered partition of ``period`` (see :func:`resolve_period`); PartitionError when there is none."""
        b = resolve_period(period, self.interval)
        with self._conn("get_partition") as conn:
            info = self._registered(conn, b.name)
        if info is None:
            raise PartitionError(f"no partition {b.name} is registered", operation="get_partition", partition=b.name)
        return info

    @staticmethod
    def _registered(conn: psycopg.Connection[Any], name: str, *, lock: bool = False) -> PartitionInfo | None:
        cur = conn.cursor(row_factory=dict_row)
        stmt = _INFO_SELECT + sql.SQL(" WHERE partition_name = %s")
        if lock:
            stmt += sql.SQL(" FOR UPDATE")
        row = cur.execute(stmt, (name,)).fetchone()
        return _info(row) if row else None

    def default_row_count(self) -> int:
        with self._conn("default_row_count") as conn:
            row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(DEFAULT_PARTITION))).fetchone()
        return int(row[0]) if row else 0

    def default_ranges(self) -> list[tuple[PartitionBounds, int]]:
        """The periods that rows in the DEFAULT partition belong to, with their row counts (one grouped scan)."""
        if self.interval.months:
            key = sql.SQL(
                "floor((extract(year FROM event_time AT TIME ZONE 'UTC') * 12"
                " + extract(month FROM event_time AT TIME ZONE 'UTC') - 1) / {})::bigint"
            ).format(sql.Literal(self.interval.months))
        else:
            key = sql.SQL("floor((extract(epoch FROM event_time) - {}) / {})::bigint").format(
                sql.Literal(_DAY_ANCHOR.timestamp()), sql.Literal(self.interval.days * 86400)
            )
        stmt = sql.SQL("SELECT {k} AS k, count(*), min(event_time) FROM {t} GROUP BY 1 ORDER BY 1").format(
            k=key, t=sql.Identifier(DEFAULT_PARTITION)
        )
        with self._conn("default_ranges") as conn:
            rows = conn.execute(stmt).fetchall()
        return [(bounds_for(first, self.interval), int(n)) for _, n, first in rows]

    # -- creation ------------------------------------------------------------------------------------------------

    def create_partition(self, period: Any, *, run_id: str | None = None) -> CreateResult:
        """Create (idempotently) the partition of ``period`` with the parent's indexes, and register it.

        Rows that sit in the DEFAULT partition for this range are moved into the new partition in the same
        transaction (none lost, none duplicated), so creation never fails because DEFAULT holds rows for it.
        Many processes may call it at once: an advisory lock serialises them; one creates, the others find it.
        """
        b = resolve_period(period, self.interval)
        started = time.perf_counter()
        with self._conn("create_partition") as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_CLASS, LOCK_PARTITIONS))
            existing = self._registered(conn, b.name)
            if existing is not None:
                return CreateResult(existing, created=False)
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
            rescued = self._create_and_attach(conn, b)
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
            info = self._registered(conn, b.name)
        assert info is not None
        logger.info(
            "partition created",
            extra={"audit": {"partition": b.name, "start": str(b.start), "rescued_rows": rescued, "ms": ms}},
        )
        return CreateResult(info, created=True, rescued_rows=rescued, duration_ms=ms)

    def _create_and_attach(self, conn: psycopg.Connection[Any], b: PartitionBounds) -> int:
        """Build the table apart, move DEFAULT rows of its range into it, ATTACH it. Returns the rows moved."""
        table, default = sql.Identifier(b.name), sql.Identifier(DEFAULT_PARTITION)
        in_range = sql.SQL("event_time >= {} AND event_time < {}").format(sql.Literal(b.start), sql.Literal(b.end))
        conn.execute(sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)").format(
            table, sql.Identifier(PARENT_TABLE)))
        conn.execute(sql.SQL("ALTER TABLE {} OWNER TO {}").format(table, sql.Identifier(MAINTAINER_ROLE)))
        # With this constraint in place ATTACH need not scan the new table to validate it.
        conn.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} CHECK ({})").format(
            table, sql.Identifier(f"{b.name}_bounds"), in_range))
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
        conn.execute(sql.SQL("ALTER TABLE {} ATTACH PARTITION {} FOR VALUES FROM ({}) TO ({})").format(
            sql.Identifier(PARENT_TABLE), table, sql.Literal(b.start), sql.Literal(b.end)))
        conn.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(table, sql.Identifier(f"{b.name}_bounds")))
        # The parent's TRUNCATE trigger does not fire for a TRUNCATE naming the partition itself.
        conn.execute(sql.SQL(
            "CREATE TRIGGER {} BEFORE TRUNCATE ON {} FOR EACH STATEMENT EXECUTE FUNCTION audit_reject_modification()"
        ).format(sql.Identifier(f"{b.name}_no_truncate"), table))
        return rescued

    def premake(self, n: int | None = None, *, now: dt.datetime | None = None, run_id: str | None = None) -> list[
        CreateResult
    ]:
        """Ensure the partition of ``now`` and the ``n`` following ones exist (``n`` defaults to settings)."""
        count = self.settings.partitions.premake if n is None else n
        if count < 0:
            raise PartitionError("premake count must be >= 0", operation="premake")
        current = bounds_for(now or dt.datetime.now(dt.UTC), self.interval)
        return [self.create_partition(following(current, self.interval, i), run_id=run_id) for i in range(count + 1)]

    def rescue_default(self, *, run_id: str | None = None) -> list[CreateResult]:
        """Give every period that has rows in DEFAULT its partition (moving the rows). Periods whose partition
        was archived and detached cannot take rows any more: they are left and reported by :meth:`plan`."""
        results = []
        for bounds, _rows in self.default_ranges():
            with self._conn("rescue_default") as conn:
                if self._overlapping(conn, bounds) is not None:
                    continue
            results.append(self.create_partition(bounds, run_id=run_id))
        return results

    @staticmethod
    def _overlapping(conn: psycopg.Connection[Any], b: PartitionBounds) -> str | None:
        row = conn.execute(
            "SELECT partition_name FROM audit_partitions WHERE tstzrange(range_start, range_end) && tstzrange(%s, %s)"
            " LIMIT 1",
            (b.start, b.end),
        ).fetchone()
        return row[0] if row else None

    # -- plan ----------------------------------------------------------------------------------------------------

    def plan(self, now: dt.datetime | None = None) -> MaintenancePlan:
        """What maintenance would do at ``now``, without doing it."""
        now = _utc(now or dt.datetime.now(dt.UTC))
        plan = MaintenancePlan(now)
        parts = {p.name: p for p in self.list_partitions()}
        current = bounds_for(now, self.interval)
        for i in range(self.settings.partitions.premake + 1):
            b = following(current, self.interval, i)
            if b.name not in parts:
                plan.actions.append(PlannedAction("create", b.name, b.start, b.end, "inside the premake window"))
        for b, rows in self.default_ranges():
            owner = next((p for p in parts.values() if p.start < b.end and b.start < p.end), None)
            if owner is None:
                plan.actions.append(PlannedAction("rescue", b.name, b.start, b.end, "rows sit in DEFAULT", rows))
            else:
                plan.actions.append(PlannedAction(
                    "late", owner.name, b.start, b.end, f"rows sit in DEFAULT for {owner.state} partition", rows))
        cutoff = self.archive_cutoff(now)
        for p in parts.values():
            if p.state == "active" and p.end <= cutoff:
                plan.actions.append(PlannedAction("archive", p.name, p.start, p.end, "past the active window"))
            elif p.state == "active":
                plan.actions.append(PlannedAction("optimize", p.name, p.start, p.end, "active partition"))
        for d in self._purge_decisions(now, verify=False):
            if d.action in ("purge", "delete_archive"):
                plan.actions.append(PlannedAction(d.action, d.partition, d.range_start, d.range_end, d.reason, d.rows))
        return plan

    def archive_cutoff(self, now: dt.datetime | None = None) -> dt.datetime:
        """Partitions that end at or before this instant are past the active window."""
        return add_period(_utc(now or dt.datetime.now(dt.UTC)), self.settings.partitions.active_window, -1)

    # -- archival ------------------------------------------------------------------------------------------------

    def archive(
        self,
        period: Any,
        *,
        now: dt.datetime | None = None,
        run_id: str | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> ArchiveResult:
        """Export the partition of ``period`` to Parquet, verify it against the database, then make the partition
        read-only (or detach it) and mark it ``archived`` — in that order, so the registry never claims an
        archive that is not there. Re-running on an archived period is a no-op."""
        b = resolve_period(period, self.interval)
        self.get(b)  # an unknown period is the caller's mistake, not a failed archival to ledger
        try:
            return self._archive(b, now, run_id, progress)
        except AuditError as exc:
            self._record_failure("archive", b.name, exc, run_id)
            raise

    def _archive(
        self, b: PartitionBounds, now: dt.datetime | None, run_id: str | None,
        progress: Callable[[int], None] | None,
    ) -> ArchiveResult:
        from audit_db_core.archive import table_digest

        info = self.get(b)
        if info.state != "active":
            return self._already_archived(info)
        cutoff = self.archive_cutoff(_not_future(now, "archive"))
        if info.end > cutoff:
            raise PartitionError(
                f"{b.name} is still inside the active window ({self.settings.partitions.active_window}); it can be "
                f"archived once it ends before {cutoff:%Y-%m-%d %H:%M} UTC",
                operation="archive", partition=b.name,
            )
        store = self.archive_store()
        store.check_writable()
        started = time.perf_counter()
        # autocommit, with an explicit BEGIN: the isolation level must be set by the transaction's first statement
        with self._connections.dedicated_connection(operation="archive", autocommit=True) as conn:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            try:
                conn.execute(sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(sql.Identifier(b.name)))
                if self._registered(conn, b.name, lock=True).state != "active":  # type: ignore[union-attr]
                    conn.execute("ROLLBACK")
                    return self._already_archived(self.get(b))
                rows, _first, _last, digest = table_digest(conn, b.name)
                manifest = store.read_manifest(b.name)
                if manifest is not None and (manifest.row_count, manifest.content_digest) != (rows, digest):
                    store.delete(b.name)  # left by an earlier run over other data: not this partition's archive
                    manifest = None
                if manifest is None:
                    manifest = store.export(conn, b.name, partition=b.name, range_start=b.start,
                                            range_end=b.end, progress=progress)
                check = store.verify(manifest, expected_rows=rows, expected_digest=digest)
                if not check.ok:
                    raise ArchiveError(f"archive of {b.name} failed verification: {'; '.join(check.problems)}",
                                       operation="archive", partition=b.name)
                size = self._finish_archive(conn, b, manifest, store, rows, digest, started, run_id)
                # The period's signed digests go next to its archive, so verification outlives the table.
                from audit_db_core.integrity import write_archive_copy

                write_archive_copy(conn, b, store, run_id=run_id)
                conn.execute("COMMIT")
            except BaseException:
                if not conn.closed and not conn.broken:
                    conn.execute("ROLLBACK")
                raise
        detached = self._detach_if_configured(b, run_id)
        ms = _elapsed_ms(started)
        logger.info("partition archived", extra={"audit": {"partition": b.name, "rows": rows, "ms": ms}})
        return ArchiveResult(
            partition=b.name, status="archived", archive_uri=store.manifest_uri(b.name), rows=rows, bytes=size,
            content_digest=digest, manifest_sha256=manifest.sha256, files=len(manifest.files),
            archive_bytes=sum(f.bytes for f in manifest.files), duration_ms=ms, detached=detached,
        )

    def _finish_archive(
        self, conn: psycopg.Connection[Any], b: PartitionBounds, manifest: ArchiveManifest, store: ArchiveStore,
        rows: int, digest: str, started: float, run_id: str | None,
    ) -> int:
        table = sql.Identifier(b.name)
        classes = [list(r) for r in conn.execute(
            sql.SQL("SELECT DISTINCT data_classification, retention_policy FROM {} ORDER BY 1, 2").format(table))]
        (size,) = conn.execute("SELECT pg_total_relation_size(%s::regclass)", (b.name,)).fetchone()  # type: ignore[misc]
        conn.execute(sql.SQL(
            "CREATE TRIGGER {} BEFORE INSERT ON {} FOR EACH ROW EXECUTE FUNCTION audit_reject_archived_insert()"
        ).format(sql.Identifier(f"{b.name}_archived"), table))
        conn.execute(
            "UPDATE audit_partitions SET state = 'archived', archive_uri = %s, archive_checksum = %s,"
            " archive_manifest_sha256 = %s, archive_verified_at = now(), archived_at = now(), row_count = %s,"
            " bytes = %s, retention_classes = %s, updated_at = now() WHERE partition_name = %s",
            (store.manifest_uri(b.name), digest, manifest.sha256, rows, size, Jsonb(classes), b.name),
        )
        ledger.record(conn, "archive", b.name, run_id=run_id, rows=rows, byte_count=size, checksum=digest,
                      duration_ms=_elapsed_ms(started),
                      details={"archive_uri": store.manifest_uri(b.name), "manifest_sha256": manifest.sha256,
                               "files": len(manifest.files), "archive_bytes": sum(f.bytes for f in manifest.files)})
        return int(size)

    def _already_archived(self, info: PartitionInfo) -> ArchiveResult:
        if info.state == "archived":
            self._detach_if_configured(resolve_period(info.start, self.interval), None)
        return ArchiveResult(
            partition=info.name, status=f"already_{info.state}", archive_uri=info.archive_uri or "",
            rows=info.row_count or 0, bytes=info.bytes or 0, content_digest=info.archive_checksum or "",
            manifest_sha256=info.archive_manifest_sha256 or "", files=0, archive_bytes=0, duration_ms=0.0,
            detached=info.detached,
        )

    def _detach_if_configured(self, b: PartitionBounds, run_id: str | None) -> bool:
        if self.settings.archive.mode != "detach":
            return False
        return self.detach_partition(b, run_id=run_id)

    def archive_eligible(self, *, now: dt.datetime | None = None, run_id: str | None = None) -> list[ArchiveResult]:
        """Archive every active partition past the active window, oldest first."""
        return [self.archive(a.start, now=now, run_id=run_id) for a in self.plan(now).of("archive")]

    def detach_partition(self, period: Any, *, run_id: str | None = None) -> bool:
        """Detach an *archived* partition from ``audit_log``. Returns False when it was detached already. An
        active partition is refused: detaching would hide live data. PostgreSQL cannot detach CONCURRENTLY while a
        DEFAULT partition exists, so this takes ACCESS EXCLUSIVE on ``audit_log`` for the instant of the DETACH
        (a catalog change, no data is read), waiting at most 30 s for it."""
        info = self.get(period)
        if info.state != "archived":
            raise ComplianceError(f"{info.name} is {info.state}: only an archived partition may be detached",
                                  operation="detach_partition", partition=info.name)
        if info.detached:
            return False
        started = time.perf_counter()
        with self._connections.dedicated_connection(operation="detach_partition", autocommit=True) as conn:
            attached = conn.execute(
                "SELECT 1 FROM pg_inherits WHERE inhrelid = to_regclass(%s) AND inhparent = %s::regclass",
                (info.name, PARENT_TABLE),
            ).fetchone()
            with conn.transaction():
                if attached:
                    conn.execute("SET LOCAL lock_timeout = '30s'")
                    conn.execute(sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(
                        sql.Identifier(PARENT_TABLE), sql.Identifier(info.name)))
                conn.execute("UPDATE audit_partitions SET detached = true, updated_at = now() WHERE partition_name = %s",
                             (info.name,))
                ledger.record(conn, "detach", info.name, run_id=run_id, duration_ms=_elapsed_ms(started))
        self._removed(info)
        return True

    def restore(self, period: Any, *, table: str | None = None, run_id: str | None = None) -> RestoreResult:
        """Load an archived period back from its archive into a plain table (``audit_restore_<partition>`` by
        default) for an investigation. The archive is verified first; the restored rows' digest must match."""
        from audit_db_core.archive import table_digest

        info = self.get(period)
        if info.state == "active" or not info.archive_uri:
            raise PartitionError(f"{info.name} has no archive (state {info.state})", operation="restore",
                                 partition=info.name)
        store = self.archive_store()
        manifest = store.read_manifest(info.name)
        if manifest is None or manifest.sha256 != info.archive_manifest_sha256:
            raise ArchiveError(f"the archive of {info.name} is missing or its manifest changed ({info.archive_uri})",
                               operation="restore", partition=info.name)
        target = table or f"audit_restore_{info.name}"
        with self._connections.dedicated_connection(operation="restore") as conn, conn.transaction():
            if conn.execute("SELECT to_regclass(%s)", (target,)).fetchone() != (None,):
                rows, _a, _b, digest = table_digest(conn, target)
                if digest == manifest.content_digest:
                    return RestoreResult(info.name, target, rows, "already_restored")
                raise PartitionError(f"table {target} exists and does not hold this archive; choose another table",
                                     operation="restore", partition=info.name)
            rows = store.restore(conn, manifest, target)
            conn.execute(sql.SQL("ALTER TABLE {} OWNER TO {}").format(
                sql.Identifier(target), sql.Identifier(MAINTAINER_ROLE)))
            ledger.record(conn, "restore", info.name, run_id=run_id, rows=rows, checksum=manifest.content_digest,
                          details={"table": target})
        return RestoreResult(info.name, target, rows, "restored")

    # -- legal holds ---------------------------------------------------------------------------------------------

    def hold(self, period: Any, reason: str, *, run_id: str | None = None) -> PartitionInfo:
        """Place a legal hold: the period is never purged and its archive never deleted until released."""
        if not isinstance(reason, str) or not reason.strip():
            raise PartitionError("a legal hold needs a reason (case number, requester)", operation="hold")
        return self._set_hold(period, True, reason.strip(), run_id)

    def release(self, period: Any, reason: str, *, run_id: str | None = None) -> PartitionInfo:
        """Release a legal hold (the reason is kept in the ledger)."""
        if not isinstance(reason, str) or not reason.strip():
            raise PartitionError("releasing a legal hold needs a reason", operation="release")
        return self._set_hold(period, False, reason.strip(), run_id)

    def _set_hold(self, period: Any, on: bool, reason: str, run_id: str | None) -> PartitionInfo:
        b = resolve_period(period, self.interval)
        op = "hold" if on else "release"
        with self._conn(op) as conn, conn.transaction():
            info = self._registered(conn, b.name, lock=True)
            if info is None:
                raise PartitionError(f"no partition {b.name} is registered", operation=op, partition=b.name)
            conn.execute(
                "UPDATE audit_partitions SET legal_hold = %s, legal_hold_reason = %s, updated_at = now()"
                " WHERE partition_name = %s",
                (on, reason if on else None, b.name),
            )
            ledger.record(conn, op, b.name, run_id=run_id, details={"reason": reason})
            out = self._registered(conn, b.name)
        assert out is not None
        return out

    # -- retention purge -----------------------------------------------------------------------------------------

    def purge(self, now: dt.datetime | None = None, *, dry_run: bool = True, run_id: str | None = None) -> PurgeReport:
        """Drop partitions past retention whose archive verifies and that are not on hold; then delete archives
        past the archive retention. ``dry_run`` (the default) only reports what would go and why."""
        now = _utc(now or dt.datetime.now(dt.UTC)) if dry_run else _not_future(now, "purge")
        check_against_active_window(self.settings.retention, self.settings.partitions.active_window)
        report = PurgeReport(now=now, dry_run=dry_run, decisions=self._purge_decisions(now, verify=True))
        if dry_run:
            return report
        for d in report.of("purge"):
            self._drop(d, run_id)  # each archive was just verified for this decision
            report.purged.append(d.partition)
        for d in report.of("delete_archive"):
            self._delete_archive(d.partition, run_id)
            report.archives_deleted.append(d.partition)
        return report

    def _purge_decisions(
        self, now: dt.datetime, *, verify: bool, only: str | None = None
    ) -> list[PurgeDecision]:
        decisions = []
        cutoff = self.archive_cutoff(now)
        # A purge never drops a partition without reading its archive back: no archive root, no purge.
        store = self.archive_store() if verify else None
        for p in self.list_partitions():
            if only is not None and p.name != only:
                continue
            def decide(action: str, reason: str, until: dt.datetime | None = None, p: PartitionInfo = p) -> None:
                decisions.append(PurgeDecision(p.name, action, reason, p.start, p.end, until, p.row_count))

            if p.state == "purged":
                if p.archive_deleted_at is not None:
                    continue
                until = add_period(p.purged_at or p.end, self.settings.retention.archive_retention)
                if p.legal_hold:
                    decide("keep", f"archive kept: legal hold ({p.legal_hold_reason})")
                elif now >= until:
                    decide("delete_archive", f"archive retention ({self.settings.retention.archive_retention}) "
                           f"passed on {until:%Y-%m-%d}", until)
                else:
                    decide("keep", f"archive retained until {until:%Y-%m-%d}", until)
                continue
            until = add_period(p.end, retention_for(p.retention_classes, self.settings.retention))
            if p.state != "archived":
                decide("keep", "not archived yet" + (" (inside the active window)" if p.end > cutoff else ""), until)
            elif p.legal_hold:
                decide("keep", f"legal hold: {p.legal_hold_reason}", until)
            elif now < until:
                decide("keep", f"retained until {until:%Y-%m-%d}", until)
            elif p.end > cutoff:
                decide("keep", "inside the active window", until)
            else:
                problem = self._archive_problem(p, store) if store is not None else None
                if problem:
                    decide("keep", f"archive does not verify: {problem}", until)
                elif store is None:
                    decide("purge", f"retention passed on {until:%Y-%m-%d}; the archive is verified at purge time",
                           until)
                else:
                    decide("purge", f"retention passed on {until:%Y-%m-%d}; archive verified", until)
        return decisions

    @classmethod
    def _archive_problem(cls, p: PartitionInfo, store: ArchiveStore) -> str | None:
        problems = cls._archive_problems(p, store)
        return "; ".join(problems) if problems else None

    @staticmethod
    def _archive_problems(p: PartitionInfo, store: ArchiveStore) -> list[str]:
        manifest = store.read_manifest(p.name)
        if manifest is None:
            return [f"no manifest at {store.manifest_uri(p.name)}"]
        if manifest.sha256 != p.archive_manifest_sha256:
            return ["manifest differs from the one recorded at archival"]
        check = store.verify(manifest, expected_rows=p.row_count, expected_digest=p.archive_checksum)
        return [] if check.ok else list(check.problems)

    def drop_partition(self, period: Any, *, now: dt.datetime | None = None, run_id: str | None = None) -> None:
        """Drop one partition — only when it is archived, its archive verifies now, it is past retention and
        not on hold (the same rules as :meth:`purge`); anything else is a ComplianceError and changes nothing."""
        info = self.get(period)
        now = _not_future(now, "drop_partition")
        if info.state != "archived":
            raise ComplianceError(f"{info.name} may not be dropped: it is {info.state}, not archived",
                                  operation="drop_partition", partition=info.name)
        decision = next(iter(self._purge_decisions(now, verify=True, only=info.name)), None)
        if decision is None or decision.action != "purge":
            reason = decision.reason if decision else f"state {info.state}"
            raise ComplianceError(f"{info.name} may not be dropped: {reason}", operation="drop_partition",
                                  partition=info.name)
        self._drop(decision, run_id)

    def _drop(self, decision: PurgeDecision, run_id: str | None) -> None:
        started = time.perf_counter()
        with self._conn("drop_partition") as conn, conn.transaction():
            info = self._registered(conn, decision.partition, lock=True)
            if info is None or info.legal_hold or info.state != "archived":
                raise ComplianceError(f"{decision.partition} changed while purging (hold or state); nothing dropped",
                                      operation="drop_partition", partition=decision.partition)
            conn.execute("SET LOCAL lock_timeout = '30s'")
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(info.name)))
            conn.execute("UPDATE audit_partitions SET state = 'purged', purged_at = now(), updated_at = now()"
                         " WHERE partition_name = %s", (info.name,))
            ledger.record(conn, "purge", info.name, run_id=run_id, rows=info.row_count, byte_count=info.bytes,
                          checksum=info.archive_checksum, duration_ms=_elapsed_ms(started),
                          details={"reason": decision.reason, "archive_uri": info.archive_uri})
        logger.info("partition purged", extra={"audit": {"partition": info.name, "rows": info.row_count}})
        self._removed(info)

    def _delete_archive(self, name: str, run_id: str | None) -> None:
        store = self.archive_store()
        with self._conn("delete_archive") as conn, conn.transaction():
            locked = self._registered(conn, name, lock=True)
            if locked is None or locked.legal_hold or locked.state != "purged":
                return
            store.delete(name)
            conn.execute("UPDATE audit_partitions SET archive_deleted_at = now(), updated_at = now()"
                         " WHERE partition_name = %s", (name,))
            ledger.record(conn, "delete_archive", name, run_id=run_id, checksum=locked.archive_checksum,
                          details={"archive_uri": locked.archive_uri})

    # -- index maintenance ---------------------------------------------------------------------------------------

    def optimize(self, *, run_id: str | None = None) -> OptimizeReport:
        """ANALYZE partitions whose statistics are stale, summarize new BRIN ranges, and REINDEX CONCURRENTLY
        B-tree indexes whose leaf density fell below the threshold (needs the pgstattuple extension, and a role
        that may execute ``pgstatindex``: a superuser or a member of ``pg_stat_scan_tables``; without them the
        report says so and no index is rebuilt). Registry row counts and sizes are refreshed."""
        cfg = self.settings.maintenance
        report = OptimizeReport()
        with self._connections.dedicated_connection(operation="optimize", autocommit=True) as conn:
            installed, executable = conn.execute(
                "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pgstattuple'),"
                " coalesce(has_function_privilege(to_regprocedure('pgstatindex(regclass)'), 'EXECUTE'), false)"
            ).fetchone()  # type: ignore[misc]
            has_pgstattuple = installed and executable
            if not installed:
                report.bloat_check = "unavailable (CREATE EXTENSION pgstattuple to enable REINDEX of bloated indexes)"
            elif not executable:  # pgstattuple grants its functions to pg_stat_scan_tables only
                report.bloat_check = ("unavailable (this role may not execute pgstatindex: GRANT pg_stat_scan_tables TO "
                                      "audit_maintainer to enable REINDEX of bloated indexes)")
            for p in self.list_partitions("active"):
                if conn.execute("SELECT to_regclass(%s)", (p.name,)).fetchone() == (None,):
                    continue
                table = sql.Identifier(p.name)
                stats = conn.execute(
                    "SELECT n_live_tup, n_mod_since_analyze, coalesce(last_analyze, last_autoanalyze) IS NULL"
                    " FROM pg_stat_user_tables WHERE relid = %s::regclass", (p.name,)).fetchone()
                live, changed, never = stats if stats else (0, 0, True)
                if never and not live:  # activity counters are flushed lazily: look at the table itself
                    live = 1 if conn.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(table)).fetchone() == (
                        True,) else 0
                if (never and live) or changed > cfg.analyze_change_ratio * max(live, 1):
                    t = time.perf_counter()
                    conn.execute(sql.SQL("ANALYZE {}").format(table))
                    report.steps.append(OptimizeStep(p.name, "analyze", p.name, _elapsed_ms(t),
                                                     f"{changed} rows changed since the last analyze"))
                indexes = conn.execute(
                    "SELECT c.relname, a.amname, pg_relation_size(c.oid) FROM pg_index i"
                    " JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam"
                    " WHERE i.indrelid = %s::regclass ORDER BY 1", (p.name,)).fetchall()
                for index, am, size in indexes:
                    if am == "brin":
                        t = time.perf_counter()
                        (ranges,) = conn.execute("SELECT brin_summarize_new_values(%s::regclass)",
                                                 (index,)).fetchone()  # type: ignore[misc]
                        report.steps.append(OptimizeStep(p.name, "brin_summarize", index, _elapsed_ms(t),
                                                         f"{ranges} new ranges summarized"))
                    elif am == "btree" and has_pgstattuple and size >= cfg.reindex_min_bytes:
                        (density,) = conn.execute("SELECT avg_leaf_density FROM pgstatindex(%s::regclass)",
                                                  (index,)).fetchone()  # type: ignore[misc]
                        if density < cfg.reindex_max_leaf_density:
                            t = time.perf_counter()
                            conn.execute(sql.SQL("REINDEX INDEX CONCURRENTLY {}").format(sql.Identifier(index)))
                            report.steps.append(OptimizeStep(p.name, "reindex", index, _elapsed_ms(t),
                                                             f"leaf density {density:.1f}% < {cfg.reindex_max_leaf_density}%"))
                t = time.perf_counter()
                with conn.transaction():
                    conn.execute(
                        "UPDATE audit_partitions SET row_count = greatest(c.reltuples, 0)::bigint,"
                        " bytes = pg_total_relation_size(c.oid), last_optimized_at = now(), updated_at = now()"
                        " FROM pg_class c WHERE c.oid = %s::regclass AND partition_name = %s", (p.name, p.name))
                    steps = [asdict(s) for s in report.steps if s.partition == p.name]
                    ledger.record(conn, "optimize", p.name, run_id=run_id, duration_ms=sum(s["duration_ms"] for s in steps),
                                  details={"steps": steps})
                report.steps.append(OptimizeStep(p.name, "stats", p.name, _elapsed_ms(t), "registry refreshed"))
        return report

    # -- inspection (read-only, for health checks and reports) ----------------------------------------------------

    def stats(self, period: Any) -> PartitionStats:
        """Rows (an exact count), total bytes (table, indexes, TOAST) and indexes of the registered partition of
        ``period``, measured now. One sequential count per call: meant for one partition at a time.

        Example::

            s = pm.stats("2026-11")
            s.rows, s.bytes, s.indexes          # 1234, 901120, ['audit_log_p2026_11_action_event_time_idx', …]
        """
        info = self.get(period)
        with self._conn("partition_stats") as conn:
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

    def archivable_from(self, period: Any) -> dt.datetime:
        """The instant the period leaves the active window: its end plus ``AUDIT_PARTITIONS__ACTIVE_WINDOW``
        (before then :meth:`archive` refuses it and :meth:`plan` does not list it)."""
        b = resolve_period(period, self.interval)
        return add_period(b.end, self.settings.partitions.active_window)

    def verify_archives(self, *, record: bool = False, run_id: str | None = None) -> list[tuple[str, list[str]]]:
        """Re-read the archive of every archived partition (and of every purged one whose archive is still kept)
        and verify it against the registry's row count, content digest and manifest SHA-256.

        Returns ``(partition, problems)`` for every archive checked, oldest first; an empty ``problems`` list
        means it verified. With ``record=True`` each verification is appended to the ledger (operation
        ``verify``, outcome ``ok`` or ``failed``). Raises :class:`ConfigurationError` when archives exist but
        ``AUDIT_ARCHIVE__ROOT_URI`` is not set (they cannot be read).

        Example::

            bad = [(name, problems) for name, problems in pm.verify_archives() if problems]
        """
        archived = [p for p in self.list_partitions()
                    if p.state in ("archived", "purged") and p.archive_uri and p.archive_deleted_at is None]
        if not archived:
            return []
        store = self.archive_store()
        out: list[tuple[str, list[str]]] = []
        for p in archived:
            started = time.perf_counter()
            try:
                problems = self._archive_problems(p, store)
            except AuditError as exc:  # a malformed manifest or an unreadable root: this archive does not verify
                problems = [exc.message]
            out.append((p.name, problems))
            if record:
                with self._conn("verify_archive") as conn, conn.transaction():
                    ledger.record(conn, "verify", p.name, "failed" if problems else "ok", run_id=run_id,
                                  rows=p.row_count, checksum=p.archive_checksum, duration_ms=_elapsed_ms(started),
                                  details={"archive_uri": p.archive_uri, "problems": problems})
        return out

    def ledger_consistency(self) -> list[str]:
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
        with self._conn("ledger_consistency") as conn:
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

    # -- failures ------------------------------------------------------------------------------------------------

    def _record_failure(self, operation: str, partition: str, exc: AuditError, run_id: str | None) -> None:
        try:
            with self._conn(operation) as conn, conn.transaction():
                ledger.record(conn, operation, partition, "failed", run_id=run_id, details=exc.to_dict())
        except AuditError:  # the database may be the reason: the original error is what the caller needs
            logger.warning("could not record the failed %s of %s in the ledger", operation, partition)
