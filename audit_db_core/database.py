"""``AuditDatabase``: the one client applications use to write and read audit events.

Example::

    from audit_db_core import AuditDatabase, AuditEvent, AuditQuery, AuditSettings

    with AuditDatabase(AuditSettings()) as db:
        db.migrate()
        db.insert(AuditEvent(action="patient.record.read", status="success", principal_id="u1"))
        page = db.query(AuditQuery(principal_id="u1", limit=10))
"""

from __future__ import annotations

import functools
import itertools
import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, get_args

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from audit_db_core.config import AuditSettings, ConsistencyLevel
from audit_db_core.connections import ConnectionManager
from audit_db_core.errors import AuditError, AuditValidationError, classify
from audit_db_core.events import EVENT_COLUMNS, AuditEvent, StoredAuditEvent
from audit_db_core.health import HealthReport, build_health_report
from audit_db_core.migrate import MigrationResult, migrate
from audit_db_core.partitions import PartitionManager
from audit_db_core.query import AuditQuery, QueryPage, count_statement, encode_cursor, page_size, select_statement

logger = logging.getLogger("audit_db_core.database")

_WRITE_COLUMNS = (*EVENT_COLUMNS, "content_hash")
_COPY_INTO_LOG = sql.SQL("COPY {} ({}) FROM STDIN").format(
    sql.Identifier("audit_log"), sql.SQL(", ").join(sql.Identifier(c) for c in _WRITE_COLUMNS)
)
_INSERT_ONE = sql.SQL("INSERT INTO {} ({}) VALUES ({}) ON CONFLICT DO NOTHING").format(
    sql.Identifier("audit_log"),
    sql.SQL(", ").join(sql.Identifier(c) for c in _WRITE_COLUMNS),
    sql.SQL(", ").join(sql.Placeholder() * len(_WRITE_COLUMNS)),
)
_STAGE = sql.Identifier("audit_ingest_stage")
_CREATE_STAGE = sql.SQL(
    "CREATE TEMP TABLE IF NOT EXISTS {} (LIKE {} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
).format(_STAGE, sql.Identifier("audit_log"))
_COPY_INTO_STAGE = sql.SQL("COPY {} ({}) FROM STDIN").format(
    _STAGE, sql.SQL(", ").join(sql.Identifier(c) for c in _WRITE_COLUMNS)
)
_MERGE_STAGE = sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} ON CONFLICT DO NOTHING").format(
    sql.Identifier("audit_log"),
    sql.SQL(", ").join(sql.Identifier(c) for c in _WRITE_COLUMNS),
    sql.SQL(", ").join(sql.Identifier(c) for c in _WRITE_COLUMNS),
    _STAGE,
)
_CONSISTENCY = get_args(ConsistencyLevel)


def _as_event(item: Any, index: int | None) -> AuditEvent:
    """An ``AuditEvent`` from an event or a mapping; errors name ``events[i].field`` (or ``event`` for one)."""
    where = "event" if index is None else f"events[{index}]"
    if isinstance(item, AuditEvent):
        return item
    if isinstance(item, Mapping):
        try:
            return AuditEvent.model_validate(dict(item))
        except AuditValidationError as exc:
            raise AuditValidationError("AuditEvent", [(f"{where}.{p.field}", p.reason) for p in exc.problems]) from None
    raise AuditValidationError(
        "AuditEvent", [(where, f"expected an AuditEvent or a mapping, not {type(item).__name__}")]
    )


# -- operations on one connection (shared by AuditDatabase and AuditTransaction) ----------------------------------


_REROUTE_ATTEMPTS = 3
_STORED_BEFORE = "({} events before this batch are stored; re-sending them all is safe)"


def _rerouted(exc: psycopg.Error) -> bool:
    """A row routed to DEFAULT while a partition for its range was being attached in another transaction: the
    constraint check after the wait fails, and the same statement, planned again, lands in the new partition."""
    return isinstance(exc, psycopg.errors.CheckViolation) and "partition constraint" in str(exc)


def _insert_one(conn: psycopg.Connection[Any], event: AuditEvent) -> bool:
    row = _as_event(event, None).row()
    for attempt in range(_REROUTE_ATTEMPTS):
        try:
            with conn.transaction():  # a savepoint inside a caller's transaction
                cur = conn.execute(_INSERT_ONE, row)
            return cur.rowcount == 1
        except psycopg.Error as exc:
            if not _rerouted(exc) or attempt == _REROUTE_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def _copy_batch(conn: psycopg.Connection[Any], events: list[AuditEvent]) -> int:
    """Write one batch; returns how many rows were new.

    The fast path COPYs straight into ``audit_log`` inside a savepoint. Only when that meets a duplicate (a
    retried batch) does it fall back to COPY into a temporary stage plus ``INSERT … ON CONFLICT DO NOTHING``.
    Either is repeated when a concurrent partition creation re-routed some of its rows. Rows are rendered inside
    the COPY loop, so the client renders while the server ingests what it was sent.
    """
    for attempt in range(_REROUTE_ATTEMPTS):
        try:
            try:
                with conn.transaction(), conn.cursor() as cur:
                    with cur.copy(_COPY_INTO_LOG) as copy:
                        for event in events:
                            copy.write_row(event.row())
                return len(events)
            except psycopg.errors.UniqueViolation:
                pass
            with conn.transaction(), conn.cursor() as cur:
                cur.execute(_CREATE_STAGE)
                cur.execute(sql.SQL("TRUNCATE {}").format(_STAGE))
                with cur.copy(_COPY_INTO_STAGE) as copy:
                    for event in events:
                        copy.write_row(event.row())
                cur.execute(_MERGE_STAGE)
                written = cur.rowcount
                cur.execute(sql.SQL("TRUNCATE {}").format(_STAGE))
            return written
        except psycopg.Error as exc:
            if not _rerouted(exc) or attempt == _REROUTE_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def _insert_many(conn: psycopg.Connection[Any], events: Iterable[Any], batch_size: int, *, commit_each: bool) -> int:
    written = 0
    seen = 0
    iterator = iter(events)
    while True:
        chunk = list(itertools.islice(iterator, batch_size))
        if not chunk:
            return written
        try:
            batch = [_as_event(item, seen + i) for i, item in enumerate(chunk)]
        except AuditValidationError as exc:
            if commit_each and seen:
                exc.amend(_STORED_BEFORE.format(seen), events_before_batch=seen)
            raise
        try:
            if commit_each:
                with conn.transaction():
                    written += _copy_batch(conn, batch)
            else:
                written += _copy_batch(conn, batch)
        except psycopg.Error as exc:
            err = classify(exc, operation="insert_many", events_before_batch=seen)
            if commit_each and seen:
                err.amend(_STORED_BEFORE.format(seen))
            raise err from exc
        seen += len(chunk)


def _query(conn: psycopg.Connection[Any], query: AuditQuery, settings: AuditSettings) -> QueryPage:
    if not isinstance(query, AuditQuery):
        raise AuditValidationError("AuditQuery", [("query", f"expected an AuditQuery, not {type(query).__name__}")])
    limit = page_size(query, settings.query.max_page_size, settings.query.default_page_size)
    stmt, params = select_statement(query, limit)
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(stmt, params).fetchall()
    events = [StoredAuditEvent.from_row(r) for r in rows[:limit]]
    next_cursor = encode_cursor(query, events[-1]) if len(rows) > limit else None
    return QueryPage(events=events, next_cursor=next_cursor, limit=limit)


def _count(conn: psycopg.Connection[Any], query: AuditQuery) -> int:
    if not isinstance(query, AuditQuery):
        raise AuditValidationError("AuditQuery", [("query", f"expected an AuditQuery, not {type(query).__name__}")])
    stmt, params = count_statement(query)
    row = conn.execute(stmt, params).fetchone()
    return int(row[0]) if row else 0


def _check_consistency(consistency: str) -> None:
    if consistency not in _CONSISTENCY:
        raise AuditValidationError(
            "query", [("consistency", f"must be one of {', '.join(_CONSISTENCY)}, not {consistency!r}")]
        )


class AuditTransaction:
    """Writes and reads inside one database transaction: all of it commits, or none of it."""

    def __init__(self, conn: psycopg.Connection[Any], settings: AuditSettings) -> None:
        self._conn = conn
        self._settings = settings

    def insert(self, event: AuditEvent) -> bool:
        return _insert_one(self._conn, event)

    def insert_many(self, events: Iterable[AuditEvent]) -> int:
        return _insert_many(self._conn, events, self._settings.ingest.batch_size, commit_each=False)

    def query(self, query: AuditQuery) -> QueryPage:
        return _query(self._conn, query, self._settings)

    def count(self, query: AuditQuery) -> int:
        return _count(self._conn, query)


def _operation(name: str) -> Any:
    """Run a method with its driver errors classified (``AuditError`` with the operation in its context)."""

    def wrap(fn: Any) -> Any:
        @functools.wraps(fn)
        def inner(self: AuditDatabase, *args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(self, *args, **kwargs)
            except AuditError as exc:
                exc.context.setdefault("operation", name)
                if not isinstance(exc, AuditValidationError):  # bad input is the caller's to report
                    logger.warning("%s failed: %s", name, exc.message, extra={"audit": exc.to_dict()})
                raise
            except psycopg.Error as exc:
                err = classify(exc, operation=name)
                logger.warning("%s failed: %s", name, err.message, extra={"audit": err.to_dict()})
                raise err from exc
            finally:
                logger.debug("%s took %.3f ms", name, (time.perf_counter() - started) * 1000)

        return inner

    return wrap


class AuditDatabase:
    """The audit log client: pools, writes, reads, partitions and health behind one object.

    Open it as a context manager (or call :meth:`open` / :meth:`close`). Methods are thread-safe: each call
    borrows a pooled connection.
    """

    def __init__(self, settings: AuditSettings | None = None) -> None:
        self.settings = settings if settings is not None else AuditSettings()
        self.connections = ConnectionManager(self.settings)
        self._partitions: PartitionManager | None = None

    # -- lifecycle -----------------------------------------------------------------------------------------------

    def open(self) -> AuditDatabase:
        self.connections.open()
        return self

    def close(self) -> None:
        self.connections.close()

    def __enter__(self) -> AuditDatabase:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"AuditDatabase(primary={self.settings.display_database_url!r})"

    @property
    def partitions(self) -> PartitionManager:
        """The :class:`PartitionManager` bound to this database."""
        if self._partitions is None:
            self._partitions = PartitionManager(self.connections, self.settings)
        return self._partitions

    # -- schema --------------------------------------------------------------------------------------------------

    @_operation("migrate")
    def migrate(self) -> MigrationResult:
        """Apply pending migrations, then make sure the current period and the premake window have partitions."""
        result = migrate(self.settings.database_url.get_secret_value(),
                         connect_timeout=self.settings.pool.connect_timeout_seconds)
        self.partitions.premake()
        return result

    # -- writes --------------------------------------------------------------------------------------------------

    @_operation("insert")
    def insert(self, event: AuditEvent) -> bool:
        """Store one event. Returns ``False`` when that event (same time and id) was already stored."""
        ev = _as_event(event, None)
        with self.connections.connection(operation="insert") as conn:
            return _insert_one(conn, ev)

    @_operation("insert_many")
    def insert_many(self, events: Iterable[AuditEvent]) -> int:
        """Store events in COPY batches of ``settings.ingest.batch_size`` (one transaction each).

        Idempotent: events already stored are skipped, never duplicated and never an error, so a caller that is
        unsure whether a call went through re-sends it all. Returns how many events were newly written.
        """
        with self.connections.connection(operation="insert_many") as conn:
            return _insert_many(conn, events, self.settings.ingest.batch_size, commit_each=True)

    # -- reads ---------------------------------------------------------------------------------------------------

    @_operation("query")
    def query(self, query: AuditQuery, *, consistency: ConsistencyLevel = "strong") -> QueryPage:
        """One page of events matching ``query``, newest first; ``page.next_cursor`` leads to the next page.

        ``consistency`` is accepted for every level; until replica routing is configured every level reads from
        the primary, which satisfies all three.
        """
        _check_consistency(consistency)
        with self.connections.connection(operation="query") as conn:
            return _query(conn, query, self.settings)

    @_operation("count")
    def count(self, query: AuditQuery, *, consistency: ConsistencyLevel = "strong") -> int:
        """How many events match ``query`` (its ``limit`` and ``cursor`` are ignored)."""
        _check_consistency(consistency)
        with self.connections.connection(operation="count") as conn:
            return _count(conn, query)

    @contextmanager
    def transaction(self) -> Iterator[AuditTransaction]:
        """A unit of work: everything done through the yielded object commits together or not at all.

        Example::

            with db.transaction() as tx:
                tx.insert(first)
                tx.insert_many(more)
        """
        with self.connections.connection(operation="transaction") as conn:
            try:
                with conn.transaction():
                    yield AuditTransaction(conn, self.settings)
            except psycopg.Error as exc:
                err = classify(exc, operation="transaction")
                logger.warning("transaction failed: %s", err.message, extra={"audit": err.to_dict()})
                raise err from exc

    # -- health --------------------------------------------------------------------------------------------------

    def health(self) -> HealthReport:
        """Primary reachability and version, pool statistics (never raises: failures are in the report)."""
        return build_health_report(self)
