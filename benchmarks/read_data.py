"""The data the read-path benchmarks (``cache.py``, ``load.py``) query: a scratch database on the primary holding
N realistic events spread evenly over the D UTC days before today (closed windows), optionally some events of
today so far, with the partitions they need, analysed, and replayed by every replica before anything is timed.

Rows are generated in SQL by the lifecycle benchmark's ``FILL_SQL`` (real content hashes; principals
``user-000`` …, organizations ``org-00`` … ``org-09`` = principal mod 10, eight actions).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from benchmarks import common
from benchmarks.lifecycle import FILL_SQL
from audit_db_core import AuditDatabase, AuditSettings
from audit_db_core.migrate import migrate
from audit_db_core.partitions import DEFAULT_PARTITION, PARENT_TABLE, bounds_for

#: The actions ``FILL_SQL`` generates.
ACTIONS: tuple[str, ...] = ("patient.record.read", "patient.record.update", "patient.record.export",
                            "lab.result.read", "prescription.create", "user.login", "user.logout",
                            "system.config.read")
ORGANIZATIONS = 10


class CheckFailed(RuntimeError):
    """A correctness check of a read-path benchmark failed (data not as prepared, a wrong answer, a lost write):
    the numbers of the run would not mean what they claim."""


@dataclass(frozen=True)
class ReadData:
    url: str  # the scratch database on the primary
    replica_urls: list[str]  # the same database on each replica
    today: dt.datetime  # UTC midnight that ends the closed history
    days: int
    history_rows: int
    today_rows: int
    principals: int
    fill_seconds: float


def principal(k: int) -> str:
    return f"user-{k:03d}"


def check_principals(parser: Any, principals: int) -> None:
    """Refuse ``--principals`` beyond what :func:`principal`'s three digits name (``parser.error`` exits)."""
    if principals > 1000:
        parser.error("--principals must be at most 1000 (principal ids have three digits)")


def organization(k: int) -> str:
    return f"org-{k:02d}"


def utc_midnight(now: dt.datetime) -> dt.datetime:
    return now.astimezone(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def _fill(conn: psycopg.Connection[Any], label: str, start: dt.datetime, span: dt.timedelta, rows: int,
          principals: int) -> None:
    params = {"label": label, "start": start, "span": span.total_seconds(), "n": rows, "principals": principals}
    written = conn.execute(FILL_SQL, params).rowcount
    if written != rows:
        raise CheckFailed(f"fill {label}: INSERT reported {written} rows, expected {rows}")


def wait_replayed(primary_url: str, replica_urls: list[str], *, timeout: float = 120.0,
                  application_name: str = "audit-bench") -> None:
    """Block until every replica has replayed the primary's WAL up to now."""
    with common.connect(primary_url, application_name=application_name) as conn:
        target = (conn.execute("SELECT pg_current_wal_lsn()").fetchone() or (None,))[0]
    deadline = time.monotonic() + timeout
    for url in replica_urls:
        with common.connect(url, application_name=application_name) as conn:
            while True:
                row = conn.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (str(target),)).fetchone()
                if row and row[0]:
                    break
                if time.monotonic() > deadline:
                    raise CheckFailed(f"a replica did not replay up to {target} within {timeout:.0f} s")
                time.sleep(0.05)


def count_rows(url: str, *, application_name: str, where: sql.Composable | None = None,
               params: tuple[Any, ...] = ()) -> int:
    stmt = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(PARENT_TABLE))
    if where is not None:
        stmt += sql.SQL(" WHERE ") + where
    with common.connect(url, application_name=application_name) as conn:
        row = conn.execute(stmt, params).fetchone()
    return int(row[0]) if row else 0


@contextlib.contextmanager
def read_database(
    servers: common.ReadServers,
    label: str,
    *,
    rows: int,
    days: int,
    principals: int,
    today_rows: int = 0,
    now: dt.datetime | None = None,
    application_name: str,
    log: Callable[[str], None],
) -> Iterator[ReadData]:
    """A migrated scratch database with ``rows`` events over the ``days`` days before today (and ``today_rows``
    over today until ``now``), partitions for all of it and the premake window; dropped afterwards."""
    now = now or dt.datetime.now(dt.UTC)
    today = utc_midnight(now)
    start = today - dt.timedelta(days=days)
    with common.scratch_database(servers.database_url, label, application_name=application_name,
                                 prepare=migrate) as url:
        settings = AuditSettings(database_url=url, application_name=application_name)
        months = sorted({bounds_for(start + dt.timedelta(days=i), settings.partitions.interval).start
                         for i in range(days + 1)})
        with AuditDatabase(settings) as db:
            for month in months:
                db.partitions.create_partition(month)
            db.partitions.premake()
        log(f"{label}: filling {rows} events over {days} days (+{today_rows} today)")
        started = time.perf_counter()
        with common.connect(url, application_name=application_name) as conn:
            _fill(conn, f"{label}:history", start, today - start, rows, principals)
            if today_rows:
                span = max(now - today, dt.timedelta(seconds=1))
                _fill(conn, f"{label}:today", today, span, today_rows, principals)
            conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(PARENT_TABLE)))
        fill_seconds = time.perf_counter() - started
        found = count_rows(url, application_name=application_name)
        in_default = count_rows(url, application_name=application_name,
                                where=sql.SQL("tableoid = {}::regclass").format(sql.Literal(DEFAULT_PARTITION)))
        if found != rows + today_rows or in_default:
            raise CheckFailed(f"{label}: audit_log holds {found} rows ({in_default} in {DEFAULT_PARTITION}),"
                                f" expected {rows + today_rows} and none in {DEFAULT_PARTITION}")
        replica_urls = [common.with_dbname(r, conninfo_to_dict(url)["dbname"]) for r in servers.replica_urls]
        wait_replayed(url, replica_urls, application_name=application_name)
        log(f"{label}: {found} rows ready in {fill_seconds:.1f} s, replayed by {len(replica_urls)} replica(s)")
        yield ReadData(url, replica_urls, today, days, rows, today_rows, principals, fill_seconds)
