"""Partition bounds and names (UTC), premake, concurrent creation, registry lookups."""

from __future__ import annotations

import datetime as dt
import threading

import psycopg
import pytest

from audit_db_core import AuditDatabase, AuditEvent, PartitionError, Period
from audit_db_core.partitions import bounds_for

UTC = dt.UTC


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
    assert bounds_for(local, Period(months=1)).name == "audit_log_p2026_12"
    with pytest.raises(PartitionError):
        bounds_for(dt.datetime(2026, 1, 1), Period(months=1))


def test_premake_is_idempotent_and_registered(db: AuditDatabase, fresh_database: str) -> None:
    base = dt.datetime(2030, 1, 15, tzinfo=UTC)
    made = db.partitions.premake(4, now=base, run_id="run-1")
    assert [p.name for p in made] == [f"audit_log_p2030_{m:02d}" for m in range(1, 6)]
    again = db.partitions.premake(4, now=base)
    assert [p.name for p in again] == [p.name for p in made]
    with psycopg.connect(fresh_database) as conn:
        (ledger,) = conn.execute(
            "SELECT count(*) FROM audit_lifecycle_ledger WHERE operation = 'create' AND run_id = 'run-1'"
        ).fetchone()  # type: ignore[misc]
        (indexes,) = conn.execute(
            "SELECT count(*) FROM pg_indexes WHERE tablename = 'audit_log_p2030_03'"
        ).fetchone()  # type: ignore[misc]
        (parent_indexes,) = conn.execute("SELECT count(*) FROM pg_indexes WHERE tablename = 'audit_log'").fetchone()  # type: ignore[misc]
    assert ledger == 5
    assert indexes == parent_indexes  # every index of the parent exists on the new partition
    found = db.partitions.find_partition(dt.datetime(2030, 3, 31, 23, 59, 59, tzinfo=UTC))
    assert found is not None and found.name == "audit_log_p2030_03" and found.state == "active"
    assert db.partitions.find_partition(dt.datetime(2040, 1, 1, tzinfo=UTC)) is None


def test_sixteen_concurrent_creators_make_one_partition(db: AuditDatabase, fresh_database: str) -> None:
    target = dt.datetime(2031, 6, 10, tzinfo=UTC)
    errors: list[BaseException] = []
    names: list[str] = []
    barrier = threading.Barrier(16)

    def create() -> None:
        try:
            barrier.wait()
            names.append(db.partitions.create_partition(target).name)
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=create) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert names == ["audit_log_p2031_06"] * 16
    with psycopg.connect(fresh_database) as conn:
        (registered,) = conn.execute(
            "SELECT count(*) FROM audit_partitions WHERE partition_name = 'audit_log_p2031_06'"
        ).fetchone()  # type: ignore[misc]
        (created,) = conn.execute(
            "SELECT count(*) FROM audit_lifecycle_ledger WHERE partition_name = 'audit_log_p2031_06'"
        ).fetchone()  # type: ignore[misc]
    assert registered == 1 and created == 1


def test_creation_over_default_rows_is_refused_clearly(db: AuditDatabase) -> None:
    stray = AuditEvent(action="a", status="success", principal_id="u", event_time=dt.datetime(2035, 2, 2, tzinfo=UTC))
    db.insert(stray)
    with pytest.raises(PartitionError, match="DEFAULT partition holds 1 rows"):
        db.partitions.create_partition(stray.event_time)
    assert db.partitions.default_row_count() == 1
