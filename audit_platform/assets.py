"""The partitioned lifecycle assets: one ``audit_log`` partition per Dagster partition, and its archive.

* ``audit_log_partition`` — the PostgreSQL partition of the period exists (created with the parent's indexes,
  DEFAULT rows of its range moved into it). Materializing an existing one changes nothing and reports it.
* ``audit_log_archive`` — the partition is exported to verified zstd Parquet with a manifest and made read-only
  (or detached), once the period has left the active window.
* ``compliance_summary`` — the period's HIPAA compliance summary per organization, as Parquet under
  ``AUDIT_REPORTS__DIRECTORY`` (one run per period; the monthly schedule asks for each period once it has closed).

The two lifecycle assets take a *range* of partitions in one run (``BackfillPolicy.multi_run(12)``: a 24-month backfill is two runs
per asset) and loop over ``context.partition_keys``. A single-partition run reports that partition's numbers as
materialization metadata; a range run reports totals plus a per-partition table, and one observation per
partition with its own numbers. Every core call gets the Dagster run id, which the lifecycle ledger records.
"""


import datetime as dt
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import dagster as dg

from audit_db_core import AuditError
from audit_db_core.interfaces import PartitionLifecycle
from audit_db_core.errors import redact
from audit_db_core.partitions import ArchiveResult, CreateResult, PartitionBounds, PartitionStats, resolve_period
from audit_platform.partitions import PARTITIONS, period_for_key
from audit_platform.resources import AuditDatabaseResource

GROUP = "audit_log_lifecycle"
BACKFILL_POLICY = dg.BackfillPolicy.multi_run(max_partitions_per_run=12)


# -- helpers --------------------------------------------------------------------------------------------------------


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (cells' ``|`` escaped) for Dagster metadata."""

    def cell(value: Any) -> str:
        return str("" if value is None else value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def failure(message: str, **metadata: Any) -> dg.Failure:
    """A ``dg.Failure`` whose description (and metadata) have passwords masked."""
    return dg.Failure(
        description=redact(message),
        metadata={k: (redact(v) if isinstance(v, str) else v) for k, v in metadata.items()},
        allow_retries=False,
    )


def _bounds(pm: PartitionLifecycle, key: str) -> PartitionBounds:
    return resolve_period(period_for_key(key), pm.interval)


def _report(
    context: dg.AssetExecutionContext,
    per_partition: list[tuple[str, dict[str, Any]]],
    totals: Callable[[list[dict[str, Any]]], dict[str, Any]],
) -> dict[str, Any]:
    """Metadata for the materialization: the partition's own numbers in a single-partition run; totals and a
    per-partition table in a range run, plus one observation per partition carrying its own numbers."""
    if len(per_partition) == 1:
        return per_partition[0][1]
    for key, values in per_partition:
        context.log_event(dg.AssetObservation(asset_key=context.asset_key, partition=key, metadata=values))
    metadata = totals([v for _, v in per_partition])
    scalar = [k for k, v in per_partition[0][1].items() if isinstance(v, (int, float, bool, str)) and "/" not in k]
    metadata["partitions"] = dg.MetadataValue.md(
        md_table(["key", *scalar], [[key, *(values[k] for k in scalar)] for key, values in per_partition])
    )
    metadata["partition_count"] = len(per_partition)
    return metadata


def _record_done(context: dg.AssetExecutionContext, done: list[tuple[str, dict[str, Any]]]) -> None:
    """When a range run fails part-way, the partitions finished before the failure are still materialized."""
    for key, values in done:
        context.log_event(dg.AssetMaterialization(asset_key=context.asset_key, partition=key, metadata=values))


# -- audit_log_partition --------------------------------------------------------------------------------------------


def partition_metadata(result: CreateResult, stats: PartitionStats) -> dict[str, Any]:
    """The metadata of one ``audit_log_partition`` partition."""
    return {
        "partition": stats.name,
        "state": stats.state,
        "created": result.created,
        "rescued_rows": result.rescued_rows,
        "rows": stats.rows,
        "dagster/row_count": stats.rows,
        "bytes": stats.bytes,
        "indexes": len(stats.indexes),
        "duration_ms": result.duration_ms,
        "index_table": dg.MetadataValue.md(
            md_table(
                ["index", "method", "bytes", "valid"],
                [[i.name, i.method, i.bytes, "yes" if i.valid else "NO"] for i in stats.index_details],
            )
        ),
    }


@dg.asset(
    partitions_def=PARTITIONS,
    backfill_policy=BACKFILL_POLICY,
    group_name=GROUP,
    kinds={"postgres"},
    description=(
        "The PostgreSQL partition of audit_log for this period, with the parent's indexes. Creating it moves any "
        "rows of its range out of the DEFAULT partition (rescue). Idempotent: an existing partition is reported, "
        "not changed. Metadata: partition name, created, rescued_rows, rows, bytes, indexes."
    ),
)
def audit_log_partition(context: dg.AssetExecutionContext, audit_db: AuditDatabaseResource) -> dg.MaterializeResult:
    """Create (or find) the partition of each period in the run and report what it holds."""
    done: list[tuple[str, dict[str, Any]]] = []
    try:
        with audit_db.open() as db:
            pm = db.partitions
            for key in context.partition_keys:
                result = pm.create_partition(_bounds(pm, key), run_id=context.run.run_id)
                stats = pm.stats(result.partition.start)
                values = partition_metadata(result, stats)
                done.append((key, values))
                context.log.info(
                    f"{stats.name}: {'created' if result.created else 'already existed'}, "
                    f"{result.rescued_rows} rows rescued from DEFAULT, {stats.rows} rows, {stats.bytes} bytes"
                )
    except AuditError as exc:
        _record_done(context, done)
        raise failure(f"audit_log_partition failed: {exc.message}", error_category=exc.category.value) from None

    def totals(values: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "created": any(v["created"] for v in values),
            "created_partitions": sum(1 for v in values if v["created"]),
            "rescued_rows": sum(v["rescued_rows"] for v in values),
            "rows": sum(v["rows"] for v in values),
            "bytes": sum(v["bytes"] for v in values),
            "duration_ms": round(sum(v["duration_ms"] for v in values), 3),
        }

    return dg.MaterializeResult(metadata=_report(context, done, totals))


# -- audit_log_archive ----------------------------------------------------------------------------------------------


def archive_metadata(result: ArchiveResult) -> dict[str, Any]:
    """The metadata of one ``audit_log_archive`` partition (the archive URI with any credentials masked)."""
    values: dict[str, Any] = {
        "partition": result.partition,
        "status": result.status,
        "rows": result.rows,
        "dagster/row_count": result.rows,
        "bytes": result.bytes,
        "archive_uri": redact(result.archive_uri),
        "content_digest": result.content_digest,
        "manifest_sha256": result.manifest_sha256,
        "files": result.files,
        "archive_bytes": result.archive_bytes,
        "detached": result.detached,
        "duration_ms": result.duration_ms,
    }
    if result.archive_bytes:
        # The partition's size in PostgreSQL (table, indexes, TOAST) over the archive's Parquet files.
        values["compression_ratio"] = round(result.bytes / result.archive_bytes, 2)
    return values


@dg.asset(
    partitions_def=PARTITIONS,
    deps=[audit_log_partition],
    backfill_policy=BACKFILL_POLICY,
    group_name=GROUP,
    kinds={"parquet"},
    description=(
        "The verified archive of this period's partition: zstd Parquet plus a manifest (row count, time range, "
        "SHA-256 per file, content digest) under AUDIT_ARCHIVE__ROOT_URI, read back and checked against the "
        "database before the partition becomes read-only (or is detached). Only periods past the active window "
        "(AUDIT_PARTITIONS__ACTIVE_WINDOW, 90 days by default) can be archived: materializing a period still "
        "inside it fails and says until when it stays active. The archive schedule requests only periods the "
        "core's maintenance plan lists for archival, so it never asks for one inside the window. Re-running an "
        "archived period is a no-op."
    ),
)
def audit_log_archive(context: dg.AssetExecutionContext, audit_db: AuditDatabaseResource) -> dg.MaterializeResult:
    """Archive each period of the run; a period still inside the active window fails the run before any work."""
    done: list[tuple[str, dict[str, Any]]] = []
    try:
        with audit_db.open() as db:
            pm = db.partitions
            periods = [(key, _bounds(pm, key)) for key in context.partition_keys]
            now = dt.datetime.now(dt.UTC)
            cutoff = pm.archive_cutoff(now)
            active = [(key, b) for key, b in periods if b.end > cutoff]
            if active:
                window = pm.settings.partitions.active_window
                lines = [
                    f"{b.name} is still inside the active window ({window}) until "
                    f"{pm.archivable_from(b):%Y-%m-%d %H:%M} UTC and cannot be archived before then"
                    for _, b in active
                ]
                raise failure(
                    "; ".join(lines) + ". Nothing was archived by this run; the archive schedule requests a period "
                    "once it has left the active window.",
                    active_partitions=", ".join(b.name for _, b in active),
                    archivable_from=", ".join(f"{pm.archivable_from(b):%Y-%m-%d %H:%M} UTC" for _, b in active),
                )
            for key, bounds in periods:
                result = pm.archive(bounds, run_id=context.run.run_id)
                values = archive_metadata(result)
                done.append((key, values))
                context.log.info(
                    f"{result.partition}: {result.status}, {result.rows} rows, {result.files} files, "
                    f"{result.archive_bytes} archive bytes, digest {result.content_digest[:12]}…"
                )
    except AuditError as exc:
        _record_done(context, done)
        raise failure(f"audit_log_archive failed: {exc.message}", error_category=exc.category.value) from None

    def totals(values: list[dict[str, Any]]) -> dict[str, Any]:
        archive_bytes = sum(v["archive_bytes"] for v in values)
        out: dict[str, Any] = {
            "rows": sum(v["rows"] for v in values),
            "bytes": sum(v["bytes"] for v in values),
            "files": sum(v["files"] for v in values),
            "archive_bytes": archive_bytes,
            "duration_ms": round(sum(v["duration_ms"] for v in values), 3),
        }
        if archive_bytes:
            out["compression_ratio"] = round(out["bytes"] / archive_bytes, 2)
        return out

    return dg.MaterializeResult(metadata=_report(context, done, totals))


# -- compliance_summary ---------------------------------------------------------------------------------------------

REPORTS_GROUP = "compliance_reports"
#: Organizations listed in the Markdown table of the metadata (the Parquet file has them all).
SUMMARY_TABLE_ROWS = 100
_SUMMARY_COUNTS = ("events", "failures", "phi_accesses", "after_hours", "break_glass", "disclosures")


def summary_path(directory: str, key: str) -> Path:
    """Where the ``compliance_summary`` of partition ``key`` is written: ``<directory>/compliance_summary/<key>.parquet``."""
    return Path(directory).expanduser() / "compliance_summary" / f"{key}.parquet"


def summary_markdown(frame: Any) -> str:
    """The per-organization summary as a Markdown table (at most ``SUMMARY_TABLE_ROWS`` organizations)."""
    if frame.empty:
        return "No audit events in this period."
    header = ["organization", "events", "failures", "PHI accesses", "after hours", "break-glass", "disclosures",
              "principals"]
    rows = [["(no organization)" if not isinstance(r.organization_id, str) else r.organization_id, r.events,
             r.failures, r.phi_accesses, r.after_hours, r.break_glass, r.disclosures, r.principals]
            for r in frame.head(SUMMARY_TABLE_ROWS).itertuples()]
    table = md_table(header, rows)
    if len(frame) > SUMMARY_TABLE_ROWS:
        table += f"\n\n… and {len(frame) - SUMMARY_TABLE_ROWS} more organizations (all are in the Parquet file)."
    return table


@dg.asset(
    partitions_def=PARTITIONS,
    deps=[audit_log_partition],
    group_name=REPORTS_GROUP,
    kinds={"parquet"},
    description=(
        "The HIPAA compliance summary of this period, one row per organization: events, failures, PHI accesses, "
        "after-hours, break-glass and disclosure events, distinct principals (audit_db_core.reports). Written as "
        "Parquet to AUDIT_REPORTS__DIRECTORY/compliance_summary/<partition key>.parquet and recorded in the "
        "lifecycle ledger; the metadata holds the totals and a Markdown table. A period that has not started "
        "fails; one still open is summarized so far and marked complete=false."
    ),
)
def compliance_summary(context: dg.AssetExecutionContext, audit_db: AuditDatabaseResource) -> dg.MaterializeResult:
    """``db.reports.compliance_summary`` of the partition's period, exported to Parquet."""
    key = context.partition_key
    window = context.partition_time_window
    since, until = window.start.astimezone(dt.UTC), window.end.astimezone(dt.UTC)
    now = dt.datetime.now(dt.UTC)
    if since > now:
        raise failure(f"compliance_summary {key}: the period [{since:%Y-%m-%d}, {until:%Y-%m-%d}) has not started "
                      "yet; summaries are made for past (or the current) periods")
    try:
        with audit_db.open() as db:
            directory = db.settings.reports.directory
            if directory is None:
                raise failure("compliance_summary needs a directory to write to: set AUDIT_REPORTS__DIRECTORY "
                              "(e.g. /var/lib/audit/reports)")
            report = db.reports.compliance_summary(since, until)
            export = report.to_parquet(summary_path(directory, key), requested_by=f"dagster:{context.job_name}",
                                       run_id=context.run.run_id)
    except AuditError as exc:
        raise failure(f"compliance_summary {key} failed: {exc.message}", error_category=exc.category.value) from None
    frame = report.frame
    complete = until <= now
    totals = {name: int(frame[name].sum()) for name in _SUMMARY_COUNTS}
    context.log.info(
        f"compliance summary {since:%Y-%m-%d} – {until:%Y-%m-%d}: {len(frame)} organizations, "
        f"{totals['events']} events; {export.path}"
    )
    if not complete:
        context.log.warning(f"the period ends {until:%Y-%m-%d %H:%M} UTC: this summary covers events up to now")
    return dg.MaterializeResult(metadata={
        "period_start": since.isoformat(),
        "period_end": until.isoformat(),
        "complete": complete,
        "organizations": len(frame),
        "dagster/row_count": len(frame),
        **totals,
        "path": dg.MetadataValue.path(str(export.path)),
        "bytes": export.bytes,
        "sha256": export.sha256,
        "summary": dg.MetadataValue.md(summary_markdown(frame)),
    })


ASSETS = [audit_log_partition, audit_log_archive, compliance_summary]
