"""Jobs and schedules of the partition lifecycle (every schedule in UTC).

=================================  ==================  ===========================================================
job                                schedule            what it does (through ``audit_db_core``)
=================================  ==================  ===========================================================
``partition_maintenance_job``      daily 00:15         premake the current + next N partitions, then rescue DEFAULT
``archive_job`` (asset job)        daily 01:00         archive each period the maintenance plan lists (past the
                                                       active window) — one run per period
``archive_verification_job``       daily 04:30         re-read every kept archive in full against the registry
                                                       (the hourly check reads manifests + one archive)
``retention_purge_job``            daily 02:00         retention purge; a dry run unless
                                                       ``AUDIT_PLATFORM_PURGE_EXECUTE=true``
``index_maintenance_job``          Monday 03:00        ANALYZE / BRIN summarize / REINDEX bloated indexes
``health_check_job``               every 5 minutes     the core health report; the run fails when unhealthy
``lifecycle_checks_job``           hourly at :40       the asset checks of ``audit_log_partition`` on their own
(asset job)                                            (integrity_verified runs in integrity_job instead)
``integrity_job``                  daily 00:45         seal the digests that are due, then verify the chain and
                                                       the windows of AUDIT_INTEGRITY__VERIFY_LOOKBACK
``compliance_summary_job``         2nd of the month    the compliance summary of the period that closed (asset
(asset job)                        06:00               ``compliance_summary``), a day late so late events are in
``subject_request_job``            none (launchpad)    GDPR: export one data subject's events, or erase the subject
                                                       (run config: kind, value or subject_id, field, output)
=================================  ==================  ===========================================================

Schedules start RUNNING when the code location loads, unless ``AUDIT_PLATFORM_SCHEDULES_ENABLED=false`` (read
once, at load). ``AUDIT_PLATFORM_PURGE_EXECUTE`` is read at each purge tick, so turning it on or off needs no
reload. Both accept ``true`` / ``false`` (any case); another value is a configuration error, never a guess.

Every op reports what it did as output metadata (Markdown tables) and passes the Dagster run id to the core,
which records it in the lifecycle ledger.
"""


import datetime as dt
import os
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import dagster as dg
from pydantic import Field

from audit_db_core import AuditError, ConfigurationError
from audit_db_core.config import partition_settings_from_env
from audit_db_core.partitions import CreateResult, bounds_for
from audit_platform.assets import audit_log_archive, audit_log_partition, compliance_summary, failure, md_table
from audit_platform.checks import elapsed_ms, integrity_metadata, integrity_verified
from audit_platform.partitions import PARTITIONS, key_for_period
from audit_platform.resources import AuditDatabaseResource

if TYPE_CHECKING:
    from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

TIMEZONE = "UTC"


def env_flag(name: str, default: bool) -> bool:
    """A boolean environment variable: ``true`` / ``false`` in any case; unset or empty gives ``default``.
    Anything else raises :class:`ConfigurationError` naming the variable."""
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("true", "false"):
        return raw == "true"
    raise ConfigurationError("settings", [(name, "must be true or false")])


#: Whether schedules start RUNNING (``AUDIT_PLATFORM_SCHEDULES_ENABLED``, read when the code location loads).
SCHEDULES_ENABLED = env_flag("AUDIT_PLATFORM_SCHEDULES_ENABLED", True)
DEFAULT_STATUS = dg.DefaultScheduleStatus.RUNNING if SCHEDULES_ENABLED else dg.DefaultScheduleStatus.STOPPED


def purge_executes() -> bool:
    """Whether the scheduled purge really drops partitions (``AUDIT_PLATFORM_PURGE_EXECUTE=true``), read now."""
    return env_flag("AUDIT_PLATFORM_PURGE_EXECUTE", False)


def _report_partitions(context: dg.OpExecutionContext, results: list[CreateResult]) -> None:
    """Partitions an op created are materializations of ``audit_log_partition``: say so, so the asset's status in
    the UI matches the database."""
    keys = set(PARTITIONS.get_partition_keys())
    for r in results:
        key = key_for_period(r.partition.start)
        if r.created and key in keys:
            context.log_event(dg.AssetMaterialization(
                asset_key="audit_log_partition", partition=key,
                metadata={"partition": r.name, "created": True, "rescued_rows": r.rescued_rows,
                          "duration_ms": r.duration_ms, "by": context.job_name},
            ))


def _create_table(results: list[CreateResult]) -> str:
    return md_table(
        ["partition", "start", "end", "created", "rescued rows", "ms"],
        [[r.name, f"{r.partition.start:%Y-%m-%d}", f"{r.partition.end:%Y-%m-%d}", "yes" if r.created else "existed",
          r.rescued_rows, r.duration_ms] for r in results],
    )


# -- partition maintenance ------------------------------------------------------------------------------------------


@dg.op(description="Make sure the current period and the next AUDIT_PARTITIONS__PREMAKE periods have partitions.")
def premake_partitions(context: dg.OpExecutionContext, audit_db: AuditDatabaseResource) -> dg.Output[list[str]]:
    """``PartitionManager.premake``: idempotent; creating a partition also moves its DEFAULT rows into it."""
    started = time.perf_counter()
    try:
        with audit_db.open() as db:
            results = db.partitions.premake(run_id=context.run_id)
    except AuditError as exc:
        raise failure(f"premake failed: {exc.message}", error_category=exc.category.value) from None
    created = [r for r in results if r.created]
    context.log.info(
        f"premake: {len(created)} created ({', '.join(r.name for r in created) or 'none'}), "
        f"{len(results) - len(created)} existed; {sum(r.rescued_rows for r in results)} rows rescued from DEFAULT"
    )
    _report_partitions(context, results)
    return dg.Output(
        [r.name for r in created],
        metadata={
            "created": len(created),
            "existing": len(results) - len(created),
            "rescued_rows": sum(r.rescued_rows for r in results),
            "duration_ms": elapsed_ms(started),
            "partitions": dg.MetadataValue.md(_create_table(results)),
        },
    )


@dg.op(
    ins={"after_premake": dg.In(dg.Nothing)},
    description="Give every period that has rows in the DEFAULT partition its partition, moving the rows in.",
)
def rescue_default_rows(context: dg.OpExecutionContext, audit_db: AuditDatabaseResource) -> dg.Output[list[str]]:
    """``PartitionManager.rescue_default``; rows of archived-and-detached periods stay and are reported."""
    started = time.perf_counter()
    try:
        with audit_db.open() as db:
            pm = db.partitions
            before = pm.default_ranges()
            results = pm.rescue_default(run_id=context.run_id)
            left = pm.default_ranges()
    except AuditError as exc:
        raise failure(f"rescue of DEFAULT rows failed: {exc.message}", error_category=exc.category.value) from None
    rescued = sum(r.rescued_rows for r in results)
    left_rows = sum(n for _, n in left)
    context.log.info(
        f"DEFAULT held {sum(n for _, n in before)} rows for {len(before)} period(s); {rescued} rescued into "
        f"{len(results)} partition(s); {left_rows} left"
    )
    if left_rows:
        context.log.warning(
            f"{left_rows} rows stay in DEFAULT: their periods' partitions are archived and cannot take rows "
            f"({', '.join(b.name for b, _ in left)})"
        )
    _report_partitions(context, results)
    return dg.Output(
        [r.name for r in results],
        metadata={
            "default_rows_before": sum(n for _, n in before),
            "rescued_rows": rescued,
            "default_rows_after": left_rows,
            "duration_ms": elapsed_ms(started),
            "partitions": dg.MetadataValue.md(_create_table(results)) if results else "none",
            "left_in_default": dg.MetadataValue.md(
                md_table(["period", "rows"], [[b.name, n] for b, n in left])) if left else "none",
        },
    )


@dg.job(
    description="Premake the partitions of the current and next periods, then rescue rows from DEFAULT.",
    tags={"audit/lifecycle": "creation"},
)
def partition_maintenance_job() -> None:
    """premake_partitions → rescue_default_rows."""
    rescue_default_rows(after_premake=premake_partitions())


partition_maintenance_schedule = dg.ScheduleDefinition(
    name="partition_maintenance_schedule",
    job=partition_maintenance_job,
    cron_schedule="15 0 * * *",
    execution_timezone=TIMEZONE,
    default_status=DEFAULT_STATUS,
    description="Daily at 00:15 UTC: premake partitions and rescue DEFAULT rows.",
)


# -- archival -------------------------------------------------------------------------------------------------------

archive_job = dg.define_asset_job(
    "archive_job",
    selection=[audit_log_archive],
    description="Archive partitions of audit_log (one period per run from the schedule; ranges from backfills).",
    tags={"audit/lifecycle": "archival"},
)


@dg.schedule(
    name="archive_schedule",
    job=archive_job,
    cron_schedule="0 1 * * *",
    execution_timezone=TIMEZONE,
    default_status=DEFAULT_STATUS,
    description="Daily at 01:00 UTC: one archive run per partition the maintenance plan lists for archival (active "
    "partitions past the active window) — never a period inside the window.",
)
def archive_schedule(
    context: dg.ScheduleEvaluationContext, audit_db: AuditDatabaseResource
) -> list[dg.RunRequest] | dg.SkipReason:
    """RunRequests for exactly the periods ``plan(now).of("archive")`` lists, or a SkipReason."""
    now = context.scheduled_execution_time or dt.datetime.now(dt.UTC)
    now = now.astimezone(dt.UTC)
    with audit_db.open() as db:
        actions = db.partitions.plan(now).of("archive")
    known = set(PARTITIONS.get_partition_keys(current_time=now))
    requests, outside = [], []
    for action in actions:
        key = key_for_period(action.start)
        if key not in known:
            outside.append(action.partition)
            continue
        requests.append(dg.RunRequest(
            partition_key=key,
            run_key=f"archive:{key}:{now:%Y-%m-%d}",
            tags={"audit/partition": action.partition},
        ))
    if outside:
        context.log.warning(
            f"{len(outside)} partition(s) due for archival lie before AUDIT_PARTITIONS__HISTORY_START and have no "
            f"Dagster partition: {', '.join(outside)} (archive them with `audit-platform partitions archive`)"
        )
    if not requests:
        return dg.SkipReason(
            f"nothing to archive at {now:%Y-%m-%d %H:%M} UTC: no active partition has left the active window"
            + (f" within the Dagster partitions ({len(outside)} older ones need the CLI)" if outside else "")
        )
    return requests


# -- archive verification -------------------------------------------------------------------------------------------


@dg.op(description="Re-read every kept archive in full (every file hashed and scanned) and compare it with the "
                   "registry's manifest SHA-256, row count and content digest; each verification is recorded in the "
                   "lifecycle ledger. The run fails when one does not verify.")
def verify_all_archives(context: dg.OpExecutionContext, audit_db: AuditDatabaseResource) -> dg.Output[dict[str, Any]]:
    """``PartitionManager.verify_archives(record=True)``: the full verification the hourly ``archives_verified``
    check spreads out (it re-reads one archive per hour, in rotation, and every manifest)."""
    started = time.perf_counter()
    try:
        with audit_db.open() as db:
            results = db.partitions.verify_archives(record=True, run_id=context.run_id)
    except AuditError as exc:
        raise failure(f"archive verification could not run: {exc.message}",
                      error_category=exc.category.value) from None
    bad = [(name, problems) for name, problems in results if problems]
    metadata: dict[str, Any] = {
        "archives": len(results),
        "failed": len(bad),
        "duration_ms": elapsed_ms(started),
        "results": dg.MetadataValue.md(md_table(
            ["partition", "result"], [[n, "; ".join(p) or "verified"] for n, p in results])) if results
        else "no archived partitions",
    }
    if bad:
        raise failure(f"{len(bad)} of {len(results)} archive(s) do not verify: "
                      + "; ".join(f"{n}: {'; '.join(p)}" for n, p in bad[:5]), **metadata)
    context.log.info(f"{len(results)} archive(s) re-read in full and verified")
    return dg.Output({"archives": len(results), "failed": 0}, metadata=metadata)


@dg.job(description="Re-read every kept archive in full and verify it against the registry (ledgered); fails on "
                    "any archive that does not verify.", tags={"audit/lifecycle": "archival"})
def archive_verification_job() -> None:
    """verify_all_archives."""
    verify_all_archives()


archive_verification_schedule = dg.ScheduleDefinition(
    name="archive_verification_schedule",
    job=archive_verification_job,
    cron_schedule="30 4 * * *",
    execution_timezone=TIMEZONE,
    default_status=DEFAULT_STATUS,
    description="Daily at 04:30 UTC: re-read every kept archive in full (the hourly check reads manifests and one "
    "archive in rotation).",
)


# -- retention purge ------------------------------------------------------------------------------------------------


class PurgeConfig(dg.Config):  # type: ignore[misc]
    """Run config of ``retention_purge``: a dry run unless ``dry_run`` is false."""

    dry_run: bool = Field(
        default=True,
        description="report what would be purged and why, change nothing (the default); false drops partitions "
        "past retention whose archive verifies and that are not on legal hold",
    )


@dg.op(description="Retention purge: drop partitions past retention (archive re-verified, no legal hold), delete "
                   "archives past the archive retention. A dry run by default.")
def retention_purge(
    context: dg.OpExecutionContext, config: PurgeConfig, audit_db: AuditDatabaseResource
) -> dg.Output[dict[str, Any]]:
    """``PartitionManager.purge``; the decisions (purge / keep / delete_archive, and why) as a Markdown table.

    Run config can ask for ``dry_run: false`` only where the deployment enabled executing purges
    (``AUDIT_PLATFORM_PURGE_EXECUTE=true``): a launchpad user cannot drop partitions the deployment keeps."""
    if not config.dry_run and not purge_executes():
        raise failure("retention purge refused: run config asks to execute (dry_run: false), but this deployment "
                      "runs purges as dry runs only; set AUDIT_PLATFORM_PURGE_EXECUTE=true to allow it",
                      error_category="configuration")
    started = time.perf_counter()
    try:
        with audit_db.open() as db:
            report = db.partitions.purge(dry_run=config.dry_run, run_id=context.run_id)
    except AuditError as exc:
        raise failure(f"retention purge failed: {exc.message}", error_category=exc.category.value) from None
    counts = Counter(d.action for d in report.decisions)
    verb = "would" if report.dry_run else "did"
    context.log.info(
        f"retention purge ({'dry run' if report.dry_run else 'executed'}): {verb} purge "
        f"{counts.get('purge', 0)}, {verb} delete {counts.get('delete_archive', 0)} archive(s), keep "
        f"{counts.get('keep', 0)}"
    )
    table = md_table(
        ["partition", "action", "reason", "range", "retained until", "rows"],
        [[d.partition, d.action, d.reason, f"{d.range_start:%Y-%m-%d} – {d.range_end:%Y-%m-%d}",
          f"{d.retained_until:%Y-%m-%d}" if d.retained_until else "", d.rows] for d in report.decisions],
    )
    summary = {"dry_run": report.dry_run, "purged": report.purged, "archives_deleted": report.archives_deleted,
               **{f"decisions_{k}": v for k, v in counts.items()}}
    return dg.Output(
        summary,
        metadata={
            "dry_run": report.dry_run,
            "purge": counts.get("purge", 0),
            "delete_archive": counts.get("delete_archive", 0),
            "keep": counts.get("keep", 0),
            "purged_partitions": len(report.purged),
            "archives_deleted_count": len(report.archives_deleted),
            "duration_ms": elapsed_ms(started),
            "purged": ", ".join(report.purged) or "none",
            "archives_deleted": ", ".join(report.archives_deleted) or "none",
            "decisions": dg.MetadataValue.md(table) if report.decisions else "no partitions",
        },
    )


@dg.job(description="Retention purge (run config ops.retention_purge.config.dry_run, true by default).",
        tags={"audit/lifecycle": "cleanup"})
def retention_purge_job() -> None:
    """retention_purge."""
    retention_purge()


def purge_run_config(execute: bool) -> dict[str, Any]:
    """The run config of ``retention_purge_job``: ``dry_run`` false only when ``execute``."""
    return {"ops": {"retention_purge": {"config": {"dry_run": not execute}}}}


@dg.schedule(
    name="retention_purge_schedule",
    job=retention_purge_job,
    cron_schedule="0 2 * * *",
    execution_timezone=TIMEZONE,
    default_status=DEFAULT_STATUS,
    description="Daily at 02:00 UTC: retention purge — a dry run unless AUDIT_PLATFORM_PURGE_EXECUTE=true.",
)
def retention_purge_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    """One run; ``dry_run`` is false only when ``AUDIT_PLATFORM_PURGE_EXECUTE=true`` at this tick."""
    execute = purge_executes()
    return dg.RunRequest(run_config=purge_run_config(execute), tags={"audit/dry_run": str(not execute).lower()})


# -- index maintenance ----------------------------------------------------------------------------------------------


@dg.op(description="ANALYZE stale partitions, summarize new BRIN ranges, REINDEX CONCURRENTLY bloated B-trees.")
def optimize_indexes(context: dg.OpExecutionContext, audit_db: AuditDatabaseResource) -> dg.Output[dict[str, Any]]:
    """``PartitionManager.optimize``; every step (partition, action, index, duration) as a Markdown table."""
    started = time.perf_counter()
    try:
        with audit_db.open() as db:
            report = db.partitions.optimize(run_id=context.run_id)
    except AuditError as exc:
        raise failure(f"index maintenance failed: {exc.message}", error_category=exc.category.value) from None
    counts = Counter(s.action for s in report.steps)
    context.log.info(f"optimize: {dict(counts)}; bloat check: {report.bloat_check}")
    table = md_table(["partition", "action", "target", "ms", "detail"],
                     [[s.partition, s.action, s.target, s.duration_ms, s.detail] for s in report.steps])
    return dg.Output(
        dict(counts),
        metadata={
            "partitions": len({s.partition for s in report.steps}),
            "analyze": counts.get("analyze", 0),
            "brin_summarize": counts.get("brin_summarize", 0),
            "reindex": counts.get("reindex", 0),
            "duration_ms": elapsed_ms(started),
            "bloat_check": report.bloat_check,
            "steps": dg.MetadataValue.md(table) if report.steps else "no active partitions",
        },
    )


@dg.job(description="Index and statistics maintenance of the active partitions.",
        tags={"audit/lifecycle": "maintenance"})
def index_maintenance_job() -> None:
    """optimize_indexes."""
    optimize_indexes()


index_maintenance_schedule = dg.ScheduleDefinition(
    name="index_maintenance_schedule",
    job=index_maintenance_job,
    cron_schedule="0 3 * * 1",
    execution_timezone=TIMEZONE,
    default_status=DEFAULT_STATUS,
    description="Weekly, Monday 03:00 UTC: index and statistics maintenance.",
)


# -- health ---------------------------------------------------------------------------------------------------------


def health_numbers(report: Any) -> dict[str, int | float]:
    """The numbers of a :class:`~audit_db_core.health.HealthReport` Dagster plots run after run, under stable keys:
    each replica's lag (``<replica>_lag_bytes`` / ``_lag_seconds``, when measured), the rows in DEFAULT, the
    breakers not closed and how often this process's breakers opened, and this process's query-cache hit ratio
    (over ``cache_lookups`` lookups: summed over every process sharing the Redis — ``QueryCache.fleet_stats()`` —
    else the health run's own cache)."""
    numbers: dict[str, int | float] = {}
    for name, component in report.components.items():
        for unit in ("bytes", "seconds"):
            value = component.details.get(f"lag_{unit}")
            if name.startswith("replica") and isinstance(value, (int, float)) and not isinstance(value, bool):
                numbers[f"{name}_lag_{unit}"] = value
    if isinstance(report.partitions.get("default_rows"), int):
        numbers["default_rows"] = report.partitions["default_rows"]
    if isinstance(report.partitions.get("missing"), list):
        numbers["partitions_missing"] = len(report.partitions["missing"])
    for pool, stats in report.pools.items():  # what db.client.connection.* reports, per pool
        for key in ("in_use", "waiting", "max_size", "acquisitions_failed"):
            if isinstance(stats.get(key), int):
                numbers[f"pool_{pool}_{key}"] = stats[key]
    numbers["components_not_healthy"] = sum(1 for c in report.components.values() if not c.healthy)
    numbers["breakers_not_closed"] = sum(1 for b in report.breakers.values() if b.get("state") != "closed")
    numbers["breaker_opens"] = sum(int(b.get("opened", 0)) for b in report.breakers.values())
    # The fleet's figure (every process sharing the Redis publishes its counts), else this run's own cache.
    cache = report.cache.get("fleet") or report.cache
    numbers["cache_lookups"] = int(cache.get("lookups", 0))
    numbers["cache_hit_ratio"] = float(cache.get("hit_ratio", 0.0))
    return numbers


@dg.op(description="The core health report (primary, schema, replicas and their lag, Redis, pools); fails the run "
                   "when anything is unhealthy.")
def health_report(context: dg.OpExecutionContext, audit_db: AuditDatabaseResource) -> dg.Output[str]:
    """``AuditDatabase.health()``; an unreachable primary or a schema behind the package fails the step; a lagging
    replica or an unreachable Redis only degrades it (logged as a warning)."""
    started = time.perf_counter()
    try:
        with audit_db.open() as db:
            report = db.health()
    except AuditError as exc:
        raise failure(
            f"unhealthy: {exc.message}", component="primary", error_category=exc.category.value
        ) from None
    table = md_table(
        ["component", "healthy", "error", "action"],
        [[name, "yes" if c.healthy else "NO", c.error or "", "" if c.healthy else c.action or ""]
         for name, c in report.components.items()],
    )
    metadata: dict[str, Any] = {
        "status": report.status,
        "duration_ms": elapsed_ms(started),
        "schema_version": report.schema_version if report.schema_version is not None else -1,
        **health_numbers(report),
        "components": dg.MetadataValue.md(table),
        "report": dg.MetadataValue.json(report.to_dict()),
    }
    if not report.healthy:
        bad = [f"{name}: {c.error or 'unhealthy'}" + (f" (fix: {c.action})" if c.action else "")
               for name, c in report.components.items() if not c.healthy and c.critical]
        raise failure("unhealthy: " + "; ".join(bad), **metadata)
    if report.degraded:  # replicas / Redis: every read and write still goes to the primary; WARN checks show it
        weak = [f"{name}: {c.error} (fix: {c.action})" for name, c in report.components.items() if not c.healthy]
        context.log.warning("degraded: " + "; ".join(weak))
    else:
        context.log.info(f"healthy: {', '.join(report.components)}")
    return dg.Output(report.status, metadata=metadata)


@dg.job(description="Run the core health report; the run fails (and alerts) when a component is unhealthy.",
        tags={"audit/lifecycle": "health"})
def health_check_job() -> None:
    """health_report."""
    health_report()


health_check_schedule = dg.ScheduleDefinition(
    name="health_check_schedule",
    job=health_check_job,
    cron_schedule="*/5 * * * *",
    execution_timezone=TIMEZONE,
    default_status=DEFAULT_STATUS,
    description="Every 5 minutes: the health report.",
)


# The asset checks run with every audit_log_partition materialization; this job runs them on their own, hourly,
# so a problem (an archive that no longer verifies, rows piling up in DEFAULT) fails a run and alerts even on days
# when nothing is materialized.
lifecycle_checks_job = dg.define_asset_job(
    name="lifecycle_checks_job",
    # integrity_verified re-reads the lookback's rows: it runs daily in integrity_job, not every hour here.
    selection=dg.AssetSelection.checks_for_assets(audit_log_partition) - dg.AssetSelection.checks(integrity_verified),
    description="Run the lifecycle asset checks (coverage, DEFAULT, archives, replicas, Redis, breakers, ledger) on "
    "their own; integrity verification runs daily in integrity_job.",
    tags={"audit/lifecycle": "checks"},
)

lifecycle_checks_schedule = dg.ScheduleDefinition(
    name="lifecycle_checks_schedule",
    job=lifecycle_checks_job,
    cron_schedule="40 * * * *",
    execution_timezone=TIMEZONE,
    default_status=DEFAULT_STATUS,
    description="Hourly at :40: the lifecycle asset checks.",
)


# -- compliance reports ---------------------------------------------------------------------------------------------

compliance_summary_job = dg.define_asset_job(
    "compliance_summary_job",
    selection=[compliance_summary],
    description="The per-organization HIPAA compliance summary of a period (Parquet + Markdown metadata).",
    tags={"audit/reports": "compliance_summary"},
)


def closed_period_key(now: dt.datetime) -> str:
    """The partition key of the last period that ended at or before ``now`` (UTC)."""
    interval = partition_settings_from_env().interval
    current = bounds_for(now.astimezone(dt.UTC), interval)
    return key_for_period(bounds_for(current.start - dt.timedelta(microseconds=1), interval).start)


@dg.schedule(
    name="compliance_summary_schedule",
    job=compliance_summary_job,
    cron_schedule="0 6 2 * *",
    execution_timezone=TIMEZONE,
    default_status=DEFAULT_STATUS,
    description="Monthly, on the 2nd at 06:00 UTC: the compliance summary of the period that has just closed (a day "
    "after it ends, so events written late are counted). With a quarterly or yearly interval it asks for the closed "
    "period once (the run key repeats until the next period closes).",
)
def compliance_summary_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
    """One run for the period that closed last, unless it lies before the first Dagster partition."""
    now = (context.scheduled_execution_time or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    key = closed_period_key(now)
    if key not in set(PARTITIONS.get_partition_keys(current_time=now)):
        return dg.SkipReason(f"the period {key} lies before AUDIT_PARTITIONS__HISTORY_START: no Dagster partition")
    return dg.RunRequest(partition_key=key, run_key=f"compliance_summary:{key}",
                         tags={"audit/reports": "compliance_summary"})


# -- integrity --------------------------------------------------------------------------------------------------------


@dg.op(description="Seal signed digests: every window closed since the last seal, and a supplement for each sealed "
                   "window that received late events (audit_db_core.integrity). Needs AUDIT_INTEGRITY__SIGNING_KEY.")
def seal_digests(context: dg.OpExecutionContext, audit_db: AuditDatabaseResource) -> dg.Output[dict[str, Any]]:
    """``IntegrityManager.seal``; the new digests (and the chain head to publish) as metadata."""
    started = time.perf_counter()
    try:
        with audit_db.open() as db:
            result = db.integrity.seal(run_id=context.run_id)
    except AuditError as exc:
        raise failure(f"seal failed: {exc.message}", error_category=exc.category.value) from None
    if result.status in ("held_back", "busy"):
        context.log.warning(f"seal {result.status}: {result.reason}")
    else:
        context.log.info(f"seal {result.status}: {len(result.digests)} digest(s), {result.events} event(s)")
    rows = [[d.chain_seq, d.window_start.date(), d.seq, d.event_count, d.digest_hash] for d in result.digests]
    return dg.Output(
        {"status": result.status, "digests": len(result.digests), "events": result.events},
        metadata={
            "status": result.status,
            "digests": len(result.digests),
            "events": result.events,
            "supplements": result.supplements,
            "duration_ms": elapsed_ms(started),
            "reason": result.reason or "none",
            "cutoff": str(result.cutoff) if result.cutoff else "none",
            "head_chain_seq": result.head_chain_seq if result.head_chain_seq is not None else -1,
            "head_digest_hash": result.head_digest_hash or "",
            "new_digests": dg.MetadataValue.md(md_table(["#", "window", "seq", "events", "digest_hash"], rows))
            if rows else "none",
        },
    )


class VerifyIntegrityConfig(dg.Config):  # type: ignore[misc]
    """Run config of ``verify_integrity``."""

    full: bool = Field(default=False, description="re-read every sealed window, not only AUDIT_INTEGRITY__VERIFY_LOOKBACK")


@dg.op(ins={"after_seal": dg.In(dg.Nothing)},
       description="Verify the digest chain, and the rows and archives of the lookback (or everything with full); "
                   "the run fails on any problem.")
def verify_integrity(
    context: dg.OpExecutionContext, config: VerifyIntegrityConfig, audit_db: AuditDatabaseResource
) -> dg.Output[str]:
    """``IntegrityManager.verify``; problems located (kind, window, event key, source) as a Markdown table."""
    started = time.perf_counter()
    try:
        with audit_db.open() as db:
            since = None if config.full else db.integrity.lookback_start()
            report = db.integrity.verify(since, run_id=context.run_id)
    except AuditError as exc:
        raise failure(f"integrity verification could not run: {exc.message}",
                      error_category=exc.category.value) from None
    metadata = {**integrity_metadata(report), "duration_ms": elapsed_ms(started)}
    if report.status == "failed":
        raise failure(f"integrity verification failed: {report.summary()}", **metadata)
    if report.status == "incomplete":
        context.log.warning(report.summary())
    else:
        context.log.info(report.summary())
    return dg.Output(report.status, metadata=metadata)


@dg.job(description="Seal the digests that are due, then verify the chain and the recent windows.",
        tags={"audit/lifecycle": "integrity"})
def integrity_job() -> None:
    """seal_digests → verify_integrity."""
    verify_integrity(after_seal=seal_digests())


integrity_schedule = dg.ScheduleDefinition(
    name="integrity_schedule",
    job=integrity_job,
    cron_schedule="45 0 * * *",
    execution_timezone=TIMEZONE,
    default_status=DEFAULT_STATUS,
    description="Daily at 00:45 UTC: seal yesterday's window (and late events), then verify — before the archival "
    "run at 01:00, so archives carry their digests.",
)

# -- GDPR subject requests ----------------------------------------------------------------------------------------


class SubjectRequestConfig(dg.Config):  # type: ignore[misc]
    """Run config of ``subject_request``: one export or erasure of one data subject."""

    kind: Literal["export", "erase"] = Field(description="export: everything the log holds about the subject; "
                                             "erase: delete the subject's pseudonym mapping (irreversible)")
    value: str = Field(default="", description="the identifier (e.g. a patient id). Dagster keeps run config with "
                       "the run: prefer subject_id (from an earlier export) for an erasure")
    subject_id: str = Field(default="", description="the subject id, instead of value")
    field: str = Field(default="", description="principal_id, target_resource_id or details.<key>, comma-separated; "
                       "empty: every field in AUDIT_PRIVACY__PSEUDONYMIZE")
    output: str = Field(default="", description="export: the JSON file to write, inside the export root "
                        "AUDIT_REPORTS__DIRECTORY (a path outside it is refused); empty: "
                        "AUDIT_REPORTS__DIRECTORY/subject-exports/<run id>.json")
    requested_by: str = Field(default="", description="recorded in the ledger (the request's author or ticket)")


@dg.op(description="GDPR: export everything the log holds about one data subject, or erase the subject. Metadata "
                   "and logs carry subject ids and counts, never the identifier.")
def subject_request(context: dg.OpExecutionContext, config: SubjectRequestConfig,
                    audit_db: AuditDatabaseResource) -> dg.Output[dict[str, Any]]:
    """``PrivacyManager.export_subject`` / ``erase_subject``, recorded in the lifecycle ledger with the run id."""
    request = {"value": config.value or None, "subject_id": config.subject_id or None,
               "fields": [f.strip() for f in config.field.split(",") if f.strip()] or None,
               "run_id": context.run_id, "requested_by": config.requested_by or None}
    try:
        with audit_db.open() as db:
            if config.kind == "export":
                output = export_path(db.settings, config.output, context.run_id)
                export = db.privacy.export_subject(**request)
                path, size, digest = export.write(output)
            else:
                result = db.privacy.erase_subject(**request)
    except AuditError as exc:
        raise failure(f"subject {config.kind} failed: {exc.message}", error_category=exc.category.value) from None
    if config.kind == "export":
        metadata: dict[str, Any] = {
            "found": export.found, "subject_ids": ", ".join(export.subject_ids) or "none",
            "events": len(export.events), "events_from_archives": export.events_from_archives,
            "complete": export.complete, "unreadable": len(export.unreadable), "path": str(path), "bytes": size,
            "sha256": digest}
        summary = {"found": export.found, "events": len(export.events), "path": str(path)}
    else:
        metadata = {
            "found": result.found, "subject_ids": ", ".join(result.subject_ids) or "none",
            "events_unlinked": result.events_unlinked, "events_in_clear": result.events_in_clear,
            "unreadable": len(result.unreadable), "vacuumed": result.vacuumed}
        summary = {"found": result.found, "events_unlinked": result.events_unlinked}
    if metadata["found"]:
        context.log.info(f"subject {config.kind}: subject(s) {metadata['subject_ids']}")
    else:
        context.log.warning(f"subject {config.kind}: no data subject matched; nothing was "
                            f"{'exported' if config.kind == 'export' else 'erased'}")
    return dg.Output(summary, metadata=metadata)


def export_path(settings: Any, output: str, run_id: str) -> Path:
    """Where a subject export from run config goes: inside the export root (``AUDIT_REPORTS__DIRECTORY``), never
    outside it — a launchpad user cannot write PHI to a path of their choosing. ``output`` relative to the root
    (or absolute, within it); empty: ``<root>/subject-exports/<run id>.json``."""
    directory = settings.reports.directory
    if not directory:
        raise ConfigurationError("subject_request", [("output", "AUDIT_REPORTS__DIRECTORY (the export root) is not "
                                                      "set: say where exports may go")])
    root = Path(directory).resolve()
    target = (root / (output or os.path.join("subject-exports", f"{run_id}.json"))).resolve()
    if not target.is_relative_to(root) or target == root:
        raise ConfigurationError("subject_request", [("output", "must be a file inside the export root "
                                                      "AUDIT_REPORTS__DIRECTORY")])
    return target


@dg.job(description="GDPR subject request from the launchpad: ops.subject_request.config {kind: export|erase, "
                    "value or subject_id, field, output}.", tags={"audit/privacy": "subject_request"})
def subject_request_job() -> None:
    """subject_request."""
    subject_request()


JOBS: "list[dg.JobDefinition | UnresolvedAssetJobDefinition]" = [
    partition_maintenance_job,
    archive_job,
    archive_verification_job,
    retention_purge_job,
    index_maintenance_job,
    health_check_job,
    lifecycle_checks_job,
    integrity_job,
    compliance_summary_job,
    subject_request_job,
]
SCHEDULES: list[dg.ScheduleDefinition] = [
    partition_maintenance_schedule,
    archive_schedule,
    archive_verification_schedule,
    retention_purge_schedule,
    index_maintenance_schedule,
    health_check_schedule,
    lifecycle_checks_schedule,
    integrity_schedule,
    compliance_summary_schedule,
]
