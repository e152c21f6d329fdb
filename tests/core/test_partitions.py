"""Partition lifecycle against real PostgreSQL: bounds, creation with rescue, concurrency, plan, holds, optimize."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import psycopg
import pytest

from audit_db_core import AuditDatabase, AuditEvent, AuditQuery, AuditSettings, ComplianceError, PartitionError, Period
from audit_local.demo import demo_events
from audit_db_core.ledger import entries
from audit_db_core.migrate import LOCK_CLASS, LOCK_PARTITIONS
from audit_db_core.partitions import bounds_for, following, resolve_period

UTC = dt.UTC
MONTH = Period(months=1)
T = TypeVar("T")


@pytest.mark.parametrize(
    "interval,ts,name,start,end",
    [
        (Period(months=1), dt.datetime(2026, 11, 29, 12, tzinfo=UTC), "audit_log_p2026_11", (2026, 11, 1), (2026, 12, 1)),
        (Period(months=1), dt.datetime(2026, 12, 31, 23, 59, tzinfo=UTC), "audit_log_p2026_12", (2026, 12, 1), (2027, 1, 1)),
        (Period(months=3), dt.datetime(2026, 11, 29, tzinfo=UTC), "audit_log_p2026_q4", (2026, 10, 1), (2027, 1, 1)),
        (Period(months=12), dt.datetime(2026, 2, 1, tzinfo=UTC), "audit_log_p2026", (2026, 1, 1), (2027, 1, 1)),
        (Period(months=6), dt.datetime(2026, 8, 1, tzinfo=UTC), "audit_log_p2026_07", (2026, 7, 1), (2027, 1, 1)),
        (Period(days=7), dt.datetime(2026, 11, 29, tzinfo=UTC), "audit_log_p2026_11_23", (2026, 11, 23), (2026, 11, 30)),
        (Period(days=1), dt.datetime(2026, 11, 29, 23, tzinfo=UTC), "audit_log_p2026_11_29", (2026, 11, 29), (2026, 11, 30)),
    ],
)
def test_bounds_and_names(interval: Period, ts: dt.datetime, name: str, start: tuple, end: tuple) -> None:
    b = bounds_for(ts, interval)
    assert (b.name, b.start, b.end) == (name, dt.datetime(*start, tzinfo=UTC), dt.datetime(*end, tzinfo=UTC))
    assert b.contains(ts)


def test_bounds_are_utc_whatever_the_callers_zone() -> None:
    # 23:30 on Nov 30 at UTC-2 is Dec 1 in UTC: the December partition.
    local = dt.datetime(2026, 11, 30, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=-2)))
    assert bounds_for(local, MONTH).name == "audit_log_p2026_12"
    with pytest.raises(PartitionError):
        bounds_for(dt.datetime(2026, 1, 1), MONTH)


@pytest.mark.parametrize(
    "period,interval,name",
    [("2026-11", MONTH, "audit_log_p2026_11"), ("2026-Q4", Period(months=3), "audit_log_p2026_q4"),
     ("2026", Period(months=12), "audit_log_p2026"), ("2026-11-23", Period(days=7), "audit_log_p2026_11_23"),
     ("audit_log_p2026_11", MONTH, "audit_log_p2026_11"), (dt.date(2026, 11, 1), MONTH, "audit_log_p2026_11"),
     (dt.datetime(2026, 11, 1, tzinfo=UTC), MONTH, "audit_log_p2026_11")],
)
def test_periods_by_key(period: object, interval: Period, name: str) -> None:
    assert resolve_period(period, interval).name == name


@pytest.mark.parametrize(
    "period,interval,message",
    [(dt.datetime(2026, 11, 15, tzinfo=UTC), MONTH, "not aligned"), ("2026-11-24", Period(days=7), "not aligned"),
     ("2026-11", Period(months=3), "not aligned"), ("November", MONTH, "not a period key"),
     ("2026-13", MONTH, "month must be in 1..12"), (42, MONTH, "not int")],
)
def test_bad_periods_are_refused_clearly(period: object, interval: Period, message: str) -> None:
    with pytest.raises(PartitionError, match=message):
        resolve_period(period, interval)


def test_premake_is_idempotent_and_registered(db: AuditDatabase, fresh_database: str) -> None:
    base = dt.datetime(2030, 1, 15, tzinfo=UTC)
    made = db.partitions.premake(4, now=base, run_id="run-1")
    assert [p.name for p in made] == [f"audit_log_p2030_{m:02d}" for m in range(1, 6)]
    assert all(p.created for p in made)
    again = db.partitions.premake(4, now=base)
    assert [p.name for p in again] == [p.name for p in made] and not any(p.created for p in again)
    with psycopg.connect(fresh_database) as conn:
        created = entries(conn, operation="create")
        (indexes,) = conn.execute("SELECT count(*) FROM pg_indexes WHERE tablename = 'audit_log_p2030_03'").fetchone()  # type: ignore[misc]
        (parent_indexes,) = conn.execute("SELECT count(*) FROM pg_indexes WHERE tablename = 'audit_log'").fetchone()  # type: ignore[misc]
    assert len([e for e in created if e.run_id == "run-1"]) == 5
    assert indexes == parent_indexes  # every index of the parent exists on the new partition
    found = db.partitions.find_partition(dt.datetime(2030, 3, 31, 23, 59, 59, tzinfo=UTC))
    assert found is not None and found.name == "audit_log_p2030_03" and found.state == "active"
    assert db.partitions.find_partition(dt.datetime(2040, 1, 1, tzinfo=UTC)) is None


def concurrently(n: int, call: Callable[[], T]) -> tuple[list[T], list[BaseException]]:
    """Run ``call`` in ``n`` threads released together: (results, errors)."""
    results: list[T] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(n)

    def one() -> None:
        try:
            barrier.wait()
            results.append(call())
        except BaseException as exc:  # noqa: BLE001 - collected for the caller to assert
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results, errors


def test_sixteen_concurrent_creators_make_one_partition(db: AuditDatabase, fresh_database: str) -> None:
    made, errors = concurrently(16, lambda: db.partitions.create_partition("2031-06"))
    names = [r.name for r in made]
    assert errors == []
    assert names == ["audit_log_p2031_06"] * 16
    with psycopg.connect(fresh_database) as conn:
        (registered,) = conn.execute(
            "SELECT count(*) FROM audit_partitions WHERE partition_name = 'audit_log_p2031_06'").fetchone()  # type: ignore[misc]
        creates = entries(conn, partition="audit_log_p2031_06", operation="create")
    assert registered == 1 and len(creates) == 1


def _tables_of(url: str, principal: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT tableoid::regclass::text, count(*) FROM audit_log WHERE principal_id = %s GROUP BY 1", (principal,)
        ).fetchall()
    return dict(rows)


def test_creating_a_partition_rescues_default_rows(db: AuditDatabase, fresh_database: str) -> None:
    events = demo_events(500, now=dt.datetime(2035, 3, 1, tzinfo=UTC), span=dt.timedelta(days=59))  # Jan + Feb 2035
    events = [e.model_copy(update={"principal_id": "stray"}) for e in events]
    db.insert_many(events)
    assert _tables_of(fresh_database, "stray") == {"audit_log_default": 500}
    hashes_before = {e.event_id: e.content_hash for e in db.query(AuditQuery(principal_id="stray", limit=1000))}

    result = db.partitions.create_partition("2035-02")
    feb = sum(1 for e in events if e.event_time.month == 2)
    assert result.created and result.rescued_rows == feb
    assert _tables_of(fresh_database, "stray") == {"audit_log_default": 500 - feb, "audit_log_p2035_02": feb}

    plan = db.partitions.plan()
    assert [a.partition for a in plan.of("rescue")] == ["audit_log_p2035_01"]
    rescued = db.partitions.rescue_default(run_id="r")
    assert [r.name for r in rescued] == ["audit_log_p2035_01"]
    assert db.partitions.default_row_count() == 0
    after = {e.event_id: e.stored_content_hash for e in db.query(AuditQuery(principal_id="stray", limit=1000))}
    assert after == hashes_before  # nothing lost, nothing duplicated, nothing altered
    with psycopg.connect(fresh_database) as conn:
        rescues = entries(conn, operation="rescue")
        # The rescued partition is as protected as any other.
        with pytest.raises(psycopg.errors.RaiseException):
            conn.execute("TRUNCATE audit_log_p2035_02")
        conn.rollback()
        # The append-only trigger on DEFAULT, disabled inside the rescue transaction, is enabled again.
        states = conn.execute(
            "SELECT tgenabled FROM pg_trigger WHERE tgrelid = 'audit_log_default'::regclass AND NOT tgisinternal"
        ).fetchall()
        assert states and all(s == ("O",) for s in states)
    assert sorted(e.row_count or 0 for e in rescues) == sorted([feb, 500 - feb])


def test_rescue_while_writers_keep_writing(db: AuditDatabase, fresh_database: str) -> None:
    """Writers into DEFAULT and into other partitions during the rescue: every acknowledged row is kept once."""
    old = demo_events(3000, now=dt.datetime(2036, 2, 1, tzinfo=UTC), span=dt.timedelta(days=30))
    db.insert_many(old)
    stop = threading.Event()
    written: list[AuditEvent] = []
    errors: list[BaseException] = []

    def writer(base: dt.datetime) -> None:
        i = 0
        while not stop.is_set():
            e = AuditEvent(action="w", status="success", principal_id="writer", event_time=base + dt.timedelta(seconds=i))
            try:
                db.insert(e)
                written.append(e)
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)
            i += 1

    threads = [threading.Thread(target=writer, args=(dt.datetime(2036, 1, 10, tzinfo=UTC),)),
               threading.Thread(target=writer, args=(dt.datetime.now(UTC) - dt.timedelta(hours=1),))]
    for t in threads:
        t.start()
    time.sleep(0.3)
    result = db.partitions.create_partition("2036-01")
    time.sleep(0.3)
    stop.set()
    for t in threads:
        t.join(30)
    assert errors == []
    assert result.rescued_rows >= 3000
    ids = {e.event_id for e in written} | {e.event_id for e in old}
    with psycopg.connect(fresh_database) as conn:
        stored = [r[0] for r in conn.execute("SELECT event_id FROM audit_log").fetchall()]
        (in_default,) = conn.execute("SELECT count(*) FROM audit_log_default").fetchone()  # type: ignore[misc]
    assert len(stored) == len(set(stored)) == len(ids) and set(stored) == ids
    assert in_default == 0


def test_hold_and_release_are_ledgered(db: AuditDatabase, fresh_database: str) -> None:
    db.partitions.create_partition("2032-01")
    with pytest.raises(PartitionError, match="reason"):
        db.partitions.hold("2032-01", "  ")
    held = db.partitions.hold("2032-01", "case 2026-117 (subpoena)", run_id="h1")
    assert held.legal_hold and held.legal_hold_reason == "case 2026-117 (subpoena)"
    released = db.partitions.release("2032-01", "case closed")
    assert not released.legal_hold
    with pytest.raises(PartitionError, match="no partition"):
        db.partitions.hold("2099-01", "x")
    with psycopg.connect(fresh_database) as conn:
        ops = [(e.operation, e.details.get("reason")) for e in entries(conn, partition="audit_log_p2032_01")]
    assert ops[-2:] == [("hold", "case 2026-117 (subpoena)"), ("release", "case closed")]


def test_guarded_detach_and_drop_refuse_active_partitions(db: AuditDatabase) -> None:
    db.partitions.create_partition("2033-01")
    with pytest.raises(ComplianceError, match="only an archived partition"):
        db.partitions.detach_partition("2033-01")
    with pytest.raises(ComplianceError, match="may not be dropped"):
        db.partitions.drop_partition("2033-01")
    assert db.partitions.get("2033-01").state == "active"


def test_plan_lists_creation_and_archival(db: AuditDatabase) -> None:
    now = dt.datetime(2027, 6, 15, tzinfo=UTC)
    db.partitions.create_partition("2027-01")
    plan = db.partitions.plan(now)
    creates = [a.partition for a in plan.of("create")]
    assert creates[0] == "audit_log_p2027_06" and len(creates) == db.settings.partitions.premake + 1
    assert "audit_log_p2027_01" in [a.partition for a in plan.of("archive")]  # ended > 90 days before now
    assert plan.to_dict()["actions"]


def test_optimize_analyzes_summarizes_and_rebuilds_bloated_indexes(db: AuditDatabase, fresh_database: str) -> None:
    part = db.partitions.find_partition(dt.datetime.now(UTC))
    assert part is not None
    with psycopg.connect(fresh_database, autocommit=True) as conn:  # so that autovacuum cannot analyze it first
        conn.execute(psycopg.sql.SQL("ALTER TABLE {} SET (autovacuum_enabled = false)").format(
            psycopg.sql.Identifier(part.name)))
    db.insert_many(demo_events(4000, now=part.start + dt.timedelta(hours=2), span=dt.timedelta(hours=1)))
    first = db.partitions.optimize(run_id="opt-1")
    kinds = {(s.partition, s.action) for s in first.steps}
    assert (part.name, "analyze") in kinds and (part.name, "brin_summarize") in kinds
    assert "unavailable" in first.bloat_check  # pgstattuple not installed: said, not hidden
    refreshed = db.partitions.get(part.start)
    assert refreshed.row_count and refreshed.row_count >= 3000 and refreshed.bytes

    with psycopg.connect(fresh_database, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pgstattuple")
    tuned = db.settings.with_overrides(maintenance={"reindex_min_bytes": 0, "reindex_max_leaf_density": 100.0})
    with AuditDatabase(tuned) as db2:
        second = db2.partitions.optimize()
    assert second.bloat_check == "pgstattuple"
    assert any(s.action == "reindex" and s.partition == part.name for s in second.steps)
    with psycopg.connect(fresh_database) as conn:
        optimized = entries(conn, partition=part.name, operation="optimize")
        (invalid,) = conn.execute("SELECT count(*) FROM pg_index WHERE NOT indisvalid").fetchone()  # type: ignore[misc]
    assert len(optimized) == 2 and invalid == 0
    assert db.count(AuditQuery()) == 4000  # maintenance changes no data


# -- the daily pass (run_maintenance) -----------------------------------------------------------------------------


def _lifecycle_state(url: str) -> dict[str, object]:
    """What a maintenance pass could change: the partitions attached, the registry, the ledger, DEFAULT's rows."""
    with psycopg.connect(url) as conn:
        return {
            "attached": conn.execute(
                "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i JOIN pg_class c"
                " ON c.oid = i.inhrelid WHERE i.inhparent = 'audit_log'::regclass ORDER BY 1").fetchall(),
            "registry": conn.execute("SELECT * FROM audit_partitions ORDER BY range_start").fetchall(),
            "ledger": conn.execute("SELECT count(*) FROM audit_lifecycle_ledger").fetchone(),
            "default_rows": conn.execute("SELECT count(*) FROM audit_log_default").fetchone(),
        }


def _window(now: dt.datetime, premake: int) -> list[str]:
    first = bounds_for(now, MONTH)
    return [following(first, MONTH, i).name for i in range(premake + 1)]


def test_an_idle_maintenance_pass_changes_nothing_and_takes_no_lock(fresh_database: str) -> None:
    settings = AuditSettings(database_url=fresh_database, pool={"statement_timeout_ms": 3000})
    before = _lifecycle_state(fresh_database)
    with AuditDatabase(settings) as db, psycopg.connect(fresh_database, autocommit=True) as creator:
        # Another process is creating partitions: an idle pass has nothing to wait for (a pass with work would
        # wait for this lock, and hit the statement timeout).
        creator.execute("SELECT pg_advisory_lock(%s, %s)", (LOCK_CLASS, LOCK_PARTITIONS))
        result = db.partitions.run_maintenance(run_id="idle")
        assert result.nothing_to_do and result.created == [] and result.rescued == [] and result.rescued_rows == 0
        assert [r.name for r in result.window] == _window(dt.datetime.now(UTC), db.settings.partitions.premake)
        assert not any(r.created for r in result.window)
        assert all(r.partition.state == "active" for r in result.window)
        assert result.to_dict()["nothing_to_do"] is True
        premade = db.partitions.premake()  # premake's own idle path answers the same
        assert [(r.name, r.created) for r in premade] == [(r.name, False) for r in result.window]
    assert _lifecycle_state(fresh_database) == before  # no partition, registry change or ledger entry
    with psycopg.connect(fresh_database) as conn:
        assert [e for e in entries(conn) if e.run_id == "idle"] == []


def test_a_maintenance_pass_after_a_month_boundary_or_with_rows_in_default_does_the_work(
    db: AuditDatabase, fresh_database: str
) -> None:
    pm = db.partitions
    premake = db.settings.partitions.premake
    next_month = following(bounds_for(dt.datetime.now(UTC), MONTH), MONTH).start + dt.timedelta(days=3)
    # The clock passed into the next month: the window moved by one, its last partition is due.
    result = pm.run_maintenance(now=next_month, run_id="boundary")
    window = _window(next_month, premake)
    assert not result.nothing_to_do
    assert [r.name for r in result.window] == window
    assert [r.name for r in result.created] == [window[-1]]
    assert pm.get(window[-1]).state == "active"
    with psycopg.connect(fresh_database) as conn:
        made = [e for e in entries(conn, operation="create") if e.run_id == "boundary"]
    assert [e.partition_name for e in made] == [window[-1]]
    assert pm.run_maintenance(now=next_month).nothing_to_do  # done: idle again

    # Rows landed in DEFAULT for a period without a partition: the pass gives it its partition and moves them in.
    stray = demo_events(40, now=dt.datetime(2040, 5, 20, tzinfo=UTC), span=dt.timedelta(days=10))
    db.insert_many(stray)
    assert pm.default_row_count() == 40
    rescued = pm.run_maintenance(now=next_month, run_id="rescue")
    assert not rescued.nothing_to_do and [r.name for r in rescued.rescued] == ["audit_log_p2040_05"]
    assert rescued.rescued_rows == 40 and [r.name for r in rescued.created] == ["audit_log_p2040_05"]
    assert pm.default_row_count() == 0 and db.count(AuditQuery(since=dt.datetime(2040, 5, 1, tzinfo=UTC))) == 40

    # A partition of the window that went missing (here: its registry row and table removed behind the library's
    # back) is made again by the next pass.
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("DROP TABLE {}").format(psycopg.sql.Identifier(window[2])))
        conn.execute("DELETE FROM audit_partitions WHERE partition_name = %s", (window[2],))
    again = pm.run_maintenance(now=next_month)
    assert [r.name for r in again.created] == [window[2]] and pm.get(window[2]).state == "active"
    assert pm.run_maintenance(now=next_month).nothing_to_do


def test_rows_no_partition_can_take_do_not_make_a_pass_busy(db: AuditDatabase, fresh_database: str) -> None:
    """Rows in DEFAULT for a period whose registered partition is no longer attached (archived in detach mode, or
    purged) cannot be rescued: the pass has nothing to do, like ``rescue_default`` (``plan`` reports them)."""
    pm = db.partitions
    pm.create_partition("2041-01")
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        conn.execute("ALTER TABLE audit_log DETACH PARTITION audit_log_p2041_01")
    db.insert_many(demo_events(5, now=dt.datetime(2041, 1, 20, tzinfo=UTC), span=dt.timedelta(days=5)))
    assert pm.default_row_count() == 5
    assert pm.rescue_default() == []
    result = pm.run_maintenance()
    assert result.nothing_to_do and result.created == [] and pm.default_row_count() == 5
    assert [a.partition for a in pm.plan().of("late")] == ["audit_log_p2041_01"]


def test_concurrent_maintenance_passes_make_each_partition_once(db: AuditDatabase, fresh_database: str) -> None:
    now = dt.datetime(2045, 7, 10, tzinfo=UTC)
    results, errors = concurrently(8, lambda: db.partitions.run_maintenance(now=now, run_id="many"))
    window = _window(now, db.settings.partitions.premake)
    assert errors == [] and len(results) == 8
    made = sorted(r.name for result in results for r in result.created)
    assert made == sorted(window)  # each made by exactly one pass; the others found it
    with psycopg.connect(fresh_database) as conn:
        creates = [e.partition_name for e in entries(conn, operation="create") if e.run_id == "many"]
    assert sorted(creates) == sorted(window)
