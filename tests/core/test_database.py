"""AuditDatabase against a real PostgreSQL: writes, reads, pagination, append-only, transactions, health."""

from __future__ import annotations

import datetime as dt
import random
import uuid
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audit_db_core import (
    AuditConnectionError,
    AuditDatabase,
    AuditEvent,
    AuditQuery,
    AuditSettings,
    AuditValidationError,
    ComplianceError,
)

from .test_events import details_strategy

UTC = dt.UTC
NOW = dt.datetime.now(UTC).replace(microsecond=0)


def ev(**kw: Any) -> AuditEvent:
    base: dict[str, Any] = {"action": "patient.record.read", "status": "success", "principal_id": "u1"}
    return AuditEvent(**{**base, **kw})


def full_event(**kw: Any) -> AuditEvent:
    return ev(
        organization_id="org-1",
        target_resource_type="Patient",
        target_resource_id="p-42",
        outcome_description="record shown — 3 fields",
        data_classification="PHI",
        retention_policy="hipaa-6y",
        correlation_id="corr-1",
        session_id="sess-1",
        source="ehr-api",
        event_version="2.1",
        processing_latency_ms=17,
        details={"fields": ["allergies", "meds"], "score": 0.1, "big": 1e300, "nested": {"ü": [None, True, -3]}},
        **kw,
    )


def test_round_trip_of_every_field(db: AuditDatabase) -> None:
    original = full_event(event_time=NOW - dt.timedelta(seconds=5, microseconds=123456))
    assert db.insert(original) is True
    page = db.query(AuditQuery(correlation_id="corr-1"))
    assert len(page) == 1
    back = page.events[0]
    assert back.canonical_bytes() == original.canonical_bytes()
    assert back.model_dump(exclude={"details", "ingested_at", "stored_content_hash"}) == original.model_dump(
        exclude={"details"}
    )
    # jsonb keeps numbers as numeric: 1e300 comes back spelled as an integer, equal in the canonical form.
    assert back.details["fields"] == ["allergies", "meds"] and back.details["nested"] == {"ü": [None, True, -3]}
    assert back.event_time == original.event_time  # microseconds survive
    assert back.stored_content_hash == original.content_hash  # stored hash = hash computed before writing
    assert back.hash_matches  # and = hash recomputed from what came back
    assert back.ingested_at is not None and back.ingested_at.tzinfo is not None
    as_json = back.model_dump(mode="json")  # JSON-ready, e.g. for an export: the stored hash as hex
    assert as_json["stored_content_hash"] == original.content_hash.hex()


def test_insert_is_idempotent(db: AuditDatabase) -> None:
    e = ev()
    assert db.insert(e) is True
    assert db.insert(e) is False
    assert db.count(AuditQuery()) == 1


def test_insert_many_is_idempotent_and_counts_new_rows(db: AuditDatabase) -> None:
    first = [ev(principal_id=f"u{i % 13}", details={"i": i}) for i in range(1200)]
    assert db.insert_many(first) == 1200
    more = [ev(principal_id="late", details={"i": i}) for i in range(300)]
    # A retried call that carries everything again plus new events: only the new ones are written.
    assert db.insert_many(first + more) == 300
    assert db.insert_many(first + more) == 0
    assert db.count(AuditQuery()) == 1500
    # The same event twice in one call is written once.
    dup = ev(principal_id="dup")
    assert db.insert_many([dup, dup, dup]) == 1
    assert db.count(AuditQuery(principal_id="dup")) == 1


def test_insert_many_small_batches_and_dicts(settings: AuditSettings) -> None:
    small = settings.with_overrides(ingest={"batch_size": 7})
    with AuditDatabase(small) as db:
        items: list[Any] = [ev(details={"i": i}) for i in range(30)]
        items += [{"action": "login", "status": "failure", "principal_id": f"d{i}"} for i in range(5)]
        assert db.insert_many(items) == 35
        assert db.insert_many(items[:20]) == 0
        assert db.count(AuditQuery(action="login", status="failure")) == 5


def test_bad_item_in_insert_many_names_its_index_and_stores_nothing_of_its_batch(db: AuditDatabase) -> None:
    items: list[Any] = [ev(details={"i": i}) for i in range(10)]
    items.insert(7, {"action": "bad action!", "status": "success", "principal_id": "x"})
    with pytest.raises(AuditValidationError) as info:
        db.insert_many(items)
    assert info.value.fields == ["events[7].action"]
    assert db.count(AuditQuery()) == 0
    with pytest.raises(AuditValidationError) as info:
        db.insert_many([ev(), "not an event"])  # type: ignore[list-item]
    assert info.value.fields == ["events[1]"]


def test_rows_outside_every_partition_land_in_default_and_are_queryable(db: AuditDatabase, fresh_database: str) -> None:
    old = ev(event_time=dt.datetime(2001, 9, 9, 1, 46, 40, tzinfo=UTC), principal_id="archivist")
    far = ev(event_time=dt.datetime(2150, 1, 1, tzinfo=UTC), principal_id="archivist")
    assert db.insert_many([old, far]) == 2
    with psycopg.connect(fresh_database) as conn:
        where = conn.execute(
            "SELECT tableoid::regclass::text FROM audit_log WHERE principal_id = 'archivist'"
        ).fetchall()
    assert {w[0] for w in where} == {"audit_log_default"}
    page = db.query(AuditQuery(principal_id="archivist"))
    assert [e.event_id for e in page] == [far.event_id, old.event_id]
    assert db.insert(old) is False  # idempotent in DEFAULT too


def test_current_rows_land_in_their_partition(db: AuditDatabase, fresh_database: str) -> None:
    e = ev()
    db.insert(e)
    expected = db.partitions.find_partition(e.event_time)
    assert expected is not None
    with psycopg.connect(fresh_database) as conn:
        (table,) = conn.execute("SELECT tableoid::regclass::text FROM audit_log").fetchone()  # type: ignore[misc]
    assert table == expected.name


def test_pagination_returns_every_row_exactly_once(db: AuditDatabase) -> None:
    rng = random.Random(7)
    # Many events share a timestamp: the cursor must break ties by event_id.
    stamps = [NOW - dt.timedelta(seconds=rng.randint(0, 40)) for _ in range(1037)]
    events = [ev(event_time=t, principal_id=rng.choice(["a", "b"])) for t in stamps]
    db.insert_many(events)
    for flt, expected in (({}, events), ({"principal_id": "a"}, [e for e in events if e.principal_id == "a"])):
        seen: list[uuid.UUID] = []
        times: list[dt.datetime] = []
        q = AuditQuery(limit=100, **flt)
        page = db.query(q)
        pages = 1
        while True:
            seen += [e.event_id for e in page]
            times += [e.event_time for e in page]
            if page.next_cursor is None:
                break
            page = db.query(q.model_copy(update={"cursor": page.next_cursor}))
            pages += 1
        assert len(seen) == len(set(seen)) == len(expected)
        assert set(seen) == {e.event_id for e in expected}
        assert times == sorted(times, reverse=True)
        assert pages == -(-len(expected) // 100)


def test_cursor_cannot_be_reused_with_other_filters(db: AuditDatabase) -> None:
    db.insert_many([ev(principal_id="a") for _ in range(3)])
    page = db.query(AuditQuery(principal_id="a", limit=1))
    assert page.next_cursor
    with pytest.raises(AuditValidationError) as info:
        db.query(AuditQuery(principal_id="b", limit=1, cursor=page.next_cursor))
    assert info.value.fields == ["cursor"]


def test_filters_match_what_a_user_expects(db: AuditDatabase) -> None:
    rng = random.Random(11)
    actions = ["patient.record.read", "patient.record.update", "patient.record.export", "user.login"]
    events = [
        ev(
            event_time=NOW - dt.timedelta(minutes=rng.randint(0, 600)),
            action=rng.choice(actions),
            status=rng.choice(["attempt", "success", "failure"]),
            principal_id=rng.choice(["alice", "bob", "carol"]),
            organization_id=rng.choice(["org-1", "org-2"]),
            target_resource_type="Patient",
            target_resource_id=rng.choice(["p1", "p2", "p3"]),
            data_classification=rng.choice(["PHI", "INTERNAL"]),
            correlation_id=rng.choice(["c1", "c2", None]),
            details={"ward": rng.choice(["icu", "er"]), "n": rng.randint(1, 3)},
        )
        for _ in range(400)
    ]
    db.insert_many(events)
    since = NOW - dt.timedelta(minutes=300)
    cases: list[tuple[dict[str, Any], Any]] = [
        ({"principal_id": "alice"}, lambda e: e.principal_id == "alice"),
        ({"organization_id": "org-2", "since": since}, lambda e: e.organization_id == "org-2" and e.event_time >= since),
        ({"until": since}, lambda e: e.event_time < since),
        ({"action": ["patient.record.export", "user.login"]}, lambda e: e.action in ("patient.record.export", "user.login")),
        ({"status": "failure", "data_classification": "PHI"}, lambda e: e.status.value == "failure" and e.data_classification.value == "PHI"),
        ({"target_resource_type": "Patient", "target_resource_id": "p2"}, lambda e: e.target_resource_id == "p2"),
        ({"correlation_id": "c1"}, lambda e: e.correlation_id == "c1"),
        ({"details_contains": {"ward": "icu"}}, lambda e: e.details["ward"] == "icu"),
        ({"details_contains": {"ward": "er", "n": 2}, "principal_id": "bob"}, lambda e: e.details == {"ward": "er", "n": 2} and e.principal_id == "bob"),
    ]
    for flt, pred in cases:
        expected = {e.event_id for e in events if pred(e)}
        assert expected, flt  # the data set exercises every filter
        assert db.count(AuditQuery(**flt)) == len(expected), flt
        got = db.query(AuditQuery(limit=1000, **flt))
        assert {e.event_id for e in got} == expected, flt


def test_page_size_cap(db: AuditDatabase) -> None:
    with pytest.raises(AuditValidationError) as info:
        db.query(AuditQuery(limit=db.settings.query.max_page_size + 1))
    assert info.value.fields == ["limit"]
    with pytest.raises(AuditValidationError) as info:
        db.query(AuditQuery(), consistency="whenever")  # type: ignore[arg-type]
    assert info.value.fields == ["consistency"]


@pytest.mark.parametrize("table", ["audit_log", "audit_log_default", "partition"])
def test_update_delete_truncate_are_rejected(db: AuditDatabase, fresh_database: str, table: str) -> None:
    e = ev() if table != "audit_log_default" else ev(event_time=dt.datetime(1999, 1, 1, tzinfo=UTC))
    db.insert(e)
    if table == "partition":
        info = db.partitions.find_partition(e.event_time)
        assert info is not None
        table = info.name
    statements = [
        psycopg.sql.SQL("UPDATE {} SET principal_id = 'mallory'").format(psycopg.sql.Identifier(table)),
        psycopg.sql.SQL("DELETE FROM {}").format(psycopg.sql.Identifier(table)),
        psycopg.sql.SQL("TRUNCATE {}").format(psycopg.sql.Identifier(table)),
    ]
    with psycopg.connect(fresh_database, autocommit=True) as conn:  # a superuser, even
        for stmt in statements:
            with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
                conn.execute(stmt)
    back = db.query(AuditQuery()).events
    assert [x.event_id for x in back] == [e.event_id] and back[0].principal_id == "u1"


def test_ledger_is_append_only(db: AuditDatabase, fresh_database: str) -> None:
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        (n,) = conn.execute("SELECT count(*) FROM audit_lifecycle_ledger").fetchone()  # type: ignore[misc]
        assert n > 0  # partition creation was recorded
        with pytest.raises(psycopg.errors.RaiseException):
            conn.execute("DELETE FROM audit_lifecycle_ledger")
        with pytest.raises(psycopg.errors.RaiseException):
            conn.execute("UPDATE audit_lifecycle_ledger SET actor = 'x'")


def test_update_through_the_library_error_is_classified(db: AuditDatabase) -> None:
    db.insert(ev())
    with pytest.raises(ComplianceError, match="append-only"):
        with db.connections.connection(operation="tamper") as conn:
            conn.execute("DELETE FROM audit_log")


def test_transaction_commits_all_or_nothing(db: AuditDatabase) -> None:
    with pytest.raises(RuntimeError):
        with db.transaction() as tx:
            tx.insert(ev(principal_id="t"))
            tx.insert_many([ev(principal_id="t") for _ in range(10)])
            assert tx.count(AuditQuery(principal_id="t")) == 11  # visible inside
            raise RuntimeError("caller failed")
    assert db.count(AuditQuery(principal_id="t")) == 0
    with db.transaction() as tx:
        tx.insert(ev(principal_id="t"))
        tx.insert_many([ev(principal_id="t") for _ in range(10)])
    assert db.count(AuditQuery(principal_id="t")) == 11
    assert len(db.query(AuditQuery(principal_id="t", limit=5))) == 5


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(details=details_strategy, offset=st.integers(-10**6, 10**6))
def test_content_hash_is_stable_through_the_database(shared_database: str, details: dict[str, Any], offset: int) -> None:
    e = ev(details=details, event_time=NOW + dt.timedelta(microseconds=offset), principal_id="hash-prop")
    with AuditDatabase(AuditSettings(database_url=shared_database, pool={"min_size": 0, "max_size": 2})) as db:
        db.insert(e)
        back = [x for x in db.query(AuditQuery(principal_id="hash-prop", since=e.event_time, limit=1000)) if x.event_id == e.event_id]
    assert len(back) == 1
    assert back[0].content_hash == e.content_hash == back[0].stored_content_hash


def test_health_reports_primary_and_pools(db: AuditDatabase) -> None:
    db.insert(ev())
    report = db.health()
    assert report.healthy and report.status == "healthy"
    primary = report.components["primary"]
    assert primary.details["reachable"] is True and primary.details["server_version"]
    stats = report.pools["primary"]
    assert stats["requests"] >= 1 and stats["size"] >= 1 and stats["max_size"] == db.settings.pool.max_size
    assert stats["acquisitions"] >= 2 and stats["acquisitions_failed"] == 0  # the insert and the health check
    assert 0 <= stats["avg_acquire_ms"] <= stats["max_acquire_ms"]
    assert report.to_dict()["components"]["primary"]["healthy"] is True


def test_health_reports_breakers_cache_and_partitions(db: AuditDatabase) -> None:
    import datetime as dt

    db.insert(ev())
    db.query(AuditQuery(), consistency="eventual")
    report = db.health().to_dict()
    assert report["status"] == "healthy"
    assert report["breakers"]["primary"]["state"] == "closed" and report["breakers"]["primary"]["successes"] >= 2
    assert report["components"]["breakers"]["healthy"] is True
    assert report["cache"]["l1_misses"] == 1 and report["cache"]["sets"] == 1
    assert report["partitions"] == {"missing": [], "premake": db.settings.partitions.premake, "default_rows": 0}
    assert report["routing"]["reads"]["primary"] >= 1
    # an event with no partition: degraded (it sits in DEFAULT), and the report says how many
    db.insert(ev(event_time=dt.datetime(2001, 1, 1, tzinfo=dt.UTC)))
    degraded = db.health()
    assert degraded.status == "degraded" and degraded.partitions["default_rows"] == 1
    assert "1 row(s) in the DEFAULT partition" in (degraded.components["partitions"].error or "")
    # the primary's breaker open: unhealthy (writes fail fast), and named
    primary = db.breakers.get("primary")
    for _ in range(primary.settings.failure_threshold):
        primary.record_failure(ConnectionError("refused"))
    bad = db.health()
    assert bad.status == "unhealthy" and "primary (open)" in (bad.components["breakers"].error or "")


def test_unreachable_database_fails_fast_with_a_clear_redacted_error() -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    s_ = AuditSettings(
        database_url=f"postgresql://app:TopSecretPw@127.0.0.1:{port}/audit",
        pool={"timeout_seconds": 1.0, "connect_timeout_seconds": 1},
    )
    with pytest.raises(AuditConnectionError) as info:
        AuditDatabase(s_).open()
    assert "TopSecretPw" not in str(info.value) and "primary" in str(info.value)
    assert info.value.retryable


def test_health_flags_a_database_behind_the_package(empty_database: str) -> None:
    with AuditDatabase(AuditSettings(database_url=empty_database)) as db:
        before = db.health()
        assert not before.healthy and "run migrate" in (before.components["schema"].error or "")
        db.migrate()
        after = db.health()
    assert after.healthy and after.schema_version == after.package_schema_version


def test_model_copy_with_update_gets_a_fresh_hash(db: AuditDatabase) -> None:
    original = ev(details={"a": 1})
    _ = original.content_hash  # computed and cached
    changed = original.model_copy(update={"details": {"a": 2}})
    assert changed.content_hash != original.content_hash
    db.insert(changed)
    (back,) = db.query(AuditQuery()).events
    assert back.details == {"a": 2} and back.hash_matches and back.stored_content_hash == changed.content_hash
    with pytest.raises(AuditValidationError):
        original.model_copy(update={"status": "nope"})


def test_default_page_size_comes_from_settings(settings: AuditSettings) -> None:
    with AuditDatabase(settings.with_overrides(query={"default_page_size": 7})) as db:
        assert db.settings.query.max_page_size == 1000  # the section merged, not replaced
        db.insert_many([ev() for _ in range(10)])
        page = db.query(AuditQuery())
    assert len(page) == 7 and page.limit == 7 and page.next_cursor


def test_validation_error_in_a_later_batch_says_what_was_stored(settings: AuditSettings) -> None:
    with AuditDatabase(settings.with_overrides(ingest={"batch_size": 5})) as db:
        items: list[Any] = [ev() for _ in range(12)]
        items[11] = {"action": "x"}
        with pytest.raises(AuditValidationError) as info:
            db.insert_many(items)
        assert "10 events before this batch are stored" in str(info.value)
        assert db.count(AuditQuery()) == 10
        with pytest.raises(AuditValidationError) as info:
            db.insert("not an event")  # type: ignore[arg-type]
        assert info.value.fields == ["event"]


def test_synchronous_commit_setting_is_the_sessions_own(fresh_database: str) -> None:
    """AUDIT_INGEST__SYNCHRONOUS_COMMIT reaches the server as the sessions' synchronous_commit (unset: the server's)."""
    with psycopg.connect(fresh_database) as plain:
        server_value = plain.execute("SHOW synchronous_commit").fetchone()
    with AuditDatabase(AuditSettings(database_url=fresh_database)) as db, db.connections.connection() as conn:
        assert conn.execute("SHOW synchronous_commit").fetchone() == server_value
    settings = AuditSettings(database_url=fresh_database, ingest={"synchronous_commit": "remote_apply"})
    with AuditDatabase(settings) as db:
        with db.connections.connection() as conn:
            assert conn.execute("SHOW synchronous_commit").fetchone() == ("remote_apply",)
        # The suite's server names no synchronous standby: remote_apply then waits for none, and writes go on.
        assert db.insert(AuditEvent(action="user.login", status="success", principal_id="sync"))
