"""Metrics and traces through the OpenTelemetry API, which is all the library depends on.

With no SDK configured, every instrument is the API's no-op (a proxy that forwards once an application sets a
global provider), and the hot paths do not even call it: they ask :func:`listening` first (a cheap check) and read
no clock, build no attribute and start no span while nothing listens. A read answered by the L1 cache is never
timed and makes no span — an SDK's span or histogram point costs more than the hit; the cache's own tally counts
it (``audit.cache.hits``). ``AUDIT_TELEMETRY__ENABLED=false`` turns a database's telemetry off altogether. An application that wants the figures configures an SDK as
usual (``opentelemetry.metrics.set_meter_provider`` / ``trace.set_tracer_provider``) or hands providers to this
module alone with :func:`configure` (tests do, because the global providers can be set once per process).

What is measured (every instrument: :data:`INSTRUMENTS`; docs/guides/observability.md lists them):

- synchronous instruments, recorded where the event happens: database operations (``db.client.operation.duration``,
  OpenTelemetry's database semantic conventions), events written, ingest batches, query duration by source and
  consistency, connection waits, lifecycle and integrity runs;
- observable instruments, read from what the library already counts when a reader collects: pools, circuit
  breakers, replica lag and rotation, the query cache, health, partitions by state and DEFAULT rows. An
  :class:`~audit_db_core.AuditDatabase` registers itself when it opens (:func:`register`) and leaves when it closes;
  its series carry ``audit.deployment`` (the deployment id, never a URL), so databases in one process never mix.
  Figures that need queries (health, partitions) are refreshed in the background, at most once per
  ``AUDIT_TELEMETRY__INSPECT_INTERVAL_SECONDS``, and only while something collects.

Attributes are fixed vocabularies only (operation, source, tier, outcome, component, state, replica name): never an
identifier, an event's value, SQL or a URL. :func:`span` and the recording functions refuse other keys.

Example::

    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from audit_db_core import telemetry

    reader = InMemoryMetricReader()
    telemetry.configure(meter_provider=MeterProvider(metric_readers=[reader]))
    telemetry.record_query("cache-l1", "eventual", 0.0001)
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ParamSpec, Protocol, TypeVar

from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import SpanKind, Status, StatusCode

logger = logging.getLogger("audit_db_core.telemetry")

P = ParamSpec("P")
R = TypeVar("R")

SCOPE = "audit_db_core"
DB_SYSTEM = "postgresql"
#: Seconds: the buckets the database semantic conventions advise for ``db.client.operation.duration``.
DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0)
#: Seconds, finer at the bottom: an L2 hit takes a fraction of a millisecond.
QUERY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                 2.5, 5.0, 10.0)
#: Seconds: lifecycle steps and integrity runs take from milliseconds to hours.
LIFECYCLE_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


@dataclass(frozen=True)
class Instrument:
    """One instrument: its OpenTelemetry name, kind, unit, the attribute keys its points may carry, meaning."""

    name: str
    kind: str  # counter | histogram | gauge (observable) | observable_counter | observable_up_down_counter
    unit: str
    attributes: tuple[str, ...]
    description: str
    buckets: tuple[float, ...] | None = None


_DEP = "audit.deployment"
_POOL = ("db.client.connection.pool.name", _DEP)

INSTRUMENTS: tuple[Instrument, ...] = (
    # -- recorded where it happens (the hot paths: database.py, connections.py) ---------------------------------
    Instrument("db.client.operation.duration", "histogram", "s",
               ("db.system.name", "db.operation.name", "error.type"),
               "Duration of a public database operation of AuditDatabase (insert, insert_many, query, count, "
               "transaction), retries included; a query or count answered by L1 is counted (audit.cache.hits), "
               "not timed", DURATION_BUCKETS),
    Instrument("audit.events.written", "counter", "{event}", ("db.operation.name", "audit.outcome"),
               "Events handed to insert / insert_many (and to a transaction, once it commits), by outcome: "
               "written (new), duplicate (already stored, skipped), failed (not stored: the call or the batch "
               "raised)"),
    Instrument("audit.ingest.batch.duration", "histogram", "s", ("audit.outcome",),
               "Duration of one insert_many batch (COPY and commit)", DURATION_BUCKETS),
    Instrument("audit.query.duration", "histogram", "s",
               ("audit.query.source", "audit.consistency", "audit.query.kind"),
               "Duration of query / count as the caller saw it, by what answered (primary, replica, l2) and the "
               "consistency asked for; L1 hits cost less than a measurement and are counted instead "
               "(audit.cache.hits, tier l1)", QUERY_BUCKETS),
    Instrument("db.client.connection.wait_time", "histogram", "s", ("db.client.connection.pool.name",),
               "Time a caller waited for a pooled connection", DURATION_BUCKETS),
    # -- recorded by the lifecycle and integrity entry points ----------------------------------------------------
    Instrument("audit.lifecycle.duration", "histogram", "s",
               ("audit.lifecycle.operation", "audit.outcome", "error.type"),
               "Duration of a partition lifecycle operation or a migration, by outcome (ok, error)",
               LIFECYCLE_BUCKETS),
    Instrument("audit.integrity.duration", "histogram", "s",
               ("audit.integrity.operation", "audit.outcome", "error.type"),
               "Duration of a seal or a verification, by outcome (the run's status: sealed, nothing_to_seal, "
               "held_back, busy, verified, failed, incomplete; error when it raised)", LIFECYCLE_BUCKETS),
    Instrument("audit.integrity.findings", "counter", "{problem}", ("audit.integrity.problem",),
               "Problems verification found, by kind (modified_row, deleted_row, broken_chain, …)"),
    Instrument("audit.integrity.sealed", "counter", "{event}", (),
               "Events covered by the digests seals made"),
    # -- observed when a reader collects (per registered database) -----------------------------------------------
    Instrument("db.client.connection.count", "observable_up_down_counter", "{connection}",
               ("db.client.connection.pool.name", "db.client.connection.state", _DEP),
               "Connections of a pool, by state (idle, used)"),
    Instrument("db.client.connection.max", "observable_up_down_counter", "{connection}", _POOL,
               "The most connections a pool opens (AUDIT_POOL__MAX_SIZE, AUDIT_POOL__REPLICA_MAX_SIZE)"),
    Instrument("db.client.connection.pending_requests", "observable_up_down_counter", "{request}", _POOL,
               "Callers waiting for a connection now: above zero for long, the pool is too small"),
    Instrument("db.client.connection.timeouts", "observable_counter", "{timeout}", _POOL,
               "Connection requests that failed (timed out, or the server refused)"),
    Instrument("audit.breaker.state", "gauge", "{state}", ("audit.component", "audit.breaker.state", _DEP),
               "1 for the state a circuit breaker is in (closed, open, half_open), 0 for the others"),
    Instrument("audit.breaker.transitions", "observable_counter", "{transition}",
               ("audit.component", "audit.breaker.from", "audit.breaker.to", _DEP),
               "Circuit breaker state changes"),
    Instrument("audit.breaker.rejected", "observable_counter", "{call}", ("audit.component", _DEP),
               "Calls a breaker refused at once while open"),
    Instrument("audit.replica.lag.time", "gauge", "s", ("audit.replica", _DEP),
               "Replay lag of a replica in seconds, as the router last measured it"),
    Instrument("audit.replica.lag.wal", "gauge", "By", ("audit.replica", _DEP),
               "WAL a replica has still to replay, in bytes, as the router last measured it"),
    Instrument("audit.replica.in_rotation", "gauge", "{replica}", ("audit.replica", _DEP),
               "1 while a replica takes reads (reachable, a standby, within the lag bounds, breaker not open)"),
    Instrument("audit.replica.reads", "observable_counter", "{read}", ("audit.read.target", _DEP),
               "Reads each server took (primary, replica-0, …) and the reads that fell back to the primary "
               "(failovers: a replica failed; ryw_fallbacks: it had not replayed the caller's write yet)"),
    Instrument("audit.cache.hits", "observable_counter", "{lookup}", ("audit.cache.tier", _DEP),
               "Query cache hits, per tier (l1, l2)"),
    Instrument("audit.cache.misses", "observable_counter", "{lookup}", ("audit.cache.tier", _DEP),
               "Query cache misses, per tier (l1, l2)"),
    Instrument("audit.cache.invalidations", "observable_counter", "{invalidation}", (_DEP,),
               "Writes and lifecycle changes that moved the cache's generations (entries over them go stale)"),
    Instrument("audit.cache.stale", "observable_counter", "{lookup}", (_DEP,),
               "Lookups that found an entry outdated by a later write (counted as misses too)"),
    Instrument("audit.cache.bypasses", "observable_counter", "{call}", ("audit.cache.tier", _DEP),
               "Cache calls skipped because the tier is down (l2: Redis's breaker open)"),
    Instrument("audit.cache.errors", "observable_counter", "{error}", ("audit.cache.tier", _DEP),
               "Redis errors of the L2 tier (each one a miss, never an error to a caller)"),
    Instrument("audit.cache.rejected", "observable_counter", "{value}", ("audit.cache.tier", _DEP),
               "L2 values refused (authentication, age, size or decoding failed)"),
    Instrument("audit.cache.evictions", "observable_counter", "{entry}", ("audit.cache.tier", _DEP),
               "L1 entries evicted to stay within AUDIT_CACHE__L1_MAX_ENTRIES / __L1_MAX_BYTES"),
    Instrument("audit.cache.l1.size", "observable_up_down_counter", "By", (_DEP,),
               "Bytes the L1 cache holds"),
    Instrument("audit.cache.l1.entries", "observable_up_down_counter", "{entry}", (_DEP,),
               "Entries the L1 cache holds"),
    Instrument("audit.health.status", "gauge", "{status}", ("audit.health.status", _DEP),
               "1 for the status of the last health report (healthy, degraded, unhealthy), 0 for the others"),
    Instrument("audit.health.component", "gauge", "{component}", ("audit.component", _DEP),
               "1 when a component of the last health report is healthy, 0 when not (the report's "
               "recommendation says what to do)"),
    Instrument("audit.partitions", "gauge", "{partition}", ("audit.partition.state", _DEP),
               "Registered partitions by state (active, archived, purged)"),
    Instrument("audit.partitions.missing", "gauge", "{partition}", (_DEP,),
               "Partitions of the premake window that do not exist (run partition maintenance)"),
    Instrument("audit.partition.default.rows", "gauge", "{row}", (_DEP,),
               "Rows waiting in the DEFAULT partition (audit-platform partitions rescue moves them)"),
)
INSTRUMENT_NAMES = frozenset(i.name for i in INSTRUMENTS)


def prometheus_name(spec: Instrument) -> str:
    """The name Prometheus shows for ``spec`` through the OpenTelemetry Prometheus exporter: dots become
    underscores, the unit ``s`` / ``By`` adds ``_seconds`` / ``_bytes``, a counter ends in ``_total`` (a histogram
    has ``_bucket``, ``_count`` and ``_sum`` series)."""
    name = spec.name.replace(".", "_")
    suffix = {"s": "seconds", "By": "bytes"}.get(spec.unit)
    if suffix and not name.endswith("_" + suffix):
        name += "_" + suffix
    return name + "_total" if spec.kind in ("counter", "observable_counter") else name

#: Span attributes the library sets (all fixed vocabularies or counts).
SPAN_ATTRIBUTES = frozenset({
    "db.system.name", "db.operation.name", "db.collection.name", "error.type", "audit.lifecycle.operation",
    "audit.integrity.operation", "audit.outcome", "audit.dry_run", "audit.count", "audit.rows",
    "audit.query.source", "audit.consistency",
})

_BREAKER_STATES = ("closed", "open", "half_open")
_HEALTH_STATES = ("healthy", "degraded", "unhealthy")
_PARTITION_STATES = ("active", "archived", "purged")


# -- providers and instruments --------------------------------------------------------------------------------------


class _Meters:
    """The instruments of one meter provider (rebuilt by :func:`configure`)."""

    def __init__(self, provider: metrics.MeterProvider | None) -> None:
        meter = metrics.get_meter(SCOPE, _version(), meter_provider=provider)
        self.sync: dict[str, Any] = {}
        for spec in INSTRUMENTS:
            if spec.kind == "counter":
                self.sync[spec.name] = meter.create_counter(spec.name, spec.unit, spec.description)
            elif spec.kind == "histogram":
                self.sync[spec.name] = meter.create_histogram(
                    spec.name, spec.unit, spec.description,
                    explicit_bucket_boundaries_advisory=list(spec.buckets or DURATION_BUCKETS))
            else:
                create = {"gauge": meter.create_observable_gauge,
                          "observable_counter": meter.create_observable_counter,
                          "observable_up_down_counter": meter.create_observable_up_down_counter}[spec.kind]
                # Bound to the provider: a provider configured again keeps the callbacks it was given first.
                create(spec.name, [functools.partial(_observe, spec.name, provider)], spec.unit, spec.description)
        h = self.sync
        self.operation = h["db.client.operation.duration"]
        self.written = h["audit.events.written"]
        self.batch = h["audit.ingest.batch.duration"]
        self.query = h["audit.query.duration"]
        self.wait = h["db.client.connection.wait_time"]
        self.lifecycle = h["audit.lifecycle.duration"]
        self.integrity = h["audit.integrity.duration"]
        self.findings = h["audit.integrity.findings"]
        self.sealed = h["audit.integrity.sealed"]


_lock = threading.Lock()
_meter_provider: metrics.MeterProvider | None = None
_tracer_provider: trace.TracerProvider | None = None
_meters: _Meters | None = None
_tracer: trace.Tracer | None = None


def configure(
    *, meter_provider: metrics.MeterProvider | None = None, tracer_provider: trace.TracerProvider | None = None
) -> None:
    """Send the library's metrics and spans to these providers instead of the global ones (``None``: the global
    provider again). Instruments made for the previous providers stop observing.

    Example::

        telemetry.configure(meter_provider=MeterProvider(metric_readers=[reader]),
                            tracer_provider=tracer_provider)
    """
    global _meter_provider, _tracer_provider, _meters, _tracer
    with _lock:
        _meter_provider, _tracer_provider = meter_provider, tracer_provider
        _meters, _tracer = None, None
    _listen_again()
    _t()  # made now, not by the next operation's span
    if _registered:
        _build()  # the observable instruments of the databases already open


def _m() -> _Meters:
    found = _meters
    if found is None:
        return _build()
    return found


def _build() -> _Meters:
    global _meters
    with _lock:
        if _meters is None:
            _meters = _Meters(_meter_provider)
        return _meters


def _t() -> trace.Tracer:
    global _tracer
    found = _tracer
    if found is None:
        with _lock:
            found = _tracer = trace.get_tracer(SCOPE, _version(), tracer_provider=_tracer_provider)
    return found


@functools.cache
def _version() -> str:
    """The instrumentation scope's version: this package's ("" when it is not installed)."""
    try:
        return importlib.metadata.version("audit-platform")
    except importlib.metadata.PackageNotFoundError:
        return ""


# -- does anything listen? ---------------------------------------------------------------------------------------------


class _Listening:
    """Whether an SDK takes the library's measurements (``metrics``) and spans (``traces``).

    The API's own providers (no-op, or the proxies that forward once an application sets a global provider) take
    nothing, yet a no-op span still costs microseconds: with neither, the hot paths read no clock, build no
    attribute and start no span. Worked out again by :func:`configure` and :func:`register`, and at most once a
    second otherwise (an application may set the global providers after a database opened)."""

    __slots__ = ("metrics", "traces", "until")

    def __init__(self) -> None:
        self.metrics = self.traces = False
        self.until = float("-inf")


def _from_sdk(provider: object) -> bool:
    """A provider that records: any but the API package's own (no-op and proxy providers live in it)."""
    return not type(provider).__module__.startswith(("opentelemetry.metrics", "opentelemetry.trace"))


_listening = _Listening()


def _listen_again() -> _Listening:
    meter_provider = _meter_provider if _meter_provider is not None else metrics.get_meter_provider()
    tracer_provider = _tracer_provider if _tracer_provider is not None else trace.get_tracer_provider()
    _listening.metrics, _listening.traces = _from_sdk(meter_provider), _from_sdk(tracer_provider)
    both_given = _meter_provider is not None and _tracer_provider is not None
    _listening.until = float("inf") if both_given else time.monotonic() + 1.0
    return _listening


def listening() -> _Listening:
    """Who listens now (``.metrics``, ``.traces``): a cheap check the hot paths make before measuring anything.

    Example::

        if telemetry.listening().metrics:
            telemetry.record_connection_wait("primary", waited)
    """
    found = _listening
    if time.monotonic() >= found.until:
        return _listen_again()
    return found


def observing() -> bool:
    """Whether anything listens at all (metrics or traces)."""
    found = listening()
    return found.metrics or found.traces


# -- recording (cheap: attribute sets are built once and reused) ---------------------------------------------------

_SOURCES = {"primary": "primary", "cache-l1": "l1", "cache-l2": "l2", "l1": "l1", "l2": "l2"}
_attr_cache: dict[tuple[Any, ...], Mapping[str, Any]] = {}


def _keep(key: tuple[Any, ...], attributes: dict[str, Any]) -> Mapping[str, Any]:
    """Remember an attribute set under ``key``: the next recording with the same values reuses it."""
    _attr_cache[key] = attributes
    return attributes


def query_source(source: str) -> str:
    """The ``audit.query.source`` of a page's ``extra["source"]``: primary, replica (any ``replica-<i>``), l1, l2."""
    return _SOURCES.get(source) or ("replica" if source.startswith("replica") else "other")


def record_operation(operation: str, seconds: float, error_type: str | None = None) -> None:
    """``db.client.operation.duration`` of one public operation (``insert``, ``insert_many``, ``query``, …)."""
    key = ("op", operation, error_type)
    (_meters or _build()).operation.record(seconds, _attr_cache.get(key) or _keep(key, {
        "db.system.name": DB_SYSTEM, "db.operation.name": operation,
        **({"error.type": error_type} if error_type else {})}))


def record_events(operation: str, written: int, duplicates: int = 0, failed: int = 0) -> None:
    """``audit.events.written`` after an insert / insert_many: new, already stored, not stored."""
    counter = (_meters or _build()).written
    for outcome, n in (("written", written), ("duplicate", duplicates), ("failed", failed)):
        if n:
            key = ("ev", operation, outcome)
            counter.add(n, _attr_cache.get(key) or _keep(key, {"db.operation.name": operation,
                                                               "audit.outcome": outcome}))


def record_batch(seconds: float, ok: bool = True) -> None:
    """``audit.ingest.batch.duration`` of one insert_many batch."""
    (_meters or _build()).batch.record(seconds, _OK if ok else _ERROR)


def record_query(source: str, consistency: str, seconds: float, kind: str = "page") -> None:
    """``audit.query.duration``: ``source`` as in ``page.extra["source"]`` (``primary``, ``replica-0``,
    ``cache-l1``, ``cache-l2``), ``consistency`` as asked, ``kind`` ``page`` (query) or ``count``."""
    key = ("q", source, consistency, kind)
    (_meters or _build()).query.record(seconds, _attr_cache.get(key) or _keep(key, {
        "audit.query.source": query_source(source), "audit.consistency": consistency, "audit.query.kind": kind}))


def record_connection_wait(pool: str, seconds: float) -> None:
    """``db.client.connection.wait_time``: ``pool`` is the pool's name (``primary``, ``replica-<i>``)."""
    key = ("w", pool)
    (_meters or _build()).wait.record(seconds, _attr_cache.get(key) or _keep(key, {"db.client.connection.pool.name": pool}))


_OK: Mapping[str, Any] = {"audit.outcome": "ok"}
_ERROR: Mapping[str, Any] = {"audit.outcome": "error"}


def error_type(exc: BaseException) -> str:
    """``error.type``: the exception's class name (a fixed vocabulary, never its message)."""
    return type(exc).__qualname__


# -- spans ------------------------------------------------------------------------------------------------------------


@contextmanager
def span(name: str, *, operation: str, **attributes: str | int | float | bool) -> Iterator[trace.Span]:
    """A CLIENT span ``name`` with ``db.system.name=postgresql`` and ``db.operation.name=operation``, the current
    span while the block runs; an exception marks it ERROR with ``error.type`` (the class name: never the
    message, which may quote a value). Attribute names are dotted OpenTelemetry names, given as a mapping::

        with telemetry.span("archive audit_log", operation="archive", **{"audit.dry_run": False}):
            ...
    """
    unknown = set(attributes) - SPAN_ATTRIBUTES
    if unknown:
        raise ValueError(f"span attributes outside the fixed set: {sorted(unknown)}")
    attrs = {"db.system.name": DB_SYSTEM, "db.operation.name": operation, **attributes}
    with _t().start_as_current_span(name, kind=SpanKind.CLIENT, attributes=attrs, record_exception=False,
                                    set_status_on_exception=False) as current:
        try:
            yield current
        except BaseException as exc:
            current.set_attribute("error.type", error_type(exc))
            current.set_status(Status(StatusCode.ERROR, error_type(exc)))
            raise


_COLLECTION = {"db.collection.name": "audit_log"}


@contextmanager
def operation(name: str) -> Iterator[None]:
    """Observe one public operation of :class:`~audit_db_core.AuditDatabase` (a write, a transaction): the span
    ``<name> audit_log``, current while the block runs, and ``db.client.operation.duration`` with ``error.type`` when
    it raised. Call it only when :func:`observing` (it measures whatever listens)."""
    on = _listening
    started = time.perf_counter()
    failure: str | None = None
    try:
        if on.traces:
            with span(f"{name} audit_log", operation=name, **_COLLECTION):
                yield
        else:
            yield
    except BaseException as exc:
        failure = error_type(exc)
        raise
    finally:
        if on.metrics:
            record_operation(name, time.perf_counter() - started, failure)


@dataclass
class ReadCall:
    """What :func:`read` records when its block ends: set ``source`` (``page.extra["source"]``)."""

    source: str = "other"


@contextmanager
def read(kind: str, consistency: str, started: float) -> Iterator[ReadCall]:
    """Observe a query (``kind`` ``page``) or a count that went past the L1 cache, begun at ``started``
    (``time.perf_counter()``): ``audit.query.duration`` by source and consistency, ``db.client.operation.duration``
    (``query`` / ``count``), and a span that starts at ``started`` — opened only now, once L1 did not answer, so an
    L1 hit never pays for a span. Call it only when :func:`observing`.

    Example::

        with telemetry.read("page", "eventual", started) as call:
            page, call.source = fetch()
    """
    on = _listening
    name = "query" if kind == "page" else "count"
    call = ReadCall()
    current: trace.Span | None = None
    if on.traces:
        start_ns = time.time_ns() - int((time.perf_counter() - started) * 1e9)
        current = _t().start_span(f"{name} audit_log", kind=SpanKind.CLIENT, start_time=start_ns, attributes={
            "db.system.name": DB_SYSTEM, "db.operation.name": name, **_COLLECTION, "audit.consistency": consistency})
    failure: str | None = None
    try:
        if current is None:
            yield call
        else:
            with trace.use_span(current, end_on_exit=False, record_exception=False, set_status_on_exception=False):
                yield call
    except BaseException as exc:
        failure = error_type(exc)
        raise
    finally:
        seconds = time.perf_counter() - started
        if current is not None:
            if failure:
                current.set_attribute("error.type", failure)
                current.set_status(Status(StatusCode.ERROR, failure))
            else:
                current.set_attribute("audit.query.source", query_source(call.source))
            current.end()
        if on.metrics:
            record_operation(name, seconds, failure)
            if failure is None:
                record_query(call.source, consistency, seconds, kind)


def lifecycle(operation: str, *, dry_run_default: bool | None = None) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a lifecycle entry point: a span ``<operation> audit_log`` and ``audit.lifecycle.duration`` with its
    outcome. ``dry_run_default``: the operation takes ``dry_run=`` (its default given here), recorded on the span.
    """

    def wrap(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def inner(*args: P.args, **kwargs: P.kwargs) -> R:
            extra: dict[str, Any] = {"db.collection.name": "audit_log", "audit.lifecycle.operation": operation}
            if dry_run_default is not None:
                extra["audit.dry_run"] = bool(kwargs.get("dry_run", dry_run_default))
            started = time.perf_counter()
            failure: str | None = None
            try:
                with span(f"{operation} audit_log", operation=operation, **extra) as current:
                    result = fn(*args, **kwargs)
                    count = _result_count(result)
                    if count is not None:
                        current.set_attribute("audit.count", count)
                    return result
            except BaseException as exc:
                failure = error_type(exc)
                raise
            finally:
                _record_lifecycle(operation, time.perf_counter() - started, failure)

        return inner

    return wrap


def _result_count(result: Any) -> int | None:
    """How many items a lifecycle call returned (partitions created, archives verified, …), when it is a list."""
    return len(result) if isinstance(result, (list, tuple)) else None


def _record_lifecycle(operation: str, seconds: float, failure: str | None) -> None:
    _m().lifecycle.record(seconds, {"audit.lifecycle.operation": operation,
                                    "audit.outcome": "error" if failure else "ok",
                                    **({"error.type": failure} if failure else {})})


@dataclass
class IntegrityRun:
    """What :func:`integrity_run` records when its block ends: set ``status`` (and ``sealed`` / ``findings``)."""

    status: str = "ok"
    sealed: int = 0
    findings: Iterable[str] = ()


@contextmanager
def integrity_run(operation: str) -> Iterator[IntegrityRun]:
    """A span ``<operation> audit_log`` around a seal or a verification, then ``audit.integrity.duration`` with the
    run's status, ``audit.integrity.sealed`` and ``audit.integrity.findings`` by problem kind."""
    run = IntegrityRun()
    started = time.perf_counter()
    failure: str | None = None
    try:
        with span(f"{operation} audit_log", operation=operation, **{"db.collection.name": "audit_log",
                                                                       "audit.integrity.operation": operation}) as sp:
            yield run
            sp.set_attribute("audit.outcome", run.status)
    except BaseException as exc:
        failure = error_type(exc)
        raise
    finally:
        m = _m()
        status = "error" if failure else run.status
        m.integrity.record(time.perf_counter() - started, {
            "audit.integrity.operation": operation, "audit.outcome": status,
            **({"error.type": failure} if failure else {})})
        if not failure:
            if run.sealed:
                m.sealed.add(run.sealed)
            for kind, n in Counter(run.findings).items():
                m.findings.add(n, {"audit.integrity.problem": kind})


# -- observed figures of registered databases --------------------------------------------------------------------------


class TelemetrySource(Protocol):
    """What the observable instruments read: the parts of an :class:`~audit_db_core.AuditDatabase`."""

    settings: Any
    connections: Any  # pool_stats()
    breakers: Any  # stats()
    cache: Any  # stats()
    router: Any  # snapshot()

    @property
    def partitions(self) -> Any: ...  # list_partitions()

    @property
    def deployment_id(self) -> Any: ...

    def health(self) -> Any: ...


class _Registered:
    """One registered database: a weak reference, and the figures that need queries, refreshed in the background."""

    def __init__(self, db: TelemetrySource) -> None:
        self.ref = weakref.ref(db)
        self.deployment = "unknown"
        self.interval = float(db.settings.telemetry.inspect_interval_seconds)
        self.lock = threading.Lock()
        self.refreshed_at = float("-inf")
        self.refreshing = False
        self.health: Any = None  # the last HealthReport
        self.by_state: dict[str, int] | None = None
        self.identity_tried_at = float("-inf")

    def label(self, db: TelemetrySource) -> str:
        """The deployment id: read once (one query on the primary, tried again at most every 10 s while it fails:
        not migrated yet, primary down), ``unknown`` until then."""
        if self.deployment == "unknown" and time.monotonic() - self.identity_tried_at >= 10:
            self.identity_tried_at = time.monotonic()
            try:
                self.deployment = str(db.deployment_id)
            except Exception as exc:
                logger.debug("telemetry: deployment id not readable: %s", error_type(exc))
        return self.deployment

    def maybe_refresh(self) -> None:
        """Start a background refresh when the last one is older than the interval (never blocks a collection)."""
        with self.lock:
            if self.refreshing or time.monotonic() - self.refreshed_at < self.interval:
                return
            self.refreshing = True
            self.refreshed_at = time.monotonic()
        threading.Thread(target=self.refresh, name="audit-telemetry-inspect", daemon=True).start()

    def refresh(self) -> None:
        """Deployment id, a health report and the partitions by state, each failure logged and skipped."""
        try:
            db = self.ref()
            if db is None:
                return
            self.identity_tried_at = float("-inf")
            self.label(db)
            try:
                note_health(db, db.health())
            except Exception as exc:
                logger.debug("telemetry: health report failed: %s", error_type(exc))
            try:
                states = Counter(p.state for p in db.partitions.list_partitions())
                self.by_state = {s: states.get(s, 0) for s in _PARTITION_STATES}
            except Exception as exc:
                logger.debug("telemetry: partitions not readable: %s", error_type(exc))
        finally:
            with self.lock:
                self.refreshing = False
                self.refreshed_at = time.monotonic()


_registered: dict[int, _Registered] = {}
_registered_lock = threading.Lock()


def register(db: TelemetrySource) -> None:
    """Observe ``db`` (its pools, breakers, replicas, cache, health and partitions) until :func:`unregister`."""
    with _registered_lock:
        _registered[id(db)] = _Registered(db)
    _m()  # the observable instruments exist from now on
    _listen_again()  # a provider set since the last look is used from this database's first call

def unregister(db: TelemetrySource) -> None:
    """Stop observing ``db`` (its series end with the next collection)."""
    with _registered_lock:
        _registered.pop(id(db), None)


def refresh(db: TelemetrySource) -> None:
    """Refresh the queried figures of a registered ``db`` now, in this thread (tests, and ``metrics`` at start)."""
    with _registered_lock:
        found = _registered.get(id(db))
    if found is not None:
        found.refresh()


def note_health(db: Any, report: Any) -> None:
    """Keep ``report`` (a :class:`~audit_db_core.health.HealthReport`) as the figures of ``db``'s health gauges;
    :func:`~audit_db_core.health.build_health_report` calls it with every report."""
    with _registered_lock:
        found = _registered.get(id(db))
    if found is not None:
        found.health = report


def _live() -> list[tuple[_Registered, TelemetrySource]]:
    with _registered_lock:
        entries = list(_registered.values())
    out = []
    for entry in entries:
        db = entry.ref()
        if db is not None:
            out.append((entry, db))
    return out


def _observe(name: str, provider: metrics.MeterProvider | None, options: CallbackOptions) -> Iterable[Observation]:
    if provider is not _meter_provider:  # made for a provider that configure() replaced
        return []
    out: list[Observation] = []
    for entry, db in _live():
        try:
            out.extend(_OBSERVERS[name](entry, db, {_DEP: entry.label(db)}))
        except Exception as exc:  # a collection must never fail for one database
            logger.debug("telemetry: %s not observed: %s", name, error_type(exc))
    return out


def _pool_points(field_of: Callable[[dict[str, Any]], Iterable[tuple[float, dict[str, Any]]]]) -> Any:
    def observe(entry: _Registered, db: TelemetrySource, dep: dict[str, Any]) -> Iterator[Observation]:
        for pool, stats in db.connections.pool_stats().items():
            for value, extra in field_of(stats):
                yield Observation(value, {"db.client.connection.pool.name": pool, **extra, **dep})

    return observe


def _breaker_states(entry: _Registered, db: TelemetrySource, dep: dict[str, Any]) -> Iterator[Observation]:
    for name, stats in db.breakers.stats().items():
        for state in _BREAKER_STATES:
            yield Observation(int(stats["state"] == state), {"audit.component": name, "audit.breaker.state": state,
                                                              **dep})


def _breaker_transitions(entry: _Registered, db: TelemetrySource, dep: dict[str, Any]) -> Iterator[Observation]:
    for name, stats in db.breakers.stats().items():
        for change, n in stats.get("transitions", {}).items():
            old, _, new = change.partition("->")
            yield Observation(n, {"audit.component": name, "audit.breaker.from": old, "audit.breaker.to": new, **dep})


def _breaker_rejected(entry: _Registered, db: TelemetrySource, dep: dict[str, Any]) -> Iterator[Observation]:
    for name, stats in db.breakers.stats().items():
        yield Observation(stats.get("rejected", 0), {"audit.component": name, **dep})


def _replica_field(field: str, *, flag: bool = False) -> Any:
    def observe(entry: _Registered, db: TelemetrySource, dep: dict[str, Any]) -> Iterator[Observation]:
        for name, replica in db.router.snapshot()["replicas"].items():
            value = replica.get(field)
            if value is not None:
                yield Observation(int(bool(value)) if flag else value, {"audit.replica": name, **dep})

    return observe


def _replica_reads(entry: _Registered, db: TelemetrySource, dep: dict[str, Any]) -> Iterator[Observation]:
    for target, n in db.router.snapshot()["reads"].items():
        yield Observation(n, {"audit.read.target": target, **dep})


def _cache_field(*pairs: tuple[str, str | None]) -> Any:
    """Observations of ``cache.stats()`` fields: ``(stats key, tier or None)`` each."""

    def observe(entry: _Registered, db: TelemetrySource, dep: dict[str, Any]) -> Iterator[Observation]:
        stats = db.cache.stats()
        for key, tier in pairs:
            if key in stats:
                yield Observation(stats[key], {**({"audit.cache.tier": tier} if tier else {}), **dep})

    return observe


def _health_status(entry: _Registered, db: TelemetrySource, dep: dict[str, Any]) -> Iterator[Observation]:
    entry.maybe_refresh()
    report = entry.health
    if report is not None:
        for status in _HEALTH_STATES:
            yield Observation(int(report.status == status), {"audit.health.status": status, **dep})


def _health_components(entry: _Registered, db: TelemetrySource, dep: dict[str, Any]) -> Iterator[Observation]:
    entry.maybe_refresh()
    if entry.health is not None:
        for name, component in entry.health.components.items():
            yield Observation(int(component.healthy), {"audit.component": name, **dep})


def _partitions_by_state(entry: _Registered, db: TelemetrySource, dep: dict[str, Any]) -> Iterator[Observation]:
    entry.maybe_refresh()
    for state, n in (entry.by_state or {}).items():
        yield Observation(n, {"audit.partition.state": state, **dep})


def _health_partitions(key: str) -> Any:
    def observe(entry: _Registered, db: TelemetrySource, dep: dict[str, Any]) -> Iterator[Observation]:
        entry.maybe_refresh()
        found = entry.health.partitions.get(key) if entry.health is not None else None
        if found is not None:
            yield Observation(len(found) if isinstance(found, list) else found, dep)

    return observe


_OBSERVERS: dict[str, Callable[[_Registered, TelemetrySource, dict[str, Any]], Iterable[Observation]]] = {
    "db.client.connection.count": _pool_points(
        lambda s: [(s["idle"], {"db.client.connection.state": "idle"}),
                   (s["in_use"], {"db.client.connection.state": "used"})]),
    "db.client.connection.max": _pool_points(lambda s: [(s["max_size"], {})]),
    "db.client.connection.pending_requests": _pool_points(lambda s: [(s["waiting"], {})]),
    "db.client.connection.timeouts": _pool_points(lambda s: [(s["acquisitions_failed"], {})]),
    "audit.breaker.state": _breaker_states,
    "audit.breaker.transitions": _breaker_transitions,
    "audit.breaker.rejected": _breaker_rejected,
    "audit.replica.lag.time": _replica_field("lag_seconds"),
    "audit.replica.lag.wal": _replica_field("lag_bytes"),
    "audit.replica.in_rotation": _replica_field("in_rotation", flag=True),
    "audit.replica.reads": _replica_reads,
    "audit.cache.hits": _cache_field(("l1_hits", "l1"), ("l2_hits", "l2")),
    "audit.cache.misses": _cache_field(("l1_misses", "l1"), ("l2_misses", "l2")),
    "audit.cache.invalidations": _cache_field(("invalidations", None)),
    "audit.cache.stale": _cache_field(("invalidated", None)),
    "audit.cache.bypasses": _cache_field(("bypassed", "l2")),
    "audit.cache.errors": _cache_field(("redis_errors", "l2")),
    "audit.cache.rejected": _cache_field(("l2_rejected", "l2")),
    "audit.cache.evictions": _cache_field(("l1_evictions", "l1")),
    "audit.cache.l1.size": _cache_field(("l1_bytes", None)),
    "audit.cache.l1.entries": _cache_field(("l1_entries", None)),
    "audit.health.status": _health_status,
    "audit.health.component": _health_components,
    "audit.partitions": _partitions_by_state,
    "audit.partitions.missing": _health_partitions("missing"),
    "audit.partition.default.rows": _health_partitions("default_rows"),
}
