"""Restored months are queryable: ``AuditQuery(..., include_restored=True)`` reads the tables that
``PartitionManager.restore`` loads for periods that left the log (purged, or detached after archival), with the same
filters, order and keyset paging as the log; the default query reads ``audit_log`` alone, as before."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from audit_db_core import AuditDatabase, AuditQuery, AuditSettings, ComplianceError
from audit_db_core.query import count_statement, restored_tables, select_statement
from audit_local.demo import demo_events
from tests.conftest import TestServers as Servers
from tests.core.test_roles import LoginRoles

UTC = dt.UTC
JAN, FEB, MAR, APR = (dt.datetime(2020, m, 1, tzinfo=UTC) for m in (1, 2, 3, 4))


@pytest.fixture
def rdb(settings: AuditSettings, tmp_path: Path) -> Iterator[AuditDatabase]:
    """Jan–Mar 2020 (long past) with events; January archived and purged, February archived and detached,
    March archived and still attached (read-only)."""
    tuned = settings.with_overrides(archive={"root_uri": (tmp_path / "archive").as_uri()},
                                    retention={"default": "1 year"})
    with AuditDatabase(tuned) as db:
        for month in ("2020-01", "2020-02", "2020-03"):
            db.partitions.create_partition(month)
        db.insert_many(demo_events(900, now=APR, span=dt.timedelta(days=91)))
        for month in ("2020-01", "2020-02", "2020-03"):
            db.partitions.archive(month)
        db.partitions.detach_partition("2020-02")
        db.partitions.hold("2020-02", "keep detached")  # the purge below takes January only
        db.partitions.hold("2020-03", "keep attached")
        assert db.partitions.purge(dry_run=False).purged == ["audit_log_p2020_01"]
        yield db


def _rows(url: str, table: str, since: dt.datetime | None = None, until: dt.datetime | None = None) -> int:
    """Rows of ``table`` in [since, until), straight from the database."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            sql.SQL("SELECT count(*) FROM {} WHERE (%(s)s::timestamptz IS NULL OR event_time >= %(s)s)"
                    " AND (%(u)s::timestamptz IS NULL OR event_time < %(u)s)").format(sql.Identifier(table)),
            {"s": since, "u": until},
        ).fetchone()
    assert row is not None
    return int(row[0])


def _all_pages(db: AuditDatabase, query: AuditQuery) -> list[tuple[dt.datetime, str]]:
    keys: list[tuple[dt.datetime, str]] = []
    page = db.query(query)
    keys += [(e.event_time, str(e.event_id)) for e in page]
    while page.next_cursor:
        page = db.query(query.model_copy(update={"cursor": page.next_cursor}))
        keys += [(e.event_time, str(e.event_id)) for e in page]
    return keys


def test_a_restored_purged_month_is_read_with_the_log(rdb: AuditDatabase, fresh_database: str) -> None:
    assert _rows(fresh_database, "audit_log", JAN, FEB) == 0, "January left the log with the purge"
    restored = rdb.partitions.restore("2020-01")
    jan_rows = restored.rows
    assert jan_rows > 0
    window = AuditQuery(since=JAN, until=FEB)
    assert rdb.count(window) == 0  # the default query reads the log alone
    assert rdb.count(window.model_copy(update={"include_restored": True})) == jan_rows
    # The same filters apply to restored rows as to the log's.
    reads = AuditQuery(since=JAN, until=FEB, action="patient.record.read", include_restored=True)
    with psycopg.connect(fresh_database) as conn:
        (expected,) = conn.execute(
            sql.SQL("SELECT count(*) FROM {} WHERE action = 'patient.record.read'").format(
                sql.Identifier(restored.table))).fetchone()  # type: ignore[misc]
    assert 0 < expected < jan_rows and rdb.count(reads) == expected
    assert {e.action for e in rdb.query(reads.model_copy(update={"limit": 50}))} == {"patient.record.read"}


def test_pages_run_across_the_restored_table_and_the_log(rdb: AuditDatabase, fresh_database: str) -> None:
    """Keyset paging over log + restored rows: newest first, nothing skipped, nothing repeated; the attached
    March (archived, read-only) counts once although a copy of it is restored too."""
    rdb.partitions.restore("2020-01")
    rdb.partitions.restore("2020-03")  # still attached: its copy must not double its rows
    expected = _rows(fresh_database, "audit_restore_audit_log_p2020_01") + _rows(fresh_database, "audit_log", JAN, APR)
    query = AuditQuery(since=JAN, until=APR, include_restored=True, limit=97)
    keys = _all_pages(rdb, query)
    assert len(keys) == len(set(keys)) == expected == rdb.count(query)
    assert keys == sorted(keys, reverse=True)
    assert keys[-1][0] < FEB <= keys[0][0]  # both sources on the pages: January restored, March from the log


def test_a_restored_detached_month_and_a_table_of_its_own_name(rdb: AuditDatabase, fresh_database: str) -> None:
    feb = AuditQuery(since=FEB, until=MAR, include_restored=True)
    assert rdb.count(feb) == 0  # detached and not restored: not in the log, no restored table
    result = rdb.partitions.restore("2020-02", table="case_4711_february")
    assert result.table == "case_4711_february"
    assert rdb.count(feb) == result.rows == _rows(fresh_database, "audit_log_p2020_02")


def test_only_restored_tables_overlapping_the_window_are_read(rdb: AuditDatabase) -> None:
    rdb.partitions.restore("2020-01")
    rdb.partitions.restore("2020-02")
    rdb.partitions.restore("2020-03")  # attached: never read as a restored table
    with rdb.connections.connection() as conn:
        def tables(**window: dt.datetime) -> list[str]:
            return restored_tables(conn, AuditQuery(include_restored=True, **window))

        assert tables() == ["audit_restore_audit_log_p2020_01", "audit_restore_audit_log_p2020_02"]
        assert tables(since=FEB) == ["audit_restore_audit_log_p2020_02"]
        assert tables(until=FEB) == ["audit_restore_audit_log_p2020_01"]
        assert tables(since=MAR, until=APR) == []
        assert restored_tables(conn, AuditQuery()) == []


def test_a_dropped_restored_table_ends_the_investigation(rdb: AuditDatabase, fresh_database: str) -> None:
    table = rdb.partitions.restore("2020-01").table
    jan = AuditQuery(since=JAN, until=FEB, include_restored=True)
    assert rdb.count(jan) > 0
    with psycopg.connect(fresh_database) as conn:
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(table)))
    assert rdb.count(jan) == 0 and len(rdb.query(jan)) == 0


def test_restored_rows_are_as_immutable_as_the_log(rdb: AuditDatabase, fresh_database: str) -> None:
    table = sql.Identifier(rdb.partitions.restore("2020-01").table)
    with psycopg.connect(fresh_database) as conn:
        for stmt in ("UPDATE {} SET action = 'forged'", "DELETE FROM {}", "TRUNCATE {}"):
            with pytest.raises(psycopg.errors.RaiseException, match="append-only"), conn.transaction():
                conn.execute(sql.SQL(stmt).format(table))


def test_include_restored_reads_never_come_from_the_cache(
    rdb: AuditDatabase, fresh_database: str, servers: Servers
) -> None:
    """A restored table may be dropped at any time, outside the writes the cache follows: such reads always go to a
    server, while the same query without include_restored is cached as before."""
    rdb.partitions.restore("2020-01")
    cached = rdb.settings.with_overrides(redis_url=servers.redis_url) if servers.redis_url else rdb.settings
    with AuditDatabase(cached) as db:
        assert db.cache.enabled
        query = AuditQuery(since=JAN, until=FEB, include_restored=True, limit=10)
        sources = [db.query(query, consistency="eventual").extra["source"] for _ in range(2)]
        assert not any(s.startswith("cache") for s in sources)
        plain = query.model_copy(update={"include_restored": False})
        sources = [db.query(plain, consistency="eventual").extra["source"] for _ in range(2)]
        assert sources[1].startswith("cache")


def test_the_default_query_is_unchanged() -> None:
    """Without include_restored: no lookup (the connection is never touched), the SQL reads audit_log alone, and
    the filters — what cursors and cache keys are bound to — are the ones of before."""
    plain = AuditQuery(principal_id="u1", since=JAN)
    assert restored_tables(None, plain) == []  # type: ignore[arg-type]
    assert "include_restored" not in plain.filters()
    assert AuditQuery(principal_id="u1", since=JAN, include_restored=True).fingerprint() != plain.fingerprint()
    for stmt, _ in (select_statement(plain, 10), count_statement(plain)):
        text = stmt.as_string(None)
        assert "UNION" not in text and ' FROM "audit_log" WHERE ' in text


def test_the_restored_tables_are_named_as_identifiers() -> None:
    stmt, params = select_statement(AuditQuery(include_restored=True), 5, ['odd"name; DROP TABLE audit_log'])
    text = stmt.as_string(None)
    assert '"odd""name; DROP TABLE audit_log"' in text and "UNION ALL" in text and params == [6]


def test_a_reader_may_query_restored_rows_a_writer_may_not(
    rdb: AuditDatabase, fresh_database: str, servers: Servers, template_db: str
) -> None:
    rows = rdb.partitions.restore("2020-01").rows
    logins = LoginRoles(servers.database_url)
    try:
        reader = logins.url(logins.make("reader", "audit_reader"), fresh_database)
        writer = logins.url(logins.make("writer", "audit_writer"), fresh_database)
        jan = AuditQuery(since=JAN, until=FEB, include_restored=True)
        with AuditDatabase(AuditSettings(database_url=reader)) as db:
            assert db.count(jan) == rows
        with AuditDatabase(AuditSettings(database_url=writer)) as db:
            assert db.count(jan.model_copy(update={"include_restored": False})) == 0
            with pytest.raises(ComplianceError, match="not permitted"):
                db.count(jan)
    finally:
        logins.drop_all()
