"""Maintenance benchmark: what an idle maintenance pass costs (nothing to create, nothing to rescue), against
pg_partman's ``run_maintenance()`` on a table of the same shape with the same partitions, measured in the same run.

What is measured
----------------
One scratch database holds both sides:

- ours: ``audit_log`` as the migrations make it (registry, ledger, DEFAULT partition), with the partition of the
  current month and the ``--premake`` following months (``AUDIT_PARTITIONS__PREMAKE``, 3 by default);
- pg_partman's: ``partman_audit_log``, a copy of ``audit_log``'s definition (``LIKE audit_log INCLUDING ALL``:
  columns, constraints, the same 10 indexes), registered with
  ``partman.create_parent('public.partman_audit_log', 'event_time', 'native', 'monthly', p_premake := N,
  p_start_partition := <current month>)``: the current month, N following ones and a DEFAULT partition — the same
  partitions as ours. ``infinite_time_partitions`` is set to true: with pg_partman's default (false) a table without
  data gets no new partitions at all, while ours premakes from the clock whatever the data.

Both sides then have nothing to do. Each pass is timed from the caller's side (wall clock, ``--passes`` of each
after ``--warmup`` untimed ones, interleaved pass by pass, the side going first alternating):

- ``run_maintenance`` — ``PartitionManager.run_maintenance()`` through an open ``AuditDatabase`` (its pool warm),
  as the daily job and ``audit-platform partitions maintain`` call it;
- ``premake + rescue_default`` — ``premake()`` then ``rescue_default()``, what the Dagster code location's daily
  ``partition_maintenance_job`` calls in its two steps (transparency, no target);
- ``partman.run_maintenance`` — ``SELECT partman.run_maintenance()`` on an open autocommit psycopg connection.

Target: ``run_maintenance`` median ≤ 1.5 × pg_partman's median (the issue's). The ratio of the p90s is printed
too. Round trips of one pass are counted on the wire (libpq trace of the connection: each simple ``Query`` and
each extended-protocol ``Sync`` is one wait for the server) and printed, with the statements among them (the
pool's empty liveness query and ``BEGIN`` / ``COMMIT`` apart).

Correctness checks (exit 2, no report): both tables have the same partitions (same bounds) before timing; every
timed pass of ours reports nothing to do; after the passes both sides have exactly the partitions they had, and
our registry and lifecycle ledger are unchanged (an idle pass records nothing).

Where ``CREATE EXTENSION pg_partman`` is not available (e.g. the throw-away local PostgreSQL, whose build ships no
pg_partman), our side is still measured and checked, and the comparison is skipped with a line saying why. Debian's
``postgresql-15-partman`` provides it for the machine's PostgreSQL 15::

    AUDIT_BENCH_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres python benchmarks/maintenance.py
    python benchmarks/maintenance.py --passes 30 --output /tmp/maintenance.json   # local server, no pg_partman

Servers: with ``AUDIT_BENCH_DATABASE_URL`` set, that server is used (the script creates and drops its own scratch
database on it; the role needs CREATEDB, and to create the extension, the right to). Otherwise a local PostgreSQL
(``audit_local``) is started in a temporary directory and always stopped and removed at the end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: make `benchmarks` importable

from benchmarks import common  # noqa: E402
from benchmarks.common import positive_int, server_url  # noqa: E402
from audit_db_core import AuditDatabase, AuditSettings
from audit_db_core.partitions import PARENT_TABLE, PartitionManager

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "maintenance.json"
APPLICATION_NAME = "audit-bench-maintenance"
TARGET_RATIO = 1.5
PARTMAN_TABLE = "partman_audit_log"
PARTMAN = "partman.run_maintenance"
TARGET_PASS = "run_maintenance"

log = common.stderr_logger("maintenance")


class CheckFailed(Exception):
    """The two sides did not hold the same partitions, or an idle pass did something."""


# -- the passes -------------------------------------------------------------------------------------------------------


def _run_maintenance(pm: PartitionManager) -> bool:
    """The idle pass; True when it reported nothing to do."""
    result = pm.run_maintenance()
    return result.nothing_to_do and not result.created


def _premake_and_rescue(pm: PartitionManager) -> bool:
    made = pm.premake()
    rescued = pm.rescue_default()
    return not any(r.created for r in made) and not rescued


OUR_PASSES: dict[str, Callable[[PartitionManager], bool]] = {
    TARGET_PASS: _run_maintenance,
    "premake + rescue_default": _premake_and_rescue,
}


# -- round trips on the wire ------------------------------------------------------------------------------------------


@contextmanager
def traced(conn: psycopg.Connection[Any]) -> Iterator[dict[str, int]]:
    """Count what the client sends on ``conn`` while the block runs (libpq trace): ``round_trips`` (simple
    ``Query`` messages and extended-protocol ``Sync`` messages, each a wait for the server's answer),
    ``statements`` (SQL statements run, ``BEGIN`` / ``COMMIT`` included), ``liveness_checks`` (the pool's empty
    query on checkout) and ``transaction_control`` (``BEGIN`` / ``COMMIT`` / ``ROLLBACK``)."""
    counts: dict[str, int] = {}
    with tempfile.TemporaryFile("w+") as out:
        conn.pgconn.trace(out.fileno())
        conn.pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS | psycopg.pq.Trace.REGRESS_MODE)
        try:
            yield counts
        finally:
            conn.pgconn.untrace()
        out.seek(0)
        sent = [line.split("\t") for line in out.read().splitlines() if line.startswith("F\t")]
    queries = [fields[3].strip().strip('"') for fields in sent if len(fields) > 3 and fields[2] == "Query"]
    kinds = [fields[2] for fields in sent if len(fields) > 2]
    counts.update(
        round_trips=len(queries) + kinds.count("Sync"),
        statements=sum(1 for q in queries if q) + kinds.count("Execute"),
        liveness_checks=sum(1 for q in queries if not q),
        transaction_control=sum(1 for q in queries if q.upper() in ("BEGIN", "COMMIT", "ROLLBACK")),
    )


def _count_our_pass(db: AuditDatabase, one_pass: Callable[[PartitionManager], bool]) -> dict[str, int]:
    """Round trips of one pass of ours: the pool holds exactly one connection (min = max = 1), so tracing it sees
    every checkout, the pool's liveness check included."""
    pool = db.connections.primary_pool
    conn = pool.getconn()
    pool.putconn(conn)
    with traced(conn) as counts:
        one_pass(db.partitions)
    return counts


# -- the two sides ----------------------------------------------------------------------------------------------------


def _children(conn: psycopg.Connection[Any], parent: str) -> list[tuple[str, str]]:
    """(name, bound) of ``parent``'s partitions; names without the parent's prefix, so both sides compare."""
    rows = conn.execute(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = %s::regclass ORDER BY 2", (parent,)).fetchall()
    return [(name.removeprefix(parent), bound) for name, bound in rows]


def _our_state(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    return {
        "partitions": _children(conn, PARENT_TABLE),
        "registry": conn.execute(
            "SELECT partition_name, state, updated_at FROM audit_partitions ORDER BY range_start").fetchall(),
        "ledger_entries": conn.execute("SELECT count(*) FROM audit_lifecycle_ledger").fetchone(),
    }


def _setup_partman(conn: psycopg.Connection[Any], premake: int, month: dt.datetime) -> str | None:
    """Install pg_partman and register ``partman_audit_log``; None when done, else why the comparison is skipped."""
    try:
        conn.execute("CREATE SCHEMA partman")
        conn.execute("CREATE EXTENSION pg_partman SCHEMA partman")
    except psycopg.Error as exc:
        return f"CREATE EXTENSION pg_partman failed on this server: {str(exc).strip().splitlines()[0]}"
    conn.execute(f"CREATE TABLE {PARTMAN_TABLE} (LIKE {PARENT_TABLE} INCLUDING ALL) PARTITION BY RANGE (event_time)")
    conn.execute(
        "SELECT partman.create_parent(%s, 'event_time', 'native', 'monthly', p_premake := %s,"
        " p_start_partition := %s)", (f"public.{PARTMAN_TABLE}", premake, month.isoformat()))
    # With the default (false), pg_partman makes no new partition for a table without data; ours premakes from
    # the clock: the same rule on both sides.
    conn.execute("UPDATE partman.part_config SET infinite_time_partitions = true WHERE parent_table = %s",
                 (f"public.{PARTMAN_TABLE}",))
    return None


def _summary(times: list[float]) -> dict[str, Any]:
    ms = sorted(t * 1000 for t in times)
    p90 = ms[min(len(ms) - 1, round(0.9 * (len(ms) - 1)))]
    return {"n": len(ms), "median_ms": round(statistics.median(ms), 4), "p90_ms": round(p90, 4),
            "mean_ms": round(statistics.fmean(ms), 4), "min_ms": round(ms[0], 4), "max_ms": round(ms[-1], 4)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    loadavg = {"start": [round(x, 2) for x in os.getloadavg()]}
    month = dt.datetime.now(dt.UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    with server_url(log, durable=False) as (server, description), common.scratch_database(
        server, "maint", application_name=APPLICATION_NAME
    ) as url:
        facts = common.server_facts(url, ["TimeZone", "fsync", "shared_buffers"], application_name=APPLICATION_NAME)
        settings = AuditSettings(database_url=url, pool={"min_size": 1, "max_size": 1},
                                 partitions={"premake": args.premake})
        partman = psycopg.connect(url, autocommit=True, application_name=APPLICATION_NAME,
                                  options="-c TimeZone=UTC")
        with AuditDatabase(settings) as db, partman, common.connect(url, application_name=APPLICATION_NAME) as look:
            db.migrate()
            db.partitions.premake()
            skipped = _setup_partman(partman, args.premake, month)
            ours_before = _our_state(look)
            log(f"ours: {len(ours_before['partitions'])} partitions (DEFAULT included)")
            if skipped:
                log(f"pg_partman comparison skipped: {skipped}")
            else:
                their_partitions = _children(look, PARTMAN_TABLE)
                if their_partitions != ours_before["partitions"]:
                    raise CheckFailed(f"the two tables hold different partitions: ours {ours_before['partitions']}, "
                                      f"pg_partman's {their_partitions}")
            passes: dict[str, Callable[[], Any]] = {
                name: functools.partial(f, db.partitions) for name, f in OUR_PASSES.items()}
            if not skipped:
                passes[PARTMAN] = lambda: partman.execute("SELECT partman.run_maintenance()")
            times: dict[str, list[float]] = {name: [] for name in passes}
            names = list(passes)
            for i in range(args.warmup + args.passes):
                order = names if i % 2 == 0 else names[::-1]
                for name in order:
                    t = time.perf_counter()
                    answer = passes[name]()
                    elapsed = time.perf_counter() - t
                    if name in OUR_PASSES and answer is not True:
                        raise CheckFailed(f"{name}: pass {i + 1} found something to do on an idle table")
                    if i >= args.warmup:
                        times[name].append(elapsed)
            loadavg["after_passes"] = [round(x, 2) for x in os.getloadavg()]
            round_trips = {name: _count_our_pass(db, f) for name, f in OUR_PASSES.items()}
            if not skipped:
                with traced(partman) as counts:
                    partman.execute("SELECT partman.run_maintenance()")
                round_trips[PARTMAN] = counts
            ours_after = _our_state(look)
            if ours_after != ours_before:
                raise CheckFailed(f"idle passes changed our partitions, registry or ledger: {ours_before} → "
                                  f"{ours_after}")
            if not skipped and _children(look, PARTMAN_TABLE) != ours_before["partitions"]:
                raise CheckFailed("idle pg_partman passes changed its partitions")
            if not skipped:
                (partman_version,) = look.execute(
                    "SELECT extversion FROM pg_extension WHERE extname = 'pg_partman'").fetchone()  # type: ignore[misc]
    variants = {name: {**_summary(t), **round_trips[name]} for name, t in times.items()}
    comparison: dict[str, Any] = {"available": not skipped, "skipped_reason": skipped}
    if not skipped:
        ours, theirs = variants[TARGET_PASS], variants[PARTMAN]
        ratio = ours["median_ms"] / theirs["median_ms"]
        comparison.update(
            pg_partman_version=partman_version,
            ratio_median=round(ratio, 3), ratio_p90=round(ours["p90_ms"] / theirs["p90_ms"], 3),
            target_ratio=TARGET_RATIO, met=ratio <= TARGET_RATIO,
            daily_job_ratio_median=round(variants["premake + rescue_default"]["median_ms"] / theirs["median_ms"], 3),
        )
    return {
        "benchmark": "maintenance",
        "environment": {"server": description, **facts, "python_version": platform.python_version(),
                        "cpu_count": os.cpu_count(), "loadavg": loadavg,
                        "date_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")},
        "parameters": {"passes": args.passes, "warmup": args.warmup, "premake": args.premake,
                       "partitions": len(ours_before["partitions"]), "target_pass": TARGET_PASS},
        "passes": variants,
        "comparison": comparison,
        "checks_passed": True,
        "elapsed_seconds": round(time.perf_counter() - started, 1),
        "notes": [
            "Wall time of one idle pass seen by the caller; passes interleaved, the side going first alternating.",
            "round_trips: simple Query + Sync messages sent on the connection during one pass (libpq trace).",
            "Our passes run through an open AuditDatabase (warm pool of one connection); pg_partman's through an open "
            "autocommit connection: neither pays for connecting.",
        ],
    }


def format_table(report: dict[str, Any]) -> str:
    lines = [f"{'idle pass':<28}{'median ms':>11}{'p90 ms':>9}{'round trips':>13}{'statements':>12}", "-" * 73]
    for name, v in report["passes"].items():
        lines.append(f"{name:<28}{v['median_ms']:>11.3f}{v['p90_ms']:>9.3f}{v['round_trips']:>13}"
                     f"{v['statements']:>12}")
    c = report["comparison"]
    if c["available"]:
        lines.append(f"{TARGET_PASS} / {PARTMAN}: median {c['ratio_median']:.2f}×, p90 {c['ratio_p90']:.2f}× "
                     f"(target ≤ {c['target_ratio']}×: {'met' if c['met'] else 'MISSED'}); "
                     f"premake + rescue_default / {PARTMAN}: {c['daily_job_ratio_median']:.2f}×")
    else:
        lines.append(f"pg_partman comparison skipped: {c['skipped_reason']}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--passes", type=positive_int, default=300, help="timed idle passes of each side (300)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed passes of each side first (20)")
    parser.add_argument("--premake", type=int, default=3, help="future partitions on both sides (3)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help=f"JSON report ({DEFAULT_OUTPUT})")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    return common.run_main(parse_args(argv), run, format_table, log, check_failure=CheckFailed)


if __name__ == "__main__":
    sys.exit(main())
