"""OpenTelemetry metrics and spans of the library, read with the real SDK's in-memory reader and exporter.

- the recording functions put the documented attributes on the documented instruments;
- writes and reads record where they happen (events by outcome, batches, operations, queries by source and
  consistency, connection waits) and make spans inside the application's trace; an L1 hit makes neither a span nor
  a histogram point, only the cache's count;
- with no SDK, or with telemetry turned off for a database, nothing is measured;
- lifecycle entry points, migrations, seals and verifications make spans (``db.system.name=postgresql``) and
  durations with their outcome;
- a registered database's pools, breakers, cache, health and partitions are observed, per deployment, and stop
  being observed when it closes;
- no attribute of any point or span holds an identifier or a value of an event.
"""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path
from typing import Any

import pytest

from audit_db_core import (
    AuditDatabase,
    AuditError,
    AuditEvent,
    AuditQuery,
    AuditSettings,
    AuditValidationError,
    telemetry,
)
from tests.conftest import TestServers as Servers
from tests.conftest import dbname_of, with_dbname
from tests.telemetry import Collected, all_attribute_values, otel, value  # noqa: F401 - otel is a fixture

UTC = dt.UTC
KINDS = {"counter", "histogram", "gauge", "observable_counter", "observable_up_down_counter"}


def test_every_instrument_is_defined_once_with_a_unit_and_known_attributes() -> None:
    names = [i.name for i in telemetry.INSTRUMENTS]
    assert len(names) == len(set(names))
    for spec in telemetry.INSTRUMENTS:
        assert spec.kind in KINDS and spec.unit and spec.description
        assert (spec.buckets is not None) == (spec.kind == "histogram"), spec.name
        if spec.kind.startswith("observable") or spec.kind == "gauge":
            assert spec.name in telemetry._OBSERVERS and "audit.deployment" in spec.attributes, spec.name
    assert set(telemetry._OBSERVERS) <= set(names)
    # the database semantic conventions' names where they apply
    assert {"db.client.operation.duration", "db.client.connection.count", "db.client.connection.wait_time",
            "db.client.connection.pending_requests", "db.client.connection.max"} <= set(names)


def test_recording_functions_carry_only_fixed_attributes(otel: Collected) -> None:
    telemetry.record_query("cache-l1", "eventual", 0.0001)
    telemetry.record_query("replica-1", "bounded", 0.002, kind="count")
    telemetry.record_query("primary", "strong", 0.003)
    telemetry.record_operation("insert_many", 0.05)
    telemetry.record_operation("insert", 0.01, error_type="AuditConnectionError")
    telemetry.record_events("insert_many", written=8, duplicates=2)
    telemetry.record_batch(0.04)
    telemetry.record_connection_wait("primary", 0.0005)
    got = otel.metrics()
    queries = got["audit.query.duration"]
    assert value(queries, **{"audit.query.source": "l1"}).count == 1
    replica = value(queries, **{"audit.query.source": "replica"})
    assert replica.count == 1 and replica.sum == pytest.approx(0.002)
    assert value(queries, **{"audit.query.source": "replica", "audit.query.kind": "count",
                             "audit.consistency": "bounded"}).count == 1
    ops = got["db.client.operation.duration"]
    ok = value(ops, **{"db.operation.name": "insert_many"})
    assert ok.count == 1 and (ok is value(ops, **{"db.system.name": "postgresql", "db.operation.name": "insert_many"}))
    assert value(ops, **{"error.type": "AuditConnectionError"}).count == 1
    assert value(got["audit.events.written"], **{"audit.outcome": "written"}) == 8
    assert value(got["audit.events.written"], **{"audit.outcome": "duplicate"}) == 2
    assert value(got["audit.ingest.batch.duration"], **{"audit.outcome": "ok"}).count == 1
    assert value(got["db.client.connection.wait_time"], **{"db.client.connection.pool.name": "primary"}).count == 1
    _attributes_are_declared(got)


def _attributes_are_declared(got: dict[str, list[tuple[dict[str, Any], Any]]]) -> None:
    declared = {i.name: set(i.attributes) for i in telemetry.INSTRUMENTS}
    for name, points in got.items():
        assert name in declared, name
        for attrs, _ in points:
            assert set(attrs) <= declared[name], (name, attrs)


def test_span_marks_errors_by_type_and_never_records_the_message(otel: Collected) -> None:
    with pytest.raises(ValueError, match="outside the fixed set"):
        with telemetry.span("x", operation="x", **{"audit.principal": "dr.house"}):
            pass
    with pytest.raises(RuntimeError):
        with telemetry.span("insert audit_log", operation="insert"):
            raise RuntimeError("duplicate key (principal_id)=(dr.house)")
    (span,) = otel.spans()
    assert span.attributes["db.system.name"] == "postgresql" and span.attributes["db.operation.name"] == "insert"
    assert span.attributes["error.type"] == "RuntimeError" and span.status.status_code.name == "ERROR"
    assert not span.events  # no exception event: its message may quote a value
    assert not any("dr.house" in text for text in all_attribute_values(otel))


def test_no_sdk_means_no_op_instruments() -> None:
    telemetry.configure()  # the global provider, which no test sets: the API's proxies
    assert not telemetry.listening().metrics and not telemetry.listening().traces and not telemetry.observing()
    telemetry.record_query("cache-l2", "eventual", 0.0001)  # nothing to assert but that it is accepted
    with telemetry.span("noop audit_log", operation="noop") as span:
        assert not span.is_recording()


def test_listening_follows_the_configured_providers(otel: Collected) -> None:
    from opentelemetry.metrics import NoOpMeterProvider
    from opentelemetry.trace import NoOpTracerProvider

    assert telemetry.listening().metrics and telemetry.listening().traces
    telemetry.configure(meter_provider=NoOpMeterProvider(), tracer_provider=NoOpTracerProvider())
    assert not telemetry.observing()


# -- lifecycle, migrations, integrity ----------------------------------------------------------------------------------


def test_lifecycle_entry_points_make_spans_and_durations(otel: Collected, settings: AuditSettings,
                                                          tmp_path: Path) -> None:
    with AuditDatabase(settings.with_overrides(archive={"root_uri": str(tmp_path / "archive")})) as db:
        db.partitions.create_partition("2019-05")
        db.partitions.premake(1)
        report = db.partitions.purge(dry_run=True)
        with pytest.raises(AuditError) as failed_with:
            db.partitions.archive("1990-01")  # no such partition
    error_name = type(failed_with.value).__qualname__
    spans = {s.name: s for s in otel.spans()}
    assert {"create_partition audit_log", "premake audit_log", "purge audit_log", "archive audit_log"} <= set(spans)
    for span in spans.values():
        assert span.attributes["db.system.name"] == "postgresql"
        assert span.attributes["db.collection.name"] == "audit_log"
        assert span.kind.name == "CLIENT"
    assert spans["premake audit_log"].attributes["audit.count"] == 2
    assert spans["purge audit_log"].attributes["audit.dry_run"] is True and report.dry_run
    assert spans["archive audit_log"].attributes["error.type"] == error_name
    durations = otel.metrics()["audit.lifecycle.duration"]
    assert value(durations, **{"audit.lifecycle.operation": "create_partition", "audit.outcome": "ok"}).count == 1
    failed = value(durations, **{"audit.lifecycle.operation": "archive"})
    assert failed.count == 1
    assert value(durations, **{"audit.lifecycle.operation": "archive", "audit.outcome": "error",
                               "error.type": error_name}) is failed


def test_migrate_is_a_traced_lifecycle_step(otel: Collected, empty_database: str) -> None:
    with AuditDatabase(AuditSettings(database_url=empty_database)) as db:
        db.migrate()
    names = [s.name for s in otel.spans()]
    assert names.count("migrate audit_log") == 1 and "premake audit_log" in names
    operations = otel.metrics().get("db.client.operation.duration", [])
    assert "migrate" not in {a.get("db.operation.name") for a, _ in operations}  # a lifecycle step, timed as one
    assert value(otel.metrics()["audit.lifecycle.duration"], **{"audit.lifecycle.operation": "migrate"}).count == 1


def test_seal_and_verify_record_status_sealed_events_and_findings(otel: Collected, fresh_database: str,
                                                                   tmp_path: Path) -> None:
    from audit_db_core.integrity import generate_key_pair
    from tests.core.test_integrity import day, event, make_settings, seal, superuser

    private, _ = generate_key_pair()
    with AuditDatabase(make_settings(fresh_database, private, tmp_path)) as db:
        events = [event(day(2, h), i) for i, h in enumerate((1, 5, 9))]
        db.insert_many(events)
        sealed = seal(db)
        with superuser(fresh_database) as conn:  # a forger changes one sealed row
            conn.execute("UPDATE audit_log SET action = 'patient.record.delete' WHERE event_id = %s",
                         (events[1].event_id,))
        report = db.integrity.verify()
    assert sealed.status == "sealed" and report.status == "failed"
    got = otel.metrics()
    durations = got["audit.integrity.duration"]
    assert value(durations, **{"audit.integrity.operation": "seal", "audit.outcome": "sealed"}).count == 1
    assert value(durations, **{"audit.integrity.operation": "verify", "audit.outcome": "failed"}).count == 1
    assert value(got["audit.integrity.sealed"]) == sealed.events == 3
    kinds = {p.kind for p in report.problems}
    assert {a["audit.integrity.problem"] for a, _ in got["audit.integrity.findings"]} == kinds
    assert {"seal audit_log", "verify audit_log"} <= {s.name for s in otel.spans()}
    _no_identifiers(otel, events)


def _no_identifiers(otel: Collected, events: list[AuditEvent]) -> None:
    """No attribute value holds an event id, a principal, a target, an action or a detail of ``events``."""
    texts = all_attribute_values(otel)
    for ev in events:
        for secret in (str(ev.event_id), ev.principal_id, ev.target_resource_id, ev.action):
            if secret:
                assert not any(secret in t for t in texts), secret


# -- observed figures of a registered database -------------------------------------------------------------------------


def test_a_registered_database_is_observed_per_deployment(otel: Collected, settings: AuditSettings,
                                                         shared_database: str) -> None:
    marker = uuid.uuid4().hex[:8]
    since = dt.datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - dt.timedelta(hours=3)
    events = [AuditEvent(action="patient.record.read", status="success", principal_id=f"{marker}-dr",
                         target_resource_id=f"{marker}-p", event_time=since + dt.timedelta(hours=i))
              for i in range(3)]
    with AuditDatabase(settings) as db, AuditDatabase(AuditSettings(database_url=shared_database)) as other:
        db.insert_many(events)
        query = AuditQuery(principal_id=f"{marker}-dr", since=since, until=since + dt.timedelta(hours=3))
        assert db.query(query, consistency="eventual").extra["source"] in ("primary", "replica-0")  # a miss …
        assert db.query(query, consistency="eventual").extra["source"] == "cache-l1"  # … then an L1 hit
        telemetry.refresh(db)
        telemetry.refresh(other)
        mine, theirs = str(db.deployment_id), str(other.deployment_id)
        assert mine != theirs
        got = otel.metrics()
        dep = {"audit.deployment": mine}
        assert value(got["audit.cache.hits"], **dep, **{"audit.cache.tier": "l1"}) == 1
        assert value(got["audit.cache.misses"], **dep, **{"audit.cache.tier": "l1"}) == 1
        assert value(got["audit.cache.l1.entries"], **dep) == 1 and value(got["audit.cache.l1.size"], **dep) > 0
        assert value(got["audit.cache.invalidations"], **dep) >= 1  # the insert moved the generations
        pools = got["db.client.connection.count"]
        used = value(pools, **dep, **{"db.client.connection.pool.name": "primary", "db.client.connection.state": "used"})
        idle = value(pools, **dep, **{"db.client.connection.pool.name": "primary", "db.client.connection.state": "idle"})
        assert used == 0 and idle >= 1
        assert value(got["db.client.connection.max"], **dep, **{"db.client.connection.pool.name": "primary"}) \
            == settings.pool.max_size
        assert value(got["db.client.connection.pending_requests"], **dep) == 0
        assert value(got["audit.breaker.state"], **dep, **{"audit.component": "primary",
                                                           "audit.breaker.state": "closed"}) == 1
        assert value(got["audit.breaker.state"], **dep, **{"audit.component": "primary",
                                                           "audit.breaker.state": "open"}) == 0
        assert value(got["audit.health.status"], **dep, **{"audit.health.status": "healthy"}) == 1
        assert value(got["audit.health.component"], **dep, **{"audit.component": "primary"}) == 1
        assert value(got["audit.partitions"], **dep, **{"audit.partition.state": "active"}) >= 4
        assert value(got["audit.partition.default.rows"], **dep) == 0
        assert value(got["audit.partitions.missing"], **dep) == 0
        assert value(got["audit.health.status"], **{"audit.deployment": theirs,
                                                    "audit.health.status": "healthy"}) == 1
        _attributes_are_declared(got)
        _no_identifiers(otel, events)
        # a row lands in DEFAULT: the next refresh says so, and the health gauges name the component
        db.insert(AuditEvent(action="user.login", status="success", principal_id=f"{marker}-late",
                             event_time=dt.datetime(2001, 1, 1, tzinfo=UTC)))
        telemetry.refresh(db)
        got = otel.metrics()
        assert value(got["audit.partition.default.rows"], **dep) == 1
        assert value(got["audit.health.component"], **dep, **{"audit.component": "partitions"}) == 0
        assert value(got["audit.health.status"], **dep, **{"audit.health.status": "degraded"}) == 1
        # the primary's breaker opens: its state and the transition are observed
        breaker = db.breakers.get("primary")
        for _ in range(breaker.settings.failure_threshold):
            breaker.record_failure(ConnectionError("refused"))
        got = otel.metrics()
        assert value(got["audit.breaker.state"], **dep, **{"audit.component": "primary",
                                                           "audit.breaker.state": "open"}) == 1
        assert value(got["audit.breaker.transitions"], **dep, **{"audit.component": "primary",
                                                                 "audit.breaker.to": "open"}) == 1
        breaker.reset()
    after = otel.metrics()  # both closed: nothing of theirs is observed any more
    assert not any(attrs.get("audit.deployment") in (mine, theirs)
                   for name in ("audit.breaker.state", "db.client.connection.count", "audit.cache.hits")
                   for attrs, _ in after.get(name, []))


def test_a_provider_configured_again_keeps_observing(otel: Collected, settings: AuditSettings) -> None:
    with AuditDatabase(settings) as db:
        dep = {"audit.deployment": str(db.deployment_id)}
        closed = {**dep, "audit.component": "primary", "audit.breaker.state": "closed"}
        assert value(otel.metrics()["audit.breaker.state"], **closed) == 1
        telemetry.configure()  # away (an SDK's instruments are made once: the same provider keeps its callbacks) …
        telemetry.configure(meter_provider=otel.meter_provider, tracer_provider=otel.tracer_provider)  # … and back
        assert value(otel.metrics()["audit.breaker.state"], **closed) == 1


def test_collection_never_queries_more_than_once_per_interval(otel: Collected, settings: AuditSettings) -> None:
    with AuditDatabase(settings.with_overrides(telemetry={"inspect_interval_seconds": 3600})) as db:
        telemetry.refresh(db)  # the first figures
        db.insert(AuditEvent(action="user.login", status="success", principal_id="late",
                             event_time=dt.datetime(2001, 1, 1, tzinfo=UTC)))
        for _ in range(3):
            got = otel.metrics()  # each collection asks for a refresh: the interval has not passed
        assert value(got["audit.partition.default.rows"], **{"audit.deployment": str(db.deployment_id)}) == 0


# -- writes and reads, where they happen ------------------------------------------------------------------------------

DAY = dt.datetime(2026, 11, 10, tzinfo=UTC)


@pytest.fixture
def read_path_settings(fresh_database: str, servers: Servers) -> AuditSettings:
    """The test's database with the session's replica and Redis when it has them, batches of 2 events."""
    replicas = [with_dbname(u, dbname_of(fresh_database)) for u in servers.replica_urls[:1]]
    return AuditSettings(database_url=fresh_database, replica_urls=replicas, redis_url=servers.redis_url,
                         ingest={"batch_size": 2})


def _points(got: dict[str, list[tuple[dict[str, Any], Any]]], name: str, **attributes: Any) -> list[Any]:
    return [v for attrs, v in got.get(name, []) if all(attrs.get(k) == w for k, w in attributes.items())]


def _marked_events(n: int) -> tuple[str, list[AuditEvent]]:
    """A marker of this test and ``n`` events whose action, principal and targets hold it: no attribute may."""
    marker = uuid.uuid4().hex[:8]
    return marker, [AuditEvent(action=f"patient.record.read.{marker}", status="success", principal_id=f"{marker}-dr",
                               target_resource_id=f"{marker}-patient-{i}", event_time=DAY + dt.timedelta(hours=i))
                    for i in range(n)]


def _count(got: dict[str, list[tuple[dict[str, Any], Any]]], name: str, **attributes: Any) -> int:
    """Histogram points recorded under ``attributes`` (0 when none)."""
    return sum(p.count for p in _points(got, name, **attributes))


def test_writes_record_events_batches_operations_and_spans(otel: Collected,
                                                           read_path_settings: AuditSettings) -> None:
    from opentelemetry import trace

    marker, events = _marked_events(5)
    app = otel.tracer_provider.get_tracer("the-application")
    with AuditDatabase(read_path_settings) as db:
        with app.start_as_current_span("POST /records") as request:
            assert db.insert(events[0]) is True
        assert db.insert(events[0]) is False  # a retried insert: a duplicate
        assert db.insert_many(events[1:]) == 4  # batches of 2: two batches
        assert db.insert_many(events) == 0  # all duplicates: three batches
        with pytest.raises(AuditValidationError):
            db.insert_many([{"action": "patient.record.read", "principal_id": f"{marker}-bad"}])  # no status
        with db.transaction() as tx:
            tx.insert(AuditEvent(action="user.login", status="success", principal_id=f"{marker}-tx",
                                 event_time=DAY))
    got = otel.metrics()
    written = got["audit.events.written"]
    assert value(written, **{"db.operation.name": "insert", "audit.outcome": "written"}) == 1
    assert value(written, **{"db.operation.name": "insert", "audit.outcome": "duplicate"}) == 1
    assert value(written, **{"db.operation.name": "insert_many", "audit.outcome": "written"}) == 4
    assert value(written, **{"db.operation.name": "insert_many", "audit.outcome": "duplicate"}) == 5
    assert value(written, **{"db.operation.name": "insert_many", "audit.outcome": "failed"}) == 1
    assert value(written, **{"db.operation.name": "transaction", "audit.outcome": "written"}) == 1
    batches = got["audit.ingest.batch.duration"]
    assert value(batches, **{"audit.outcome": "ok"}).count == 5
    assert value(batches, **{"audit.outcome": "error"}).count == 1
    ops = "db.client.operation.duration"
    assert _count(got, ops, **{"db.operation.name": "insert", "db.system.name": "postgresql"}) == 2
    assert _count(got, ops, **{"db.operation.name": "insert_many"}) == 3
    assert value(got[ops], **{"db.operation.name": "insert_many", "error.type": "AuditValidationError"}).count == 1
    assert _count(got, ops, **{"db.operation.name": "transaction"}) == 1
    assert _count(got, "db.client.connection.wait_time", **{"db.client.connection.pool.name": "primary"}) >= 4
    spans = otel.spans()
    by_name: dict[str, list[Any]] = {}
    for span in spans:
        by_name.setdefault(span.name, []).append(span)
    assert len(by_name["insert audit_log"]) == 2 and len(by_name["insert_many audit_log"]) == 3
    assert len(by_name["transaction audit_log"]) == 1
    first = by_name["insert audit_log"][0]
    assert first.parent is not None and first.parent.span_id == request.get_span_context().span_id  # in the request
    assert first.context.trace_id == request.get_span_context().trace_id
    assert first.kind is trace.SpanKind.CLIENT
    for span in (*by_name["insert audit_log"], *by_name["insert_many audit_log"]):
        assert span.attributes["db.system.name"] == "postgresql"
        assert span.attributes["db.collection.name"] == "audit_log"
        assert span.attributes["db.operation.name"] == span.name.split()[0]
    failed = [s for s in by_name["insert_many audit_log"] if s.status.status_code.name == "ERROR"]
    assert len(failed) == 1 and failed[0].attributes["error.type"] == "AuditValidationError"
    _attributes_are_declared(got)
    _no_identifiers(otel, events)
    assert not any(marker in text for text in all_attribute_values(otel))


def test_reads_record_their_source_and_an_l1_hit_only_counts(otel: Collected,
                                                              read_path_settings: AuditSettings) -> None:
    marker, events = _marked_events(3)
    query = AuditQuery(principal_id=f"{marker}-dr", since=DAY, until=DAY + dt.timedelta(days=1))
    with AuditDatabase(read_path_settings) as db:
        if db.cache.redis_configured:
            assert db.cache.wait_synced()
        db.insert_many(events)
        otel.exporter.clear()
        strong = db.query(query)  # the primary, never the cache
        first = db.query(query, consistency="eventual", read_your_writes=True)  # a miss: a server answers
        served_first = first.extra["source"]
        before_hit = otel.metrics()
        spans_before_hit = len(otel.spans())
        assert db.query(query, consistency="eventual").extra["source"] == "cache-l1"
        after_hit = otel.metrics()
        assert len(otel.spans()) == spans_before_hit  # an L1 hit: no span …
        for name in ("audit.query.duration", "db.client.operation.duration"):  # … and no histogram point
            assert _count(after_hit, name) == _count(before_hit, name), name
        assert db.count(query, consistency="eventual", read_your_writes=True) == 3
        l2 = None
        if db.cache.redis_configured:
            db.cache.l1.clear()  # as another process would: its L1 is cold, L2 holds the page
            l2 = db.query(query, consistency="eventual")
        dep = {"audit.deployment": str(db.deployment_id)}
        got = otel.metrics()  # while the database is open: its cache's counts are observed
    assert len(strong) == len(first) == 3 and strong.extra["source"] == "primary"
    qd = "audit.query.duration"
    assert value(got[qd], **{"audit.query.source": "primary", "audit.consistency": "strong",
                             "audit.query.kind": "page"}).count == 1
    assert _count(got, qd, **{"audit.query.source": telemetry.query_source(served_first),
                              "audit.consistency": "eventual", "audit.query.kind": "page"}) >= 1
    assert _count(got, qd, **{"audit.consistency": "eventual", "audit.query.kind": "count"}) == 1
    assert _count(got, qd, **{"audit.query.source": "l1"}) == 0  # counted, not timed:
    assert value(got["audit.cache.hits"], **dep, **{"audit.cache.tier": "l1"}) == 1
    assert _count(got, "db.client.operation.duration", **{"db.operation.name": "count"}) == 1
    expected_query_points = 3 if l2 is not None else 2
    assert _count(got, "db.client.operation.duration", **{"db.operation.name": "query"}) == expected_query_points
    if l2 is not None:
        assert l2.extra["source"] == "cache-l2"
        assert value(got[qd], **{"audit.query.source": "l2", "audit.consistency": "eventual"}).count == 1
        assert value(got["audit.cache.hits"], **dep, **{"audit.cache.tier": "l2"}) == 1
    reads = [s for s in otel.spans() if s.name in ("query audit_log", "count audit_log")]
    assert len(reads) == expected_query_points + 1
    assert [s.attributes["audit.query.source"] for s in reads if s.name == "query audit_log"][:2] == \
        ["primary", telemetry.query_source(served_first)]
    for span in reads:
        assert span.attributes["db.system.name"] == "postgresql" and span.end_time >= span.start_time
        assert span.attributes["audit.consistency"] in ("strong", "eventual")
    _attributes_are_declared(got)
    _no_identifiers(otel, events)
    assert not any(marker in text for text in all_attribute_values(otel))


def test_a_database_with_telemetry_off_records_nothing(otel: Collected, settings: AuditSettings) -> None:
    with AuditDatabase(settings.with_overrides(telemetry={"enabled": False})) as db:
        db.insert(AuditEvent(action="user.login", status="success", principal_id="quiet", event_time=DAY))
        db.insert_many([AuditEvent(action="user.login", status="success", principal_id="quiet", event_time=DAY)])
        db.query(AuditQuery(principal_id="quiet"))
        db.count(AuditQuery(principal_id="quiet"), consistency="eventual")
        with db.transaction() as tx:
            tx.insert(AuditEvent(action="user.login", status="success", principal_id="quiet", event_time=DAY))
    got = otel.metrics()
    assert otel.spans() == []
    assert not any(got.get(i.name) for i in telemetry.INSTRUMENTS)  # not even the observed figures
