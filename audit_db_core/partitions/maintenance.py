"""Routine maintenance: the daily pass (premake + rescue of DEFAULT rows, one statement when there is nothing to
do), the plan of what maintenance would do now (create, rescue, archive, purge, optimize), and the index and
statistics upkeep of the active partitions.

Example::

    pm = db.partitions
    pm.run_maintenance().nothing_to_do              # True: the window exists and DEFAULT holds nothing to rescue
    pm.plan().of("archive")                         # [PlannedAction('archive', 'audit_log_p2026_07', …), …]
    pm.optimize().steps                             # ANALYZE, BRIN summaries, REINDEX of bloated B-trees
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from audit_db_core import ledger
from audit_db_core.partitions.bounds import DEFAULT_PARTITION, _utc, bounds_for, following
from audit_db_core.partitions.creation import complete_window, premake_window, rescue_default
from audit_db_core.partitions.inspection import (
    _INFO_FIELDS,
    _info,
    archive_cutoff,
    default_ranges,
    list_partitions,
    single_read,
)
from audit_db_core.partitions.purge import purge_decisions
from audit_db_core.partitions.results import (
    MaintenancePlan,
    MaintenanceResult,
    OptimizeReport,
    OptimizeStep,
    PartitionInfo,
    PlannedAction,
    _elapsed_ms,
)

if TYPE_CHECKING:
    from audit_db_core.config import MaintenanceSettings
    from audit_db_core.partitions.state import ManagerState


# -- the daily pass -------------------------------------------------------------------------------------------------

# One statement answers "is anything due?": the registry rows of the premake window (a name missing is a partition
# to make) and whether DEFAULT holds a row that no registered partition covers (a period to rescue). The one-row
# subquery on the left keeps the answer when no row of the window is registered.
_DUE = sql.SQL(
    "SELECT s.stray, {fields} FROM (SELECT EXISTS (SELECT 1 FROM {default} d WHERE NOT EXISTS ("
    "SELECT 1 FROM audit_partitions r WHERE tstzrange(r.range_start, r.range_end) @> d.event_time)) AS stray) s"
    " LEFT JOIN audit_partitions p ON p.partition_name = ANY(%s)"
).format(fields=sql.SQL(", ").join(sql.Identifier("p", c) for c in _INFO_FIELDS),
         default=sql.Identifier(DEFAULT_PARTITION))


def run_maintenance(
    pm: ManagerState, *, now: dt.datetime | None = None, run_id: str | None = None
) -> MaintenanceResult:
    """The daily creation pass, pg_partman's ``run_maintenance()``: the partition of ``now`` and the
    ``AUDIT_PARTITIONS__PREMAKE`` following ones exist afterwards, and every period whose rows sit in DEFAULT has
    its partition (the rows moved in).

    When nothing is due it costs one statement (no lock, no ledger entry) and says ``nothing_to_do``. Otherwise
    each missing partition is made by :meth:`create_partition` (advisory lock, re-check, ledger) and DEFAULT is
    rescued by :meth:`rescue_default`, so concurrent passes still make each partition once. Rows DEFAULT holds for
    periods whose partition was archived and detached, or purged, cannot be rescued: they do not count as work
    (``plan()`` reports them as ``late``).

    Example::

        result = db.partitions.run_maintenance(run_id="nightly-2026-12-01")
        result.nothing_to_do, [r.name for r in result.created]     # False, ['audit_log_p2027_03']
    """
    started = time.perf_counter()
    window = premake_window(pm, None, now)
    with single_read(pm, "run_maintenance") as conn:
        rows = conn.cursor(row_factory=dict_row).execute(_DUE, ([b.name for b in window],)).fetchall()
    stray = bool(rows[0]["stray"])
    found = {r["partition_name"]: _info(r) for r in rows if r["partition_name"] is not None}
    idle = not stray and len(found) == len(window)
    results = complete_window(pm, window, found, run_id=run_id)
    rescued = rescue_default(pm, run_id=run_id) if stray else []
    return MaintenanceResult(results, rescued, nothing_to_do=idle, duration_ms=_elapsed_ms(started))


# -- plan -----------------------------------------------------------------------------------------------------------


def plan(pm: ManagerState, now: dt.datetime | None = None) -> MaintenancePlan:
    """What maintenance would do at ``now``, without doing it."""
    now = _utc(now or dt.datetime.now(dt.UTC))
    out = MaintenancePlan(now)
    parts = {p.name: p for p in list_partitions(pm)}
    current = bounds_for(now, pm.interval)
    for i in range(pm.settings.partitions.premake + 1):
        b = following(current, pm.interval, i)
        if b.name not in parts:
            out.actions.append(PlannedAction("create", b.name, b.start, b.end, "inside the premake window"))
    for b, rows in default_ranges(pm):
        owner = next((p for p in parts.values() if p.start < b.end and b.start < p.end), None)
        if owner is None:
            out.actions.append(PlannedAction("rescue", b.name, b.start, b.end, "rows sit in DEFAULT", rows))
        else:
            out.actions.append(PlannedAction(
                "late", owner.name, b.start, b.end, f"rows sit in DEFAULT for {owner.state} partition", rows))
    cutoff = archive_cutoff(pm, now)
    for p in parts.values():
        if p.state == "active" and p.end <= cutoff:
            out.actions.append(PlannedAction("archive", p.name, p.start, p.end, "past the active window"))
        elif p.state == "active":
            out.actions.append(PlannedAction("optimize", p.name, p.start, p.end, "active partition"))
    for d in purge_decisions(pm, now, verify=False):
        if d.action in ("purge", "delete_archive"):
            out.actions.append(PlannedAction(d.action, d.partition, d.range_start, d.range_end, d.reason, d.rows))
    return out


# -- optimize -------------------------------------------------------------------------------------------------------


def optimize(pm: ManagerState, *, run_id: str | None = None) -> OptimizeReport:
    """ANALYZE partitions whose statistics are stale, summarize new BRIN ranges, and REINDEX CONCURRENTLY
    B-tree indexes whose leaf density fell below the threshold (needs the pgstattuple extension, and a role
    that may execute ``pgstatindex``: a superuser or a member of ``pg_stat_scan_tables``; without them the
    report says so and no index is rebuilt). Registry row counts and sizes are refreshed."""
    cfg = pm.settings.maintenance
    report = OptimizeReport()
    with pm._connections.dedicated_connection(operation="optimize", autocommit=True) as conn:
        has_pgstattuple = _can_check_bloat(conn, report)
        for p in list_partitions(pm, "active"):
            if conn.execute("SELECT to_regclass(%s)", (p.name,)).fetchone() == (None,):
                continue
            _analyze_if_stale(conn, p, cfg, report)
            _maintain_indexes(conn, p, cfg, has_pgstattuple, report)
            _refresh_registry(conn, p, report, run_id)
    return report


def _can_check_bloat(conn: psycopg.Connection[Any], report: OptimizeReport) -> bool:
    """Whether ``pgstatindex`` may be called here; when not, ``report.bloat_check`` says why and how to enable it."""
    installed, executable = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pgstattuple'),"
        " coalesce(has_function_privilege(to_regprocedure('pgstatindex(regclass)'), 'EXECUTE'), false)"
    ).fetchone()  # type: ignore[misc]
    if not installed:
        report.bloat_check = "unavailable (CREATE EXTENSION pgstattuple to enable REINDEX of bloated indexes)"
    elif not executable:  # pgstattuple grants its functions to pg_stat_scan_tables only
        report.bloat_check = ("unavailable (this role may not execute pgstatindex: GRANT pg_stat_scan_tables TO "
                              "audit_maintainer to enable REINDEX of bloated indexes)")
    return bool(installed and executable)


def _analyze_if_stale(
    conn: psycopg.Connection[Any], p: PartitionInfo, cfg: MaintenanceSettings, report: OptimizeReport
) -> None:
    table = sql.Identifier(p.name)
    stats = conn.execute(
        "SELECT n_live_tup, n_mod_since_analyze, coalesce(last_analyze, last_autoanalyze) IS NULL"
        " FROM pg_stat_user_tables WHERE relid = %s::regclass", (p.name,)).fetchone()
    live, changed, never = stats if stats else (0, 0, True)
    if never and not live:  # activity counters are flushed lazily: look at the table itself
        live = 1 if conn.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(table)).fetchone() == (
            True,) else 0
    if (never and live) or changed > cfg.analyze_change_ratio * max(live, 1):
        t = time.perf_counter()
        conn.execute(sql.SQL("ANALYZE {}").format(table))
        report.steps.append(OptimizeStep(p.name, "analyze", p.name, _elapsed_ms(t),
                                         f"{changed} rows changed since the last analyze"))


def _maintain_indexes(
    conn: psycopg.Connection[Any], p: PartitionInfo, cfg: MaintenanceSettings, has_pgstattuple: bool,
    report: OptimizeReport,
) -> None:
    """Summarize new BRIN ranges; REINDEX CONCURRENTLY the B-trees whose leaf density fell below the threshold."""
    indexes = conn.execute(
        "SELECT c.relname, a.amname, pg_relation_size(c.oid) FROM pg_index i"
        " JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam"
        " WHERE i.indrelid = %s::regclass ORDER BY 1", (p.name,)).fetchall()
    for index, am, size in indexes:
        if am == "brin":
            t = time.perf_counter()
            (ranges,) = conn.execute("SELECT brin_summarize_new_values(%s::regclass)",
                                     (index,)).fetchone()  # type: ignore[misc]
            report.steps.append(OptimizeStep(p.name, "brin_summarize", index, _elapsed_ms(t),
                                             f"{ranges} new ranges summarized"))
        elif am == "btree" and has_pgstattuple and size >= cfg.reindex_min_bytes:
            (density,) = conn.execute("SELECT avg_leaf_density FROM pgstatindex(%s::regclass)",
                                      (index,)).fetchone()  # type: ignore[misc]
            if density < cfg.reindex_max_leaf_density:
                t = time.perf_counter()
                conn.execute(sql.SQL("REINDEX INDEX CONCURRENTLY {}").format(sql.Identifier(index)))
                report.steps.append(OptimizeStep(p.name, "reindex", index, _elapsed_ms(t),
                                                 f"leaf density {density:.1f}% < {cfg.reindex_max_leaf_density}%"))


def _refresh_registry(
    conn: psycopg.Connection[Any], p: PartitionInfo, report: OptimizeReport, run_id: str | None
) -> None:
    """Record the partition's estimated rows and size in the registry, and its optimize steps in the ledger."""
    t = time.perf_counter()
    with conn.transaction():
        conn.execute(
            "UPDATE audit_partitions SET row_count = greatest(c.reltuples, 0)::bigint,"
            " bytes = pg_total_relation_size(c.oid), last_optimized_at = now(), updated_at = now()"
            " FROM pg_class c WHERE c.oid = %s::regclass AND partition_name = %s", (p.name, p.name))
        steps = [asdict(s) for s in report.steps if s.partition == p.name]
        ledger.record(conn, "optimize", p.name, run_id=run_id, duration_ms=sum(s["duration_ms"] for s in steps),
                      details={"steps": steps})
    report.steps.append(OptimizeStep(p.name, "stats", p.name, _elapsed_ms(t), "registry refreshed"))
