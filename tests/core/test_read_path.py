"""The uncached read path: one round trip per query, pooled connections that come back as they were lent, a
connection the server closed replaced unseen, events that read back in UTC with their hash, and the pieces that
make it cheap (SQL text per query shape, filters, JSON decoding) giving exactly what they replace.

Round trips are counted on the wire by ``benchmarks.roundtrips.RoundTripProxy`` (a relay that reads the protocol)."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from audit_db_core import AuditDatabase, AuditEvent, AuditQuery, AuditSettings
from audit_db_core.connections import load_json
from audit_db_core.events import format_time, stored_event_row
from audit_db_core.query import count_query, count_statement, page_query, select_statement
from benchmarks.roundtrips import RoundTripProxy
from tests.conftest import TestServers as Servers
from tests.conftest import dbname_of, with_dbname

UTC = dt.UTC
WARM = 6  # psycopg prepares a statement on its 5th execution on a connection (one extra round trip, once)


def events(n: int, principal: str, start: dt.datetime) -> list[AuditEvent]:
    return [AuditEvent(action="patient.record.read", status="success", principal_id=principal,
                       event_time=start + dt.timedelta(minutes=i), details={"n": i, "note": "é €"})
            for i in range(n)]


@pytest.fixture
def proxy(fresh_database: str) -> Iterator[RoundTripProxy]:
    with RoundTripProxy(fresh_database) as relay:
        yield relay


def trips(proxies: list[RoundTripProxy], run: Any, n: int) -> float:
    before = sum(p.round_trips for p in proxies)
    for i in range(n):
        run(i)
    return (sum(p.round_trips for p in proxies) - before) / n


def test_an_uncached_query_and_a_count_take_one_round_trip_each(proxy: RoundTripProxy) -> None:
    start = dt.datetime.now(UTC).replace(microsecond=0) - dt.timedelta(hours=3)
    settings = AuditSettings(database_url=proxy.url, cache={"enabled": False})
    with AuditDatabase(settings) as db:
        db.insert_many(events(150, "dr.one", start))
        q = AuditQuery(principal_id="dr.one", limit=100)
        for _ in range(WARM):
            db.query(q)
            db.count(q)
        assert trips([proxy], lambda _: db.query(q), 5) == 1
        assert trips([proxy], lambda _: db.count(q), 5) == 1
        page = db.query(q)
        assert len(page) == 100 and page.next_cursor and page.extra["source"] == "primary"
        following = db.query(q.model_copy(update={"cursor": page.next_cursor}))
        assert len(following) == 50 and following.next_cursor is None


def test_a_cache_miss_reads_its_wal_position_in_the_same_round_trip(proxy: RoundTripProxy) -> None:
    start = dt.datetime.now(UTC).replace(microsecond=0) - dt.timedelta(hours=3)
    settings = AuditSettings(database_url=proxy.url, redis_url=None, cache={"enabled": True})
    with AuditDatabase(settings) as db:
        db.insert_many(events(3, "dr.two", start))
        misses = [AuditQuery(principal_id="dr.two", since=start - dt.timedelta(minutes=k + 1)) for k in range(WARM + 5)]
        for q in misses[:WARM]:
            assert db.query(q, consistency="eventual").extra["source"] == "primary"
        assert trips([proxy], lambda i: db.query(misses[WARM + i], consistency="eventual"), 5) == 1
        assert trips([proxy], lambda i: db.query(misses[WARM + i], consistency="eventual"), 5) == 0  # now cached
        assert db.cache.stats()["l1_hits"] == 5


def test_replica_reads_take_one_round_trip_with_or_without_a_position(servers: Servers,
                                                                       fresh_database: str) -> None:
    if not servers.replica_urls:
        pytest.skip("no replica given for this server (AUDIT_TEST_REPLICA_URLS)")
    replica = with_dbname(servers.replica_urls[0], dbname_of(fresh_database))
    start = dt.datetime.now(UTC).replace(microsecond=0) - dt.timedelta(hours=3)
    with RoundTripProxy(fresh_database) as primary, RoundTripProxy(replica) as standby:
        settings = AuditSettings(database_url=primary.url, replica_urls=[standby.url], cache={"enabled": False},
                                 replicas={"monitor_interval_seconds": 300})  # measured once, at the start
        with AuditDatabase(settings) as db:
            db.insert_many(events(3, "dr.three", start))
            position = db.last_write_lsn
            deadline = time.monotonic() + 20
            while db.router.measure()[0].replay_lsn is None or db.count(
                    AuditQuery(principal_id="dr.three"), consistency="eventual", after_lsn=position) != 3:
                assert time.monotonic() < deadline, "the replica did not replay the write"
            q = AuditQuery(principal_id="dr.three")
            for _ in range(WARM):
                db.query(q, consistency="eventual")
                db.query(q, consistency="eventual", after_lsn=position)
            reads = db.router.snapshot()["reads"]
            assert trips([primary, standby], lambda _: db.query(q, consistency="eventual"), 5) == 1
            assert trips([primary, standby],
                         lambda _: db.query(q, consistency="eventual", after_lsn=position), 5) == 1
            after = db.router.snapshot()["reads"]
            assert after["replica-0"] - reads["replica-0"] == 10 and after["primary"] == reads["primary"]


def test_a_read_gives_the_connection_back_as_it_was_lent(fresh_database: str) -> None:
    settings = AuditSettings(database_url=fresh_database, pool={"min_size": 1, "max_size": 1},
                             cache={"enabled": False})
    start = dt.datetime.now(UTC).replace(microsecond=0) - dt.timedelta(hours=1)
    with AuditDatabase(settings) as db:
        db.query(AuditQuery(principal_id="nobody"))
        db.count(AuditQuery(principal_id="nobody"))
        with db.connections.connection() as conn:  # the pool's only connection, the one the reads used
            assert conn.autocommit is False
        with pytest.raises(RuntimeError), db.transaction() as tx:  # still one transaction for a unit of work
            tx.insert_many(events(2, "dr.four", start))
            raise RuntimeError("abandon the unit of work")
        assert db.count(AuditQuery(principal_id="dr.four")) == 0


def test_a_connection_the_server_closed_is_replaced_without_an_error(fresh_database: str) -> None:
    settings = AuditSettings(database_url=fresh_database, pool={"min_size": 1, "max_size": 1},
                             cache={"enabled": False})
    with AuditDatabase(settings) as db, psycopg.connect(fresh_database, autocommit=True) as admin:
        q = AuditQuery(principal_id="nobody")
        db.query(q)
        with db.connections.connection() as conn:
            pid = conn.info.backend_pid
        assert admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)
        deadline = time.monotonic() + 10
        while admin.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone() != (0,):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        made = db.connections.pool_stats()["primary"]["connections_made"]
        assert len(db.query(q)) == 0  # no error: the pool's check saw the closed connection and replaced it
        assert db.connections.pool_stats()["primary"]["connections_made"] == made + 1
        assert db.breakers.get("primary").stats()["failures"] == 0


def test_events_read_back_in_utc_with_their_hash_whatever_the_session_time_zone(db: AuditDatabase,
                                                                                 fresh_database: str) -> None:
    start = dt.datetime(2026, 11, 3, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=-5)))
    written = events(3, "dr.five", start)
    db.insert_many(written)
    q = AuditQuery(principal_id="dr.five")
    stmt, params = select_statement(q, 10)
    with psycopg.connect(fresh_database, options="-c TimeZone=America/New_York") as conn:
        read = conn.cursor(row_factory=stored_event_row).execute(stmt, params).fetchall()
    assert [e.event_id for e in read] == [e.event_id for e in reversed(written)]
    for e in read + db.query(q).events:
        assert e.event_time.tzinfo is UTC and e.ingested_at is not None and e.ingested_at.tzinfo is UTC
        assert e.hash_matches and e.details["note"] == "é €"
    assert [e.event_time for e in read] == [e.event_time for e in db.query(q).events]


QUERIES = [
    AuditQuery(),
    AuditQuery(principal_id="u1", limit=5),
    AuditQuery(principal_id="u1", action=["a.b", "a.c"], status="failure", data_classification=["PHI", "PUBLIC"],
               since=dt.datetime(2026, 1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=2))),
               until=dt.datetime(2026, 2, 1, tzinfo=UTC), target_resource_type="Patient", target_resource_id="p",
               correlation_id="c", session_id="s", organization_id="o", include_restored=True),
    AuditQuery(details_contains={"a": 1, "b": [1.5, "x", None, True], "c": {"d": 1e-7, "e": 2.0}}),
]


@pytest.mark.parametrize("query", QUERIES, ids=range(len(QUERIES)))
def test_sql_text_composed_once_per_shape_is_the_statement(query: AuditQuery) -> None:
    stmt, params = select_statement(query, 10)
    text, same = page_query(query, 10)
    assert text == stmt.as_bytes(None) and len(same) == len(params)
    assert page_query(query, 10)[0] is text  # the same bytes object: taken from the cache
    count, count_params = count_statement(query)
    assert count_query(query)[0] == count.as_bytes(None) and len(count_query(query)[1]) == len(count_params)


@pytest.mark.parametrize("query", QUERIES, ids=range(len(QUERIES)))
def test_filters_are_what_pydantic_would_dump(query: AuditQuery) -> None:
    exclude = {"limit", "cursor"} if query.include_restored else {"limit", "cursor", "include_restored"}
    expected = query.model_dump(mode="json", exclude=exclude, exclude_none=True)
    for name in ("since", "until"):
        if getattr(query, name) is not None:
            expected[name] = format_time(getattr(query, name))
    assert query.filters() == expected and list(query.filters()) == list(expected)


@pytest.mark.parametrize("data", [b'{"a":1}', b' {"a": [1, 2.5e-3, null]} ', b'{"\xc3\xa9":"\xe2\x82\xac"}',
                                  b'"x"', b"123456789012345678901234567890", b"1e400", b"[1,2", b"", b"{} x",
                                  b'\xef\xbb\xbf{"a":1}'])
def test_load_json_is_json_loads(data: bytes) -> None:
    try:
        expected: Any = json.loads(data)
    except ValueError as exc:
        with pytest.raises(type(exc)) as caught:
            load_json(data)
        assert str(caught.value) == str(exc)
    else:
        assert load_json(data) == expected


def test_a_query_keeps_its_fingerprint_only_while_its_filters_stay() -> None:
    first = AuditQuery(principal_id="u1", action=["a.b", "a.c"], since=dt.datetime(2026, 1, 1, tzinfo=UTC))
    fingerprint = first.fingerprint()
    same = AuditQuery(principal_id="u1", action=["a.c", "a.b"], since=dt.datetime(2026, 1, 1, tzinfo=UTC))
    assert same == first and hash(same) == hash(first) and repr(same) == repr(first)  # one computed it, one not
    assert same.model_dump() == first.model_dump() and same.fingerprint() == fingerprint
    page_two = first.model_copy(update={"cursor": "abc", "limit": 5})
    assert page_two.fingerprint() == fingerprint and page_two.cursor == "abc"
    other = first.model_copy(update={"principal_id": "u2"})
    assert other.fingerprint() != fingerprint
    assert other.fingerprint() == AuditQuery(principal_id="u2", action=["a.b", "a.c"],
                                             since=dt.datetime(2026, 1, 1, tzinfo=UTC)).fingerprint()
