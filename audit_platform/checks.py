"""Asset checks on ``audit_log_partition``: the state of the whole partitioned log, measured by the core.

Severity: ``ERROR`` where data safety is at stake (an archive that no longer verifies, a registry the ledger does
not account for), ``WARN`` for operational conditions nothing is lost by (missing future partitions — writes land
in DEFAULT and are rescued —, rows waiting in DEFAULT, replica lag, Redis down — reads fall back to the primary).

=======================  ========  ===========================================================================
check                    severity  passes when
=======================  ========  ===========================================================================
premake_coverage         WARN      the current period and the next AUDIT_PARTITIONS__PREMAKE ones exist
default_partition_empty  WARN      the DEFAULT partition holds no rows
archives_verified        ERROR     every kept archive's manifest is the one recorded at archival, and the
                                   archive picked in rotation this hour re-reads and matches the registry
replica_lag              WARN      every replica is reachable, a standby, and within AUDIT_REPLICAS__MAX_LAG_*
redis_reachable          WARN      the cache's Redis answers PING (or none is configured)
breakers_closed          ERROR/    no process sharing the Redis has an open or half-open breaker (ERROR for
                         WARN      primary / partitions, WARN for replicas / Redis)
ledger_consistent        ERROR     the ledger records a successful create / archive / purge for each state
integrity_verified       ERROR/    the signed digest chain and the rows of the lookback verify (WARN: part
                         WARN      of the range unchecked, or integrity not configured)
=======================  ========  ===========================================================================

breakers_closed: every process using the audit database publishes its breakers that are not closed to the shared
Redis (``QueryCache.report_breaker``); the check reads them all (``fleet_breakers``), after making one real
call through its own primary breaker (:func:`primary_probe`: one index probe, whatever the size of the log).
ERROR when a primary or partitions breaker is open anywhere (writes or the lifecycle fail fast there), WARN when
only replica or Redis breakers are (reads fall back). Without a Redis the other processes cannot be seen: the
check then says so and covers its own process only.

Every check's cost stays flat as the log grows (docs/guides/dagster-platform.md has a table: what each reads);
the full re-read of every archive is ``archive_verification_job``'s, daily.

The checks are not partitioned: each looks at every partition at once, whichever partition was just materialized.
A database that cannot be reached fails the check's step (the run fails and alerts), rather than being reported
as a passed or failed check.
"""


import datetime as dt
import time
from collections.abc import Sequence
from typing import Any

import dagster as dg

from audit_db_core import AuditDatabase, AuditError, AuditQuery, ConfigurationError, ConnectionManager
from audit_db_core.health import redis_status
from audit_platform.assets import audit_log_partition, failure, md_table
from audit_platform.resources import AuditDatabaseResource

WARN = dg.AssetCheckSeverity.WARN
ERROR = dg.AssetCheckSeverity.ERROR


def _result(passed: bool, severity: dg.AssetCheckSeverity, description: str, **metadata: Any) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=passed, severity=severity, description=description, metadata=metadata)


def elapsed_ms(started: float) -> float:
    """Milliseconds since ``started`` (a ``time.perf_counter()`` reading): the ``duration_ms`` metadata Dagster plots."""
    return round((time.perf_counter() - started) * 1000, 3)


def _database_failure(check: str, exc: AuditError) -> dg.Failure:
    return failure(f"check {check} could not run: {exc.message}", error_category=exc.category.value)


@dg.asset_check(
    asset=audit_log_partition,
    description="The current period and the premake window's future periods have their partitions (WARN: without "
    "them new rows land in DEFAULT until the partition is made).",
)
def premake_coverage(audit_db: AuditDatabaseResource) -> dg.AssetCheckResult:
    """Passes when the core's maintenance plan has nothing to create."""
    try:
        with audit_db.open() as db:
            plan = db.partitions.plan()
            premake = db.settings.partitions.premake
    except AuditError as exc:
        raise _database_failure("premake_coverage", exc) from None
    missing = plan.of("create")
    rows = [[a.partition, f"{a.start:%Y-%m-%d}", f"{a.end:%Y-%m-%d}"] for a in missing]
    return _result(
        not missing,
        WARN,
        f"{len(missing)} partition(s) of the premake window are missing: {', '.join(a.partition for a in missing)}"
        if missing else f"the current period and the next {premake} exist",
        premake=premake,
        missing=len(missing),
        missing_partitions=dg.MetadataValue.md(md_table(["partition", "start", "end"], rows)) if rows else "none",
    )


@dg.asset_check(
    asset=audit_log_partition,
    description="The DEFAULT partition is empty (WARN: rows there belong to periods without a partition; "
    "partition_maintenance_job moves them into one).",
)
def default_partition_empty(audit_db: AuditDatabaseResource) -> dg.AssetCheckResult:
    """Passes when no row sits in DEFAULT; otherwise lists the rows per period."""
    try:
        with audit_db.open() as db:
            ranges = db.partitions.default_ranges()
    except AuditError as exc:
        raise _database_failure("default_partition_empty", exc) from None
    total = sum(n for _, n in ranges)
    rows = [[b.name, f"{b.start:%Y-%m-%d}", f"{b.end:%Y-%m-%d}", n] for b, n in ranges]
    return _result(
        total == 0,
        WARN,
        "the DEFAULT partition is empty" if total == 0 else
        f"{total} row(s) sit in the DEFAULT partition, for {len(ranges)} period(s); partition_maintenance_job "
        "rescues them",
        default_rows=total,
        periods=len(ranges),
        rows_per_period=dg.MetadataValue.md(md_table(["period", "start", "end", "rows"], rows)) if rows else "none",
    )


def rotation_pick(names: Sequence[str], now: dt.datetime) -> str | None:
    """The archive ``archives_verified`` re-reads in full at ``now``: the hours since the epoch modulo the number
    of archives picks one, so each is re-read once every ``len(names)`` hours, and two runs in one hour (a
    materialization and the schedule) re-read the same one. ``None`` when there is none."""
    if not names:
        return None
    return names[int(now.timestamp() // 3600) % len(names)]


@dg.asset_check(
    asset=audit_log_partition,
    description="Every archive that is kept (archived partitions, and purged ones whose archive is retained) has "
    "its manifest, unchanged since archival (SHA-256 against the registry), and one of them — in rotation, a "
    "different one each hour — re-reads completely and matches the registry's row count and content digest "
    "(ERROR). Its cost does not grow with the log: one manifest per archive plus one archive. Failures are "
    "recorded in the lifecycle ledger; archive_verification_job re-reads every archive daily.",
)
def archives_verified(context: dg.AssetCheckExecutionContext, audit_db: AuditDatabaseResource) -> dg.AssetCheckResult:
    """Manifests of every kept archive, plus one archive re-read in full (``PartitionManager.verify_archives``)."""
    started = time.perf_counter()
    sample: str | None = None
    try:
        with audit_db.open() as db:
            pm = db.partitions
            try:
                manifests = pm.verify_archives(full=False, record="failures", run_id=context.run.run_id)
                sample = rotation_pick([n for n, problems in manifests if not problems], dt.datetime.now(dt.UTC))
                full = dict(pm.verify_archives(partitions=[sample], record="failures", run_id=context.run.run_id)
                            if sample else [])
            except ConfigurationError as exc:
                archived = [p.name for p in pm.list_partitions() if p.state != "active"]
                return _result(
                    False, WARN,
                    f"AUDIT_ARCHIVE__ROOT_URI not set: the archives of {len(archived)} partition(s) cannot be "
                    f"verified ({exc.message})",
                    archived_partitions=len(archived),
                )
    except AuditError as exc:
        raise _database_failure("archives_verified", exc) from None
    results = [(name, problems or full.get(name, [])) for name, problems in manifests]
    bad = [(name, problems) for name, problems in results if problems]

    def outcome(name: str, problems: list[str]) -> str:
        if problems:
            return "; ".join(problems)
        return "verified (manifest and every file re-read)" if name == sample else "manifest verified"

    table = md_table(["partition", "result"], [[n, outcome(n, p)] for n, p in results])
    return _result(
        not bad,
        ERROR,
        (f"{len(results)} archive manifest(s) verified; {sample} re-read in full" if sample else
         "no archived partitions") if not bad else
        f"{len(bad)} of {len(results)} archive(s) do not verify: {', '.join(n for n, _ in bad)}",
        archives=len(results),
        failed=len(bad),
        reread_in_full=sample or "none",
        duration_ms=elapsed_ms(started),
        results=dg.MetadataValue.md(table) if results else "no archived partitions",
    )


@dg.asset_check(
    asset=audit_log_partition,
    description="Every read replica is reachable, replays the primary's WAL, and lags less than "
    "AUDIT_REPLICAS__MAX_LAG_SECONDS (30 s) and AUDIT_REPLICAS__MAX_LAG_BYTES (64 MiB) (WARN: bounded reads "
    "go to the primary meanwhile).",
)
def replica_lag(audit_db: AuditDatabaseResource) -> dg.AssetCheckResult:
    """Measure each replica's replay lag for real (``ConnectionManager.replica_status``)."""
    try:
        settings = audit_db.settings()
    except AuditError as exc:
        raise _database_failure("replica_lag", exc) from None
    if not settings.replica_urls:
        return _result(True, WARN, "no replicas configured", replicas=0, status="no replicas configured")
    statuses = ConnectionManager(settings).replica_status()
    bad = [s for s in statuses if not s.healthy]
    rows = [[s.name, s.url, s.reachable, s.in_recovery, s.lag_bytes, s.lag_seconds, s.problem or "ok"]
            for s in statuses]
    metadata: dict[str, Any] = {
        "replicas": len(statuses),
        "unhealthy": len(bad),
        "max_lag_bytes": settings.replicas.max_lag_bytes,
        "max_lag_seconds": settings.replicas.max_lag_seconds,
        "status": dg.MetadataValue.md(md_table(
            ["replica", "url", "reachable", "in recovery", "lag bytes", "lag seconds", "problem"], rows)),
    }
    for s in statuses:
        if s.lag_bytes is not None:
            metadata[f"{s.name}_lag_bytes"] = s.lag_bytes
        if s.lag_seconds is not None:
            metadata[f"{s.name}_lag_seconds"] = s.lag_seconds
    return _result(
        not bad,
        WARN,
        f"{len(statuses)} replica(s) within the lag bounds" if not bad else
        "; ".join(f"{s.name}: {s.problem}" for s in bad),
        **metadata,
    )


@dg.asset_check(
    asset=audit_log_partition,
    description="The query cache's Redis answers PING within AUDIT_CACHE__REDIS_TIMEOUT_SECONDS (WARN: without it "
    "queries skip the shared cache and go to the database). Passes when no Redis is configured.",
)
def redis_reachable(audit_db: AuditDatabaseResource) -> dg.AssetCheckResult:
    """PING Redis through the core (``health.redis_status``)."""
    try:
        settings = audit_db.settings()
    except AuditError as exc:
        raise _database_failure("redis_reachable", exc) from None
    status = redis_status(settings)
    if not status.configured:
        return _result(True, WARN, "not configured (AUDIT_REDIS_URL unset)", status="not configured")
    return _result(
        bool(status.reachable),
        WARN,
        f"Redis answered PING in {status.latency_ms} ms" if status.reachable else f"Redis unreachable: {status.error}",
        url=status.url or "",
        latency_ms=status.latency_ms or 0.0,
        timeout_seconds=settings.cache.redis_timeout_seconds,
        status="reachable" if status.reachable else "unreachable",
    )


@dg.asset_check(
    asset=audit_log_partition,
    description="The lifecycle ledger accounts for every partition's state: a successful create for each "
    "registered partition, archive for each archived or purged one, purge for each purged one (ERROR).",
)
def ledger_consistent(audit_db: AuditDatabaseResource) -> dg.AssetCheckResult:
    """Compare the registry with the ledger (``PartitionManager.ledger_consistency``)."""
    try:
        with audit_db.open() as db:
            problems = db.partitions.ledger_consistency()
            partitions = len(db.partitions.list_partitions())
    except AuditError as exc:
        raise _database_failure("ledger_consistent", exc) from None
    return _result(
        not problems,
        ERROR,
        f"the ledger accounts for all {partitions} registered partitions" if not problems else
        f"{len(problems)} problem(s): " + "; ".join(problems[:5]) + (" …" if len(problems) > 5 else ""),
        partitions=partitions,
        problems=len(problems),
        details=dg.MetadataValue.md("\n".join(f"- {p}" for p in problems)) if problems else "none",
    )


def primary_probe(db: AuditDatabase) -> None:
    """One real read on the primary, through this process's primary breaker, whose cost does not grow with the log:
    the newest event of the last millisecond — one probe of the primary key's index in the current partition
    (partition pruning keeps every other partition out). Raises what the read raises."""
    now = dt.datetime.now(dt.UTC)
    db.query(AuditQuery(since=now - dt.timedelta(milliseconds=1), until=now, limit=1), consistency="strong",
             use_cache=False)


@dg.asset_check(
    asset=audit_log_partition,
    description="No process that uses the audit database has a circuit breaker open or half-open (ERROR for the "
    "primary or partition operations: writes fail fast there; WARN for replicas or Redis: reads fall back).",
)
def breakers_closed(audit_db: AuditDatabaseResource) -> dg.AssetCheckResult:
    """Read every process's published breaker states (``QueryCache.fleet_breakers``) plus this run's own."""
    try:
        with audit_db.open() as db:
            primary_probe(db)
            own = [{"breaker": n, "state": b["state"], "host": "this run", "pid": "", "since": "",
                    "last_failure": b["last_failure"] or ""}
                   for n, b in db.breakers.stats().items() if b["state"] != "closed"]
            fleet = db.cache.fleet_breakers()
    except AuditError as exc:
        raise _database_failure("breakers_closed", exc) from None
    not_closed = own + (fleet or [])
    critical = sorted({b["breaker"] for b in not_closed if b["breaker"] in ("primary", "partitions")})
    rows = [[b["breaker"], b["state"], b.get("host", ""), b.get("pid", ""),
             dt.datetime.fromtimestamp(b["since"], dt.UTC).isoformat(timespec="seconds")
             if isinstance(b.get("since"), (int, float)) else "", b.get("last_failure") or ""] for b in not_closed]
    scope = ("every process sharing the Redis" if fleet is not None else
             "this run only (no Redis configured or reachable: other processes' breakers cannot be seen)")
    return _result(
        not not_closed,
        ERROR if critical else WARN,
        f"all circuit breakers closed ({scope})" if not not_closed else
        f"{len(not_closed)} breaker(s) not closed: " + ", ".join(f"{r[0]} {r[1]} on {r[2]}" for r in rows[:5]),
        scope=scope,
        not_closed=len(not_closed),
        open=sum(1 for b in not_closed if b["state"] == "open"),
        half_open=sum(1 for b in not_closed if b["state"] == "half_open"),
        breakers=dg.MetadataValue.md(md_table(["breaker", "state", "host", "pid", "since", "last failure"], rows))
        if rows else "none",
    )


def integrity_metadata(report: Any) -> dict[str, Any]:
    """Dagster metadata of an integrity :class:`~audit_db_core.integrity.VerificationReport` (keys, hashes and
    counts only: a problem's detail never holds field values)."""
    rows = [[p.kind, p.window_start.date() if p.window_start else "", p.event_time or "", p.event_id or "",
             p.chain_seq or "", p.source or "", p.detail] for p in report.problems[:50]]
    return {
        "status": report.status,
        "problems": len(report.problems),
        "events_checked": report.events_checked,
        "windows_checked": report.windows_checked,
        "digests_checked": report.digests_checked,
        "pending_events": report.pending_events,
        "range": f"{report.since} .. {report.until}",
        "head_chain_seq": report.head_chain_seq if report.head_chain_seq is not None else -1,
        "head_digest_hash": report.head_digest_hash or "",
        "unchecked": "; ".join(report.unchecked) or "none",
        "problem_list": dg.MetadataValue.md(md_table(
            ["kind", "window", "event time", "event id", "digest", "source", "detail"], rows)) if rows else "none",
    }


@dg.asset_check(
    asset=audit_log_partition,
    description="The signed digest chain verifies (hashes, links, signatures, the ledger's record of each seal) and "
    "the rows of the windows sealed within AUDIT_INTEGRITY__VERIFY_LOOKBACK match their digests, as do the "
    "archives of those periods (ERROR on any problem; WARN when part of the range could not be checked or "
    "integrity is not configured). Each verification is recorded in the lifecycle ledger.",
)
def integrity_verified(context: dg.AssetCheckExecutionContext, audit_db: AuditDatabaseResource) -> dg.AssetCheckResult:
    """``IntegrityManager.verify`` over the lookback; a full re-read is ``audit-platform verify``."""
    started = time.perf_counter()
    try:
        with audit_db.open() as db:
            try:
                report = db.integrity.verify(db.integrity.lookback_start(), run_id=context.run.run_id)
            except ConfigurationError as exc:
                return _result(False, WARN, f"integrity verification is not configured: {exc.message}",
                               status="not configured")
    except AuditError as exc:
        raise _database_failure("integrity_verified", exc) from None
    return _result(report.ok, ERROR if report.status == "failed" else WARN, report.summary(),
                   **integrity_metadata(report), duration_ms=elapsed_ms(started))

CHECKS = [premake_coverage, default_partition_empty, archives_verified, replica_lag, redis_reachable,
          breakers_closed, ledger_consistent, integrity_verified]
