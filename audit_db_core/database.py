"""``AuditDatabase``: the one client applications use to write and read audit events.

Example::

    from audit_db_core import AuditDatabase, AuditEvent, AuditQuery, AuditSettings

    with AuditDatabase(AuditSettings()) as db:
        db.migrate()
        db.insert(AuditEvent(action="patient.record.read", status="success", principal_id="u1"))
        page = db.query(AuditQuery(principal_id="u1", limit=10))
"""

from __future__ import annotations

import datetime as dt
import functools
import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Any, TypeVar, get_args

import psycopg
from psycopg import sql

from audit_db_core import telemetry
from audit_db_core.breakers import BreakerRegistry, ErrorPolicy, GuardedConnections, RetryPolicy, counts_as_failure
from audit_db_core.cache import QueryCache, range_scopes, read_scope, write_scopes
from audit_db_core.cache_codec import page_from_json as _page_from_json
from audit_db_core.cache_codec import page_to_json as _page_to_json
from audit_db_core.config import AuditSettings, ConsistencyLevel
from audit_db_core.connections import (
    CURRENT_LSN, ConnectionManager, current_lsn, format_lsn, parse_lsn, raise_if_unconfirmed,
)
from audit_db_core.deployment import read_deployment_id
from audit_db_core.errors import (
    AuditError,
    AuditValidationError,
    ConfigurationError,
    classify,
    scrub_exception,
    server_message,
)
from audit_db_core.events import (
    EVENT_COLUMNS,
    AuditEvent,
    DataClassification,
    EventStatus,
    StoredAuditEvent,
    event_row,
    stored_event_row,
)
from audit_db_core.health import HealthReport, build_health_report
from audit_db_core.interfaces import ErrorHandler, ResultCache
from audit_db_core.migrate import SCHEMA_VERSION, MigrationResult, migrate
from audit_db_core.partitions import PartitionBounds, PartitionManager
from audit_db_core.privacy import PrivacyManager
from audit_db_core.query import (
    AuditQuery,
    QueryPage,
    count_query,
    encode_cursor,
    page_query,
    page_size,
    restored_tables,
)
from audit_db_core.routing import ReplicaRouter, RouteTarget

if TYPE_CHECKING:
    from audit_db_core.integrity import IntegrityManager
    from audit_db_core.reports import ReportManager

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
#: A read in two steps: send its statement on a connection, then (the returned function) read its result.
_Send = Callable[[psycopg.Connection[Any]], Callable[[], Any]]
_TIME = EVENT_COLUMNS.index("event_time")
_T = TypeVar("_T")
#: Beyond any WAL position a cached result can claim: the generation of a write whose position is unknown.
_UNKNOWN_LSN = 2**62


def _as_event(item: Any, index: int | None) -> AuditEvent:
    """An ``AuditEvent`` from an event or a mapping; errors name ``events[i].field`` (or ``event`` for one)."""
    if isinstance(item, AuditEvent):
        return item
    return _from_mapping(item, index, _event_of)


def _as_row(item: Any, index: int | None) -> tuple[Any, ...]:
    """The row ``_as_event(item, index).row()``; for a mapping, without building the event (:func:`event_row`)."""
    if isinstance(item, AuditEvent):
        return item.row()
    return _from_mapping(item, index, event_row)


def _event_of(item: Mapping[str, Any]) -> AuditEvent:
    return AuditEvent(**item)


def _from_mapping(item: Any, index: int | None, build: Callable[[Mapping[str, Any]], _T]) -> _T:
    if type(item) is dict or isinstance(item, Mapping):
        try:
            return build(item)
        except AuditValidationError as exc:
            problems = [(f".{p.field}", p.reason) for p in exc.problems]
    else:
        problems = [("", f"expected an AuditEvent or a mapping, not {type(item).__name__}")]
    where = "event" if index is None else f"events[{index}]"
    raise AuditValidationError("AuditEvent", [(where + field, reason) for field, reason in problems])


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


class _InvalidItem(Exception):
    """Aborts a COPY when an item of its batch is not a valid event. The server logs only this message; the
    item's own error (``error``) is raised once the COPY and its savepoint are rolled back."""

    def __init__(self, error: Exception) -> None:
        super().__init__("an item of the batch is not a valid audit event; nothing of the batch is written")
        self.error = error


def _write_rows(copy: psycopg.Copy, items: list[Any], offset: int, rows: list[tuple[Any, ...]]) -> None:
    """Write the row of each item. Rows not made by an earlier attempt (``rows``) are made here, one by one, so
    the client validates and hashes an event while the server ingests the rows already sent; an invalid item
    aborts the COPY (nothing of the batch is stored)."""
    for row in rows:
        copy.write_row(row)
    for index in range(len(rows), len(items)):
        try:
            row = _as_row(items[index], offset + index)
        except Exception as exc:
            raise _InvalidItem(exc) from None
        rows.append(row)
        copy.write_row(row)


def _copy_batch(conn: psycopg.Connection[Any], items: list[Any], offset: int, rows: list[tuple[Any, ...]]) -> int:
    """Write one batch of events or mappings (``items``, the first at index ``offset`` of the call); returns how
    many rows were new. ``rows`` receives the row of each item, in order.

    The fast path COPYs straight into ``audit_log`` inside a savepoint. Only when that meets a duplicate (a
    retried batch) does it fall back to COPY into a temporary stage plus ``INSERT … ON CONFLICT DO NOTHING``.
    Either is repeated when a concurrent partition creation re-routed some of its rows. Each item is checked (a
    mapping) and its row rendered inside the COPY loop (:func:`_write_rows`).
    """
    try:
        for attempt in range(_REROUTE_ATTEMPTS):
            try:
                try:
                    with conn.transaction(), conn.cursor() as cur:
                        with cur.copy(_COPY_INTO_LOG) as copy:
                            _write_rows(copy, items, offset, rows)
                    return len(items)
                except psycopg.errors.UniqueViolation:
                    pass
                with conn.transaction(), conn.cursor() as cur:
                    cur.execute(_CREATE_STAGE)
                    cur.execute(sql.SQL("TRUNCATE {}").format(_STAGE))
                    with cur.copy(_COPY_INTO_STAGE) as copy:
                        _write_rows(copy, items, offset, rows)
                    cur.execute(_MERGE_STAGE)
                    written = cur.rowcount
                    cur.execute(sql.SQL("TRUNCATE {}").format(_STAGE))
                return written
            except psycopg.Error as exc:
                if not _rerouted(exc) or attempt == _REROUTE_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")
    except _InvalidItem as invalid:
        raise invalid.error from None


def _insert_many(
    conn: psycopg.Connection[Any],
    events: Iterable[Any],
    batch_size: int,
    *,
    commit_each: bool,
    on_batch: Callable[[psycopg.Connection[Any], list[dt.datetime]], None] | None = None,
    observe: bool = False,
) -> int:
    """``on_batch(conn, times)`` runs after each batch is written (after its commit when ``commit_each``), with
    the event times of the batch. ``observe``: record each batch's duration and its events by outcome
    (:mod:`audit_db_core.telemetry`; only for batches that commit on their own)."""
    written = 0
    seen = 0
    iterator = iter(events)
    while True:
        chunk = list(itertools.islice(iterator, batch_size))
        if not chunk:
            return written
        rows: list[tuple[Any, ...]] = []
        began = time.perf_counter() if observe else 0.0
        new = -1  # stays so when the batch is not stored
        try:
            if commit_each:
                with conn.transaction():
                    copied = _copy_batch(conn, chunk, seen, rows)
            else:
                copied = _copy_batch(conn, chunk, seen, rows)
            new = copied  # committed (or, in a caller's transaction, written)
            written += new
            if on_batch is not None:
                on_batch(conn, [row[_TIME] for row in rows])
            if commit_each:
                raise_if_unconfirmed(conn, "insert_many", f"(this batch of {len(chunk)} events is stored on the "
                                     f"primary; {written} new events by this call in all)",
                                     events_before_batch=seen, written=written)
        except AuditValidationError as exc:
            if commit_each and seen:
                exc.amend(_STORED_BEFORE.format(seen), events_before_batch=seen)
            raise
        except psycopg.Error as exc:
            err = classify(exc, operation="insert_many", events_before_batch=seen)
            if commit_each and seen:
                err.amend(_STORED_BEFORE.format(seen))
            raise err from exc
        finally:
            if observe:
                _observe_batch(time.perf_counter() - began, len(chunk), new)
        seen += len(chunk)


def _observe_batch(seconds: float, size: int, new: int) -> None:
    """``audit.ingest.batch.duration`` and ``audit.events.written`` of one batch of ``size`` events, ``new`` of
    them newly stored (``-1``: the batch failed, none stored)."""
    telemetry.record_batch(seconds, ok=new >= 0)
    if new >= 0:
        telemetry.record_events("insert_many", new, duplicates=size - new)
    else:
        telemetry.record_events("insert_many", 0, failed=size)


def _lsn_after_commit(conn: psycopg.Connection[Any]) -> int:
    """The WAL position after the commit just made on ``conn``, read in one round trip and leaving no transaction
    open (the next batch of ``insert_many`` must begin a top-level transaction of its own)."""
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        with conn.transaction():
            return current_lsn(conn)
    conn.autocommit = True  # client-side switch while idle: no BEGIN / COMMIT round trips
    try:
        return current_lsn(conn)
    finally:
        conn.autocommit = False


def _check_query(query: Any) -> AuditQuery:
    if not isinstance(query, AuditQuery):
        raise AuditValidationError("AuditQuery", [("query", f"expected an AuditQuery, not {type(query).__name__}")])
    return query


def _query(conn: psycopg.Connection[Any], query: AuditQuery, settings: AuditSettings) -> QueryPage:
    return _send_query(conn, query, settings)()


def _send_query(conn: psycopg.Connection[Any], query: AuditQuery, settings: AuditSettings) -> Callable[[], QueryPage]:
    """Send the page query; the returned function reads the page. Two steps, so that a read that also needs the WAL
    position can send both statements in one pipeline (one round trip) before reading either."""
    _check_query(query)
    limit = page_size(query, settings.query.max_page_size, settings.query.default_page_size)
    stmt, params = page_query(query, limit, restored_tables(conn, query))
    cur = conn.cursor(row_factory=stored_event_row)  # rows come out as events: no tuple or dict in between
    cur.execute(stmt, params, binary=True)  # binary results: less to send, and times and ids need no parsing

    def page() -> QueryPage:
        events = cur.fetchall()
        cur.close()
        next_cursor = None
        if len(events) > limit:
            del events[limit:]
            next_cursor = encode_cursor(query, events[-1])
        return QueryPage(events=events, next_cursor=next_cursor, limit=limit)

    return page


def _count(conn: psycopg.Connection[Any], query: AuditQuery) -> int:
    return _send_count(conn, query)()


def _send_count(conn: psycopg.Connection[Any], query: AuditQuery) -> Callable[[], int]:
    _check_query(query)
    stmt, params = count_query(query, restored_tables(conn, query))
    cur = conn.execute(stmt, params)

    def count() -> int:
        row = cur.fetchone()
        return int(row[0]) if row else 0

    return count


def _run_read(conn: psycopg.Connection[Any], send: _Send, *, lsn: bool) -> tuple[Any, int]:
    """(result, WAL position it reflects — 0 unless ``lsn``). With ``lsn``, the position is read first and the query
    after it, in one pipeline: one round trip, and the query's snapshot includes at least that position."""
    if not lsn:
        return send(conn)(), 0
    with conn.pipeline():
        position = conn.execute(CURRENT_LSN)
        finish = send(conn)
    row = position.fetchone()
    return finish(), int(row[0]) if row and row[0] is not None else 0


def _check_consistency(consistency: str) -> None:
    if consistency not in _CONSISTENCY:
        raise AuditValidationError(
            "query", [("consistency", f"must be one of {', '.join(_CONSISTENCY)}, not {consistency!r}")]
        )


class AuditTransaction:
    """Writes and reads inside one database transaction: all of it commits, or none of it."""

    def __init__(self, conn: psycopg.Connection[Any], settings: AuditSettings,
                 privacy: PrivacyManager | None = None) -> None:
        self._conn = conn
        self._settings = settings
        self._privacy = privacy if privacy is not None else PrivacyManager(None, settings)
        self.written_times: set[dt.datetime] = set()  # for cache invalidation once the transaction commits
        self.handed = 0  # events given to insert / insert_many, and how many of them were new (telemetry)
        self.new = 0

    def insert(self, event: AuditEvent) -> bool:
        ev = self._privacy.protect_one(_as_event(event, None), self._conn)
        new = _insert_one(self._conn, ev)
        self.written_times.add(ev.event_time)
        self.handed += 1
        self.new += new
        return new

    def insert_many(self, events: Iterable[AuditEvent | Mapping[str, Any]]) -> int:
        events = self._privacy.protect(events, self._conn)
        written = _insert_many(self._conn, events, self._settings.ingest.batch_size, commit_each=False,
                               on_batch=self._batch_written)
        self.new += written
        return written

    def _batch_written(self, _conn: psycopg.Connection[Any], times: list[dt.datetime]) -> None:
        self.written_times.update(times)
        self.handed += len(times)

    def query(self, query: AuditQuery) -> QueryPage:
        return _query(self._conn, self._privacy.translate(_check_query(query), self._conn), self._settings)

    def count(self, query: AuditQuery) -> int:
        return _count(self._conn, self._privacy.translate(_check_query(query), self._conn))


def _operation(name: str, *, observed: bool = True) -> Any:
    """Run a method with its driver errors classified (``AuditError`` with the operation in its context) and, while
    an OpenTelemetry SDK listens, inside :func:`telemetry.operation <audit_db_core.telemetry.operation>` (a span
    ``<name> audit_log`` and ``db.client.operation.duration``). ``observed=False``: the method observes itself
    (reads, so that an L1 hit pays for neither)."""

    def wrap(fn: Any) -> Any:
        @functools.wraps(fn)
        def classified(self: AuditDatabase, *args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(self, *args, **kwargs)
            except AuditError as exc:
                self.errors.handle(exc, operation=name)
                raise
            except psycopg.Error as exc:
                raise self.errors.handle(exc, operation=name) from exc
            finally:
                logger.debug("%s took %.3f ms", name, (time.perf_counter() - started) * 1000)

        if not observed:
            return classified

        @functools.wraps(fn)
        def inner(self: AuditDatabase, *args: Any, **kwargs: Any) -> Any:
            if self._telemetry and telemetry.observing():
                with telemetry.operation(name):
                    return classified(self, *args, **kwargs)
            return classified(self, *args, **kwargs)

        return inner

    return wrap


def _served(page: QueryPage, source: str) -> QueryPage:
    """A page of its own for the caller (cached pages are shared), saying where it came from."""
    return QueryPage(events=list(page.events), next_cursor=page.next_cursor, limit=page.limit,
                     extra={"source": source})


class AuditDatabase:
    """The audit log client: pools, writes, reads, partitions and health behind one object.

    Open it as a context manager (or call :meth:`open` / :meth:`close`). Methods are thread-safe: each call
    borrows a pooled connection.

    Reads take a consistency level (``strong`` → primary, ``bounded`` / ``eventual`` → a replica in rotation, see
    :mod:`audit_db_core.routing`) and go through the two-tier query cache unless ``strong``. Writes go to the
    primary behind its circuit breaker: while it is open they fail at once with ``CircuitOpenError``.
    """

    def __init__(
        self,
        settings: AuditSettings | None = None,
        *,
        cache: ResultCache | None = None,
        errors: ErrorHandler | None = None,
    ) -> None:
        """``cache`` / ``errors``: an application's own implementation of the query cache or the error handling
        (:mod:`audit_db_core.interfaces`); by default the two-tier :class:`~audit_db_core.cache.QueryCache` of the
        settings and :class:`~audit_db_core.breakers.ErrorPolicy` with the settings' retry policy."""
        self.settings = settings if settings is not None else AuditSettings()
        self.connections = ConnectionManager(self.settings)
        self.breakers = BreakerRegistry(self.settings.breakers, on_change=self._breaker_changed)
        self._deployment_id: uuid.UUID | None = None
        self._deployment_lock = threading.Lock()
        self.cache: ResultCache = cache if cache is not None else QueryCache(
            self.settings, schema_version=SCHEMA_VERSION, breakers=self.breakers, identity=lambda: self.deployment_id)
        self.router = ReplicaRouter(self.settings, self.connections, self.breakers)
        r = self.settings.retry
        self.retry_policy = RetryPolicy(r.max_attempts, r.base_delay_seconds, r.max_delay_seconds)
        self.errors: ErrorHandler = errors if errors is not None else ErrorPolicy(self.retry_policy, log=logger)
        self._partitions: PartitionManager | None = None
        self._local = threading.local()
        # The commit position of writes is needed to invalidate the cache and to read your own writes.
        self._track_lsn = self.cache.enabled or bool(self.settings.replica_urls)
        self._telemetry = self.settings.telemetry.enabled  # False: no metric, no span (see telemetry.py)
        self._bookkeeping_lock = threading.Lock()
        self._bookkeeping_failures = 0

    # -- lifecycle -----------------------------------------------------------------------------------------------

    def open(self) -> AuditDatabase:
        self.connections.open()
        self.cache.open()
        self.router.start()
        if self._telemetry:
            telemetry.register(self)  # its pools, breakers, replicas, cache, health: observable instruments
        return self

    def close(self) -> None:
        telemetry.unregister(self)
        self.router.stop()
        self.cache.close()
        self.connections.close()

    def __enter__(self) -> AuditDatabase:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"AuditDatabase(primary={self.settings.display_database_url!r})"

    @property
    def deployment_id(self) -> uuid.UUID:
        """This database's identity (:mod:`audit_db_core.deployment`): read from the primary on first use, then
        cached for the life of this object. Raises :class:`~audit_db_core.errors.MigrationError` when the
        migrations are not applied.

        Example::

            db.deployment_id          # UUID('6f1c…'), the same in every process using this database
        """
        found = self._deployment_id
        if found is None:
            with self._deployment_lock:
                if self._deployment_id is None:
                    with self._primary("deployment_id") as conn:
                        self._deployment_id = read_deployment_id(conn)
                found = self._deployment_id
        return found

    @property
    def partitions(self) -> PartitionManager:
        """The :class:`PartitionManager` bound to this database (its drops and detaches invalidate the cache; its
        archives get the integrity copy of their period's signed digests)."""
        if self._partitions is None:
            self._partitions = PartitionManager(
                GuardedConnections(self.connections, self.breakers.get("partitions")), self.settings,
                on_removed=self._removed, on_archived=self._archived,
            )
        return self._partitions

    @property
    def integrity(self) -> IntegrityManager:
        """The :class:`~audit_db_core.integrity.IntegrityManager` bound to this database: seal signed digests,
        verify them against the rows and archives, prove that one event is included."""
        from audit_db_core.integrity import IntegrityManager

        return IntegrityManager(self.connections, self.settings)

    @functools.cached_property
    def privacy(self) -> PrivacyManager:
        """The :class:`~audit_db_core.privacy.PrivacyManager` (GDPR: pseudonyms at ingestion, queries by identity,
        subject export and erasure) bound to this database."""
        return PrivacyManager(self.connections, self.settings)

    @property
    def reports(self) -> ReportManager:
        """The :class:`~audit_db_core.reports.ReportManager` (HIPAA access, activity, disclosure and summary
        reports) bound to this database."""
        try:  # on first use: pandas takes about a second to import
            from audit_db_core.reports import ReportManager
        except ModuleNotFoundError as exc:
            raise ConfigurationError("extras", [("reports", f"HIPAA reports need the 'reports' extra ({exc.name} is "
                                                 "not installed): pip install \"audit-platform[reports]\"")]) from None

        analytics = self._analytics_connection if self.settings.replicas.analytics_replica is not None else None
        return ReportManager(self.connections, self.settings, read_connection=analytics)

    @contextmanager
    def _analytics_connection(self, *, operation: str = "report") -> Iterator[psycopg.Connection[Any]]:
        """A connection for heavy reads: the analytics replica when it is in rotation and within the ``bounded``
        lag, else the primary. Only the acquisition falls back; a report that fails midway fails."""
        target = self.router.choose("bounded", analytics=True)
        if target.index is not None and target.index == self.settings.replicas.analytics_replica:
            breaker = self.breakers.get(target.name)
            if breaker.allow():
                stack = ExitStack()
                try:
                    conn = stack.enter_context(self.connections.replica_connection(target.index, operation=operation))
                except AuditError as exc:
                    breaker.record(exc)  # could not get a connection: the report runs on the primary
                else:
                    self.router.count(target.name)
                    with stack:
                        try:
                            yield conn
                        except BaseException as exc:
                            breaker.record(exc)
                            raise
                        breaker.record_success()
                    return
        self.router.count("primary")
        with self.connections.connection(operation=operation) as conn:
            yield conn

    def _breaker_changed(self, breaker: Any, old: Any, new: Any) -> None:
        self.cache.report_breaker(breaker.name, new.value, {"last_failure": breaker._last_failure})

    def _removed(self, bounds: PartitionBounds) -> None:
        """Rows of ``bounds`` left the log (purge, detach): cached results over that range are stale."""
        try:
            with self.connections.connection(operation="invalidate") as conn:
                lsn = current_lsn(conn)
        except AuditError:
            lsn = _UNKNOWN_LSN
        self.cache.invalidate(range_scopes(bounds.start, bounds.end), lsn)

    @staticmethod
    def _archived(
        conn: psycopg.Connection[Any], bounds: PartitionBounds, store: Any, *, run_id: str | None = None
    ) -> None:
        """An archive of ``bounds`` is being written (its transaction is open): the period's signed digests go next
        to it, so verification outlives the table. Imported here: integrity loads only once something is archived."""
        from audit_db_core.integrity import write_archive_copy

        write_archive_copy(conn, bounds, store, run_id=run_id)

    # -- schema --------------------------------------------------------------------------------------------------

    @_operation("migrate", observed=False)  # a lifecycle step: migrate() and premake() make its spans
    def migrate(self) -> MigrationResult:
        """Apply pending migrations, then make sure the current period and the premake window have partitions."""
        result = migrate(self.settings.database_url.get_secret_value(),
                         connect_timeout=self.settings.pool.connect_timeout_seconds)
        self.partitions.premake()
        return result

    # -- the primary, behind its breaker -------------------------------------------------------------------------

    @contextmanager
    def _primary(self, operation: str, *, autocommit: bool = False) -> Iterator[psycopg.Connection[Any]]:
        """A primary connection, refused at once while the primary's breaker is open; connection failures and
        timeouts count against the breaker. ``autocommit`` for a read (see :meth:`ConnectionManager.connection`).
        While it is open, a primary that answers a probe (at most one a second) ends the open period early."""
        breaker = self.breakers.get("primary")
        breaker.check(operation=operation, probe=self.connections.primary_answers)
        try:
            with self.connections.connection(operation=operation, autocommit=autocommit) as conn:
                yield conn
        except BaseException as exc:
            breaker.record(exc)
            raise
        else:
            breaker.record_success()

    def _retrying(self, fn: Callable[[], Any]) -> Any:
        return self.errors.recover(fn)

    def _committed(self, conn: psycopg.Connection[Any], times: Iterable[dt.datetime], operation: str) -> None:
        """After a commit on ``conn``: remember its WAL position (read-your-writes) and invalidate the cache here.
        Other processes learn of it from ``cache.publish()``, called once the connection is back in the pool (no
        Redis round trip while a database connection is held).

        Never raises: the write is committed, so a failure here must not be reported as a failed write (a retried
        insert would then even answer "already stored"). It is logged and counted (:attr:`bookkeeping_failures`)."""
        if not self._track_lsn:
            return
        try:
            scopes = write_scopes(times)
            try:
                lsn = _lsn_after_commit(conn)
            except Exception as exc:
                self._bookkeeping_failed(operation, "reading the commit's WAL position", exc)
                lsn = self._lsn_after_failure()
            if lsn > getattr(self._local, "lsn", 0):
                self._local.lsn = lsn
            self.cache.invalidate(scopes, lsn, publish=False)
        except Exception as exc:
            self._bookkeeping_failed(operation, "invalidating the cache", exc)

    def _lsn_after_failure(self) -> int:
        """A WAL position at or past a commit whose own position could not be read: the server's current one, read
        over a connection of its own (the pooled one is held); failing that, one past any position, which
        invalidates the written scopes for good and sends this thread's read-your-writes reads to the primary."""
        try:
            with self.connections.dedicated_connection(operation="invalidate", autocommit=True) as conn:
                return current_lsn(conn)
        except Exception:
            return _UNKNOWN_LSN

    def _publish(self, operation: str) -> None:
        """``cache.publish()`` after a write, which must not turn that write into a failure (see :meth:`_committed`)."""
        try:
            self.cache.publish()
        except Exception as exc:
            self._bookkeeping_failed(operation, "publishing the cache invalidation", exc)

    def _bookkeeping_failed(self, operation: str, step: str, exc: BaseException) -> None:
        scrub_exception(exc)
        with self._bookkeeping_lock:
            self._bookkeeping_failures += 1
        logger.warning(
            "%s is committed, but %s after the commit failed: %s", operation, step, server_message(exc),
            extra={"audit": {"operation": operation, "step": step, "error": type(exc).__name__,
                             "sqlstate": getattr(exc, "sqlstate", None)}},
        )

    @property
    def bookkeeping_failures(self) -> int:
        """How many times the work after a commit (WAL position, cache invalidation, its publication) failed; the
        writes themselves were committed and reported as such."""
        with self._bookkeeping_lock:
            return self._bookkeeping_failures

    @property
    def last_write_lsn(self) -> str | None:
        """The WAL position just after this thread's last commit (``X/Y``), or ``None``. Hand it to another
        thread or process as ``query(..., after_lsn=...)`` to read that write from a replica."""
        lsn = getattr(self._local, "lsn", 0)
        return format_lsn(lsn) if lsn else None

    # -- writes --------------------------------------------------------------------------------------------------

    @_operation("insert")
    def insert(self, event: AuditEvent) -> bool:
        """Store one event. Returns ``False`` when that event (same time and id) was already stored.

        Retried with jittered backoff on connection errors and timeouts (safe: a retried event is never stored
        twice); refused at once with ``CircuitOpenError`` while the primary's breaker is open.
        """
        new: bool | None = None  # stays None when the call raises
        try:
            ev = _as_event(event, None)

            def attempt() -> bool:
                with self._primary("insert") as conn:
                    new = _insert_one(conn, self.privacy.protect_one(ev, conn))
                    self._committed(conn, (ev.event_time,), "insert")
                    return new

            try:
                new = self._retrying(attempt)
                return new
            finally:
                self._publish("insert")
        finally:
            if self._telemetry and telemetry.listening().metrics:
                telemetry.record_events("insert", int(new is True), duplicates=int(new is False),
                                        failed=int(new is None))

    @_operation("insert_many")
    def insert_many(self, events: Iterable[AuditEvent | Mapping[str, Any]]) -> int:
        """Store events in COPY batches of ``settings.ingest.batch_size`` (one transaction each).

        ``events`` may hold ``AuditEvent`` objects or plain mappings of their fields (``{"action": …, "status": …,
        "principal_id": …}``), mixed. A mapping is checked against every rule of ``AuditEvent`` and hashed while
        the batch streams to the server — the fastest way in from dicts (no event object is built); an invalid
        item fails its whole batch with ``AuditValidationError`` naming ``events[i].field``.

        Idempotent: events already stored are skipped, never duplicated and never an error, so a caller that is
        unsure whether a call went through re-sends it all. Returns how many events were newly written. (A mapping
        without ``event_id`` gets a new id each time it is sent: give ids to mappings that may be re-sent.)
        """
        try:
            with self._primary("insert_many") as conn:
                events = self.privacy.protect(events, conn)
                return _insert_many(conn, events, self.settings.ingest.batch_size, commit_each=True,
                                    on_batch=lambda c, times: self._committed(c, times, "insert_many"),
                                    observe=self._telemetry and telemetry.listening().metrics)
        finally:
            self._publish("insert_many")  # also after a failure: batches committed before it must reach others

    # -- reads ---------------------------------------------------------------------------------------------------

    def _read_options(self, consistency: Any, read_your_writes: bool, after_lsn: str | None) -> int:
        _check_consistency(consistency)
        min_lsn = getattr(self._local, "lsn", 0) if read_your_writes else 0
        if after_lsn is not None:
            try:
                min_lsn = max(min_lsn, parse_lsn(after_lsn))
            except (ValueError, AttributeError):
                raise AuditValidationError(
                    "query", [("after_lsn", "must be a WAL position such as '0/16B3748' (see last_write_lsn)")]
                ) from None
        return min_lsn

    def _read(
        self,
        operation: str,
        send: _Send,
        *,
        consistency: ConsistencyLevel,
        analytics: bool,
        min_lsn: int,
        lsn: bool = False,
    ) -> tuple[Any, int, str]:
        """Run ``send`` on the server the router picks; returns (result, WAL position it reflects, server name). The
        position is read only when asked for (``lsn``: the result goes into the cache) or needed (``min_lsn``),
        in the same round trip as the read; otherwise it is 0.

        A replica that fails (or has not replayed ``min_lsn`` yet) hands the read to the primary."""
        target = self.router.choose(consistency, analytics=analytics)
        if not target.is_primary:
            found = self._read_replica(target, operation, send, min_lsn, lsn)
            if found is not None:
                return found
        track = lsn and self._track_lsn

        def on_primary() -> tuple[Any, int, str]:
            with self._primary(operation, autocommit=True) as conn:
                result, as_of = _run_read(conn, send, lsn=track)
                return result, as_of, "primary"

        result = self._retrying(on_primary)
        self.router.count("primary")
        return result

    def _read_replica(
        self, target: RouteTarget, operation: str, send: _Send, min_lsn: int, lsn: bool
    ) -> tuple[Any, int, str] | None:
        assert target.index is not None
        breaker = self.breakers.get(target.name)
        if not breaker.allow():
            return None
        try:
            with self.connections.replica_connection(target.index, operation=operation, autocommit=True) as conn:
                result, as_of = _run_read(conn, send, lsn=lsn or bool(min_lsn))
        except AuditValidationError:
            breaker.record_success()
            raise
        except AuditError as exc:
            breaker.record(exc)
            if counts_as_failure(exc):  # down or timing out (a busy pool is neither): out of rotation
                self.router.mark_failed(target.index, exc)
            else:
                logger.info("read on %s failed (%s); retried on the primary", target.name, exc.message)
            return None
        breaker.record_success()
        if min_lsn and as_of < min_lsn:  # not replayed this far yet: its answer may miss the write
            self.router.count("ryw_fallbacks")
            return None
        self.router.count(target.name)
        return result, as_of, target.name

    def _cached_read(
        self,
        kind: str,
        query: AuditQuery,
        params: dict[str, Any],
        send: _Send,
        *,
        consistency: ConsistencyLevel,
        analytics: bool,
        min_lsn: int,
        use_cache: bool,
        encode: Callable[[Any], Any] | None,
        decode: Callable[[Any], Any] | None,
    ) -> tuple[Any, str]:
        """(result, source): ``kind``'s result from the cache or the server the router picks. Observed past L1 only
        (:func:`telemetry.read <audit_db_core.telemetry.read>`): an L1 hit takes microseconds, less than a span or a
        histogram point of an SDK costs, so it is counted by the cache (``audit.cache.hits``) and not timed."""
        began = time.perf_counter() if self._telemetry else 0.0
        # Restored tables come and go outside the write path the cache follows: such reads always go to a server.
        cacheable = use_cache and self.cache.enabled and consistency != "strong" and not query.include_restored
        hit = scope = key = None
        if cacheable:
            scope = read_scope(query.since, query.until)
            key = self.cache.key(kind, query.filters(), params)
            hit = self.cache.get(key, scope, decode, min_generation=min_lsn)
            if hit is not None and hit.tier == "l1":
                return hit.value, "cache-l1"

        def fetch() -> tuple[Any, str]:
            if hit is not None:
                return hit.value, f"cache-{hit.tier}"
            if scope is None or key is None:
                result, _, source = self._read(kind, send, consistency=consistency, analytics=analytics,
                                               min_lsn=min_lsn)
                return result, source
            return self._read_and_cache(kind, query, send, scope, key, consistency=consistency,
                                        analytics=analytics, min_lsn=min_lsn, encode=encode)

        if not (self._telemetry and telemetry.observing()):
            return fetch()
        with telemetry.read(kind, consistency, began) as call:
            result, call.source = fetch()
        return result, call.source

    def _read_and_cache(
        self,
        kind: str,
        query: AuditQuery,
        send: _Send,
        scope: tuple[str, ...],
        key: str,
        *,
        consistency: ConsistencyLevel,
        analytics: bool,
        min_lsn: int,
        encode: Callable[[Any], Any] | None,
    ) -> tuple[Any, str]:
        """A cache miss: read from a server, then keep the result (with the generations it reflects)."""
        seen = self.cache.generations(scope)
        result, as_of, source = self._read(kind, send, consistency=consistency, analytics=analytics,
                                           min_lsn=min_lsn, lsn=True)
        if as_of:
            limits = QueryCache.limits(scope, seen, as_of, from_replica=source != "primary")
            closed = query.until is not None and query.until <= dt.datetime.now(dt.UTC)
            self.cache.set(key, result, scope=scope, limits=limits, closed=closed, encode=encode)
        return result, source

    @_operation("query", observed=False)  # _cached_read observes what goes past L1
    def query(
        self,
        query: AuditQuery,
        *,
        consistency: ConsistencyLevel = "strong",
        read_your_writes: bool = False,
        after_lsn: str | None = None,
        analytics: bool = False,
        use_cache: bool = True,
    ) -> QueryPage:
        """One page of events matching ``query``, newest first; ``page.next_cursor`` leads to the next page.

        ``consistency``: ``strong`` reads the primary (never the cache); ``bounded`` a replica within
        ``AUDIT_REPLICAS__BOUNDED_LAG_SECONDS``; ``eventual`` any replica in rotation — both through the cache.
        ``read_your_writes=True``: a replica only once it has replayed this thread's last write
        (``after_lsn`` does the same for a position from :attr:`last_write_lsn` of another thread or process).
        ``analytics=True`` prefers the dedicated analytics replica. ``page.extra["source"]`` says which server
        (or cache tier) answered.

        Example::

            db.insert(event)
            page = db.query(AuditQuery(principal_id="u1"), consistency="eventual", read_your_writes=True)
        """
        query = self.privacy.translate(_check_query(query))  # before the cache key: never keyed on an identifier
        min_lsn = self._read_options(consistency, read_your_writes, after_lsn)
        limit = page_size(query, self.settings.query.max_page_size, self.settings.query.default_page_size)
        page, source = self._cached_read(
            "page", query, {"limit": limit, "cursor": query.cursor},
            lambda conn: _send_query(conn, query, self.settings),
            consistency=consistency, analytics=analytics, min_lsn=min_lsn, use_cache=use_cache,
            encode=_page_to_json, decode=_page_from_json,
        )
        return _served(page, source)

    @_operation("count", observed=False)
    def count(
        self,
        query: AuditQuery,
        *,
        consistency: ConsistencyLevel = "strong",
        read_your_writes: bool = False,
        after_lsn: str | None = None,
        analytics: bool = False,
        use_cache: bool = True,
    ) -> int:
        """How many events match ``query`` (its ``limit`` and ``cursor`` are ignored); routing and caching as
        :meth:`query`."""
        query = self.privacy.translate(_check_query(query))
        min_lsn = self._read_options(consistency, read_your_writes, after_lsn)
        value, _ = self._cached_read(
            "count", query, {}, lambda conn: _send_count(conn, query),
            consistency=consistency, analytics=analytics, min_lsn=min_lsn, use_cache=use_cache,
            encode=None, decode=None,
        )
        return int(value)

    @contextmanager
    def transaction(self) -> Iterator[AuditTransaction]:
        """A unit of work: everything done through the yielded object commits together or not at all.

        Example::

            with db.transaction() as tx:
                tx.insert(first)
                tx.insert_many(more)
        """
        with ExitStack() as observed:
            if self._telemetry and telemetry.observing():
                observed.enter_context(telemetry.operation("transaction"))
            with self._primary("transaction") as conn:
                tx = AuditTransaction(conn, self.settings, self.privacy)
                committed = False
                try:
                    with conn.transaction():
                        yield tx
                    committed = True
                except psycopg.Error as exc:
                    err = classify(exc, operation="transaction")
                    logger.warning("transaction failed: %s", err.message, extra={"audit": err.to_dict()})
                    raise err from exc
                finally:
                    self._observe_transaction(tx, committed=committed)
                if tx.written_times:
                    self._committed(conn, tx.written_times, "transaction")
        self._publish("transaction")

    def _observe_transaction(self, tx: AuditTransaction, *, committed: bool) -> None:
        """``audit.events.written`` of a transaction's writes, counted once it has committed or rolled back."""
        if tx.handed and self._telemetry and telemetry.listening().metrics:
            if committed:
                telemetry.record_events("transaction", tx.new, duplicates=tx.handed - tx.new)
            else:
                telemetry.record_events("transaction", 0, failed=tx.handed)

    # -- health --------------------------------------------------------------------------------------------------

    def health(self) -> HealthReport:
        """One structured report: primary, schema, each replica, Redis, breakers, pools, cache, partition
        coverage, DEFAULT rows (never raises: failures are in the report)."""
        return build_health_report(self)
