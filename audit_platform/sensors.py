"""Sensors of the code location: run-failure alerts, the DEFAULT-partition watch and the partition registry.

* :data:`run_failure_alert_sensor` — one :class:`~audit_platform.alerts.Alert` per failed run of this code
  location (job, run id, failing step, the error's message, a link to the run). Dagster's run-status cursor
  guarantees each failed run is seen once; the sensor never raises into the sensor loop.
* :data:`default_partition_sensor` — every 5 minutes, asks ``audit_db_core`` which periods have rows in the
  DEFAULT partition (rows outside every partition); sends one warning per change of that row count (the last
  count alerted is kept in the sensor cursor) and requests no run.
* :data:`partition_registry_sensor` — every 30 seconds, reads the partition registry once and reports each
  partition (and archive) whose registry row changed since its last report to ``audit_log_partition`` /
  ``audit_log_archive`` as runless asset events (``SensorResult(asset_events=...)``): partitions made by
  migrations, the CLI or another deployment appear materialized without a run, purged ones are observed as
  ``purged``. Requests no run.

Resources (keys in ``Definitions(resources=...)``): ``"alerts"`` → :class:`~audit_platform.alerts.AlertResource`
(the first two); ``"audit_db"`` → an object whose ``open()`` is a context manager yielding an
:class:`audit_db_core.AuditDatabase` (``AuditDatabaseResource``; the DEFAULT and registry sensors).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

import dagster as dg
from audit_db_core import AuditDatabase, AuditError
from audit_db_core.errors import redact
from audit_db_core.partitions import PartitionInfo

from audit_platform.alerts import Alert, AlertResource
from audit_platform.partitions import PARTITIONS, key_for_period

logger = logging.getLogger("audit_platform.sensors")

#: The partition rows go to when no partition covers their ``event_time``.
DEFAULT_PARTITION_NAME = "audit_log_default"
#: Periods listed by name in the DEFAULT alert's one-line text (all of them are in ``details``).
MAX_PERIODS_IN_TEXT = 5
#: Other failed steps' messages carried in a run-failure alert's ``details``.
MAX_OTHER_STEP_ERRORS = 5


class AuditDatabaseOpener(Protocol):
    """What the ``audit_db`` resource must offer: ``with resource.open() as db: ...`` → ``AuditDatabase``."""

    def open(self) -> AbstractContextManager[AuditDatabase]: ...


# -- run failures ---------------------------------------------------------------------------------------------------


def _user_error(error: Any) -> Any:
    """The user's exception inside Dagster's wrappers (``DagsterExecutionStepExecutionError`` → ``ValueError``)."""
    seen = 0
    while (
        error is not None
        and getattr(error, "cause", None) is not None
        and str(getattr(error, "cls_name", "") or "").startswith("Dagster")
        and seen < 10
    ):
        error = error.cause
        seen += 1
    return error


def _error_message(error: Any) -> str:
    """The message of a ``SerializableErrorInfo`` (user exception first; no stack trace)."""
    inner = _user_error(error)
    if inner is None:
        return ""
    return str(getattr(inner, "message", "") or "").strip()


def _step_failure_message(event: dg.DagsterEvent) -> str:
    data = event.event_specific_data
    user_failure = getattr(data, "user_failure_data", None)
    description = getattr(user_failure, "description", None) if user_failure is not None else None
    message = _error_message(getattr(data, "error", None))
    if description and description not in message:
        message = f"{description}\n{message}" if message else description
    return message or (event.message or "")


def build_run_failure_alert(context: dg.RunFailureSensorContext, alerts: AlertResource) -> Alert:
    """The alert for the failed run in ``context``: its job, run id, first failing step, that step's error
    (the run's own error when no step failed, e.g. a resource that did not initialise) and the run link."""
    run = context.dagster_run
    steps = list(context.get_step_failure_events())
    step_keys = [e.step_key for e in steps if e.step_key]
    failure = context.failure_event
    failure_data = failure.event_specific_data
    if steps:
        error = _step_failure_message(steps[0])
    else:
        error = _error_message(getattr(failure_data, "error", None)) or (failure.message or "")
    step = step_keys[0] if step_keys else None
    details: dict[str, Any] = {"failed_steps": step_keys}
    reason = getattr(failure_data, "failure_reason", None)
    if reason is not None:
        details["failure_reason"] = getattr(reason, "value", str(reason))
    partition = run.tags.get("dagster/partition")
    if partition:
        details["partition_key"] = partition
    if len(steps) > 1:
        details["other_step_errors"] = {
            e.step_key: _step_failure_message(e)[:500] for e in steps[1 : 1 + MAX_OTHER_STEP_ERRORS] if e.step_key
        }
    title = f"job {run.job_name} failed" + (f" in step {step}" if step else "")
    return Alert(
        title=title,
        severity="error",
        job_name=run.job_name,
        run_id=run.run_id,
        step=step,
        error=error,
        run_url=alerts.run_url(run.run_id),
        details=details,
    )


@dg.run_failure_sensor(
    name="run_failure_alert_sensor",
    description="Sends one alert (log + webhook) per failed run of this code location.",
    default_status=dg.DefaultSensorStatus.RUNNING,
    monitor_all_code_locations=False,  # this code location's jobs only (the default)
)
def run_failure_alert_sensor(context: dg.RunFailureSensorContext, alerts: AlertResource) -> None:
    """Alert on the failed run in ``context``. Returns ``None`` on purpose: Dagster then moves on to the next
    failed run within the same tick (a returned value ends the tick after one run). Never raises."""
    run = context.dagster_run
    try:
        alert = build_run_failure_alert(context, alerts)
    except Exception as exc:  # noqa: BLE001 - an alert without details beats no alert
        logger.error(
            "could not read the failure of run %s; sending a minimal alert",
            run.run_id,
            extra={"audit": {"run_id": run.run_id, "error": redact(f"{type(exc).__name__}: {exc}")}},
        )
        try:
            alert = Alert(
                title=f"job {run.job_name} failed",
                severity="error",
                job_name=run.job_name,
                run_id=run.run_id,
                error="(the failure details could not be read; open the run)",
                run_url=alerts.run_url(run.run_id),
            )
        except Exception:  # noqa: BLE001
            return None
    try:
        alerts.send(alert)
    except Exception as exc:  # noqa: BLE001 - send() does not raise; this guards a replaced resource
        logger.error(
            "alert for run %s could not be sent",
            run.run_id,
            extra={"audit": {"run_id": run.run_id, "error": redact(f"{type(exc).__name__}: {exc}")}},
        )
    return None


# -- DEFAULT partition -----------------------------------------------------------------------------------------------


class DefaultPartitionCheckError(Exception):
    """The DEFAULT partition could not be inspected (the message is redacted)."""


def _redacted(error: type[Exception], what: str, exc: Exception, check: str) -> Exception:
    """``error`` with ``what`` and ``exc``'s message, passwords masked, logged once (raise it ``from None``)."""
    message = redact(f"{what}: {type(exc).__name__}: {exc}")
    logger.error(message, extra={"audit": {"check": check}})
    return error(message)


def _cursor_rows(cursor: str | None) -> int | None:
    """The row count last alerted on (``0`` after a reset), or ``None`` for a missing or unreadable cursor."""
    if not cursor:
        return None
    try:
        value = json.loads(cursor).get("default_rows")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _cursor(rows: int) -> str:
    return json.dumps({"default_rows": rows})


def build_default_partition_alert(ranges: Sequence[tuple[Any, int]]) -> Alert:
    """The warning for rows found in DEFAULT: ``ranges`` is ``PartitionManager.default_ranges()`` output —
    ``(PartitionBounds, rows)`` per period."""
    total = sum(n for _, n in ranges)
    periods = [
        {"partition": b.name, "start": b.start.isoformat(), "end": b.end.isoformat(), "rows": n} for b, n in ranges
    ]
    listed = ", ".join(f"{p['partition']} ({p['rows']} rows)" for p in periods[:MAX_PERIODS_IN_TEXT])
    if len(periods) > MAX_PERIODS_IN_TEXT:
        listed += f", and {len(periods) - MAX_PERIODS_IN_TEXT} more"
    noun = "period" if len(periods) == 1 else "periods"
    return Alert(
        title=f"{total} rows in the DEFAULT partition ({DEFAULT_PARTITION_NAME})",
        severity="warning",
        job_name=None,
        run_id=None,
        step=None,
        error=(
            f"{total} rows have no partition, in {len(periods)} {noun}: {listed}. "
            "Create their partitions (partition maintenance / PartitionManager.rescue_default moves the rows); "
            "periods whose partition was archived and detached are reported by the maintenance plan."
        ),
        details={"default_rows": total, "periods": periods},
    )


@dg.sensor(
    name="default_partition_sensor",
    description="Warns (log + webhook) when rows sit in the DEFAULT partition; once per change of their count.",
    minimum_interval_seconds=300,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def default_partition_sensor(
    context: dg.SensorEvaluationContext,
    audit_db: dg.ResourceParam[AuditDatabaseOpener],
    alerts: AlertResource,
) -> dg.SensorResult:
    """Check DEFAULT; alert when its row count changed since the last alert; never request a run.

    Cursor: ``{"default_rows": N}`` — the count last alerted on (``0`` once DEFAULT is empty again). When the
    webhook is configured but delivery failed, the cursor is left as it was so the next tick tries again.
    A database failure fails the tick with a redacted :class:`DefaultPartitionCheckError`.
    """
    try:
        with audit_db.open() as db:
            ranges = list(db.partitions.default_ranges())
    except Exception as exc:  # noqa: BLE001 - re-raised redacted, without the driver's exception chain
        raise _redacted(DefaultPartitionCheckError, "DEFAULT partition check failed", exc, "default_partition") from None

    total = sum(n for _, n in ranges)
    previous = _cursor_rows(context.cursor)
    if total == 0:
        return dg.SensorResult(skip_reason="the DEFAULT partition is empty", cursor=_cursor(0))
    if previous == total:
        return dg.SensorResult(skip_reason=f"DEFAULT still holds {total} rows; already alerted", cursor=_cursor(total))
    report = alerts.send(build_default_partition_alert(ranges))
    if report.delivered or not report.webhook_configured:
        return dg.SensorResult(skip_reason=f"alerted: DEFAULT holds {total} rows", cursor=_cursor(total))
    return dg.SensorResult(
        skip_reason=f"DEFAULT holds {total} rows; alert not delivered ({report.error}); will retry",
        cursor=None,  # unchanged
    )


# -- the partition registry, reported to Dagster --------------------------------------------------------------------

PARTITION_ASSET = dg.AssetKey("audit_log_partition")
ARCHIVE_ASSET = dg.AssetKey("audit_log_archive")
REGISTRY_SENSOR_NAME = "partition_registry_sensor"
#: Asset events one tick reports at most (a first tick over decades of partitions); the rest follow next tick.
MAX_EVENTS_PER_TICK = 500


class PartitionRegistryError(Exception):
    """The partition registry could not be read (the message is redacted)."""


class ManifestSource(Protocol):
    """``read_manifest(name)`` of :class:`audit_db_core.archive.ArchiveStore`: the archive's manifest or None."""

    def read_manifest(self, partition: str) -> Any: ...


def _iso(value: dt.datetime | None) -> str:
    return value.astimezone(dt.UTC).isoformat() if value is not None else ""


def partition_fingerprint(info: PartitionInfo) -> str:
    """What the sensor reports of a registry row, as one string: a change of any part is a new event."""
    return "|".join(str(v) for v in (info.state, info.row_count, info.bytes, info.detached, info.legal_hold))


def archive_fingerprint(info: PartitionInfo) -> str | None:
    """The archive's part of the registry row, or None when the partition has no archive (still active)."""
    if info.state == "active" or not info.archive_uri:
        return None
    return f"{info.archive_manifest_sha256}|{'deleted' if info.archive_deleted_at else 'kept'}"


def registry_partition_event(info: PartitionInfo, key: str) -> dg.AssetMaterialization | dg.AssetObservation:
    """The event of ``audit_log_partition`` partition ``key`` for registry row ``info``: a materialization while
    the table exists (active or archived, attached or detached), an observation saying ``purged`` once dropped.

    Metadata keys are those of the asset's own materializations (``partition``, ``state``, ``rows``,
    ``dagster/row_count``, ``bytes``), so Dagster plots one series per key whichever reported it. ``rows`` and
    ``bytes`` are the registry's — measured by the last lifecycle operation (archive, index maintenance); while
    nothing has measured a new partition yet they are left out and ``measured`` says so."""
    values: dict[str, Any] = {"partition": info.name, "state": info.state}
    if info.state == "purged":
        values.update({"rows": 0, "dagster/row_count": 0, "bytes": 0, "purged_at": _iso(info.purged_at)})
        if info.row_count is not None:
            values["rows_archived"] = info.row_count
    elif info.row_count is not None or info.bytes is not None:
        if info.row_count is not None:
            values["rows"] = values["dagster/row_count"] = info.row_count
        if info.bytes is not None:
            values["bytes"] = info.bytes
    else:
        values["measured"] = "not yet: index maintenance (weekly) or archival records rows and bytes in the registry"
    values.update({"range_start": _iso(info.start), "range_end": _iso(info.end), "detached": info.detached,
                   "legal_hold": info.legal_hold, "reported_by": REGISTRY_SENSOR_NAME})
    if info.state == "purged":
        kept = info.archive_uri and info.archive_deleted_at is None
        return dg.AssetObservation(
            asset_key=PARTITION_ASSET, partition=key, metadata=values,
            description=f"{info.name} was purged on {_iso(info.purged_at)[:10] or 'an unrecorded date'}: dropped "
            "from PostgreSQL after its retention; " + ("its rows are in its archive" if kept else
                                                       "its archive is deleted as well"),
        )
    where = ("archived and detached from audit_log" if info.detached else "archived (read-only)"
             if info.state == "archived" else "active")
    return dg.AssetMaterialization(
        asset_key=PARTITION_ASSET, partition=key, metadata=values,
        description=f"{info.name} exists in PostgreSQL, {where} (from the partition registry)",
    )


def registry_archive_event(
    info: PartitionInfo, key: str, manifests: ManifestSource | str
) -> dg.AssetMaterialization | dg.AssetObservation:
    """The event of ``audit_log_archive`` partition ``key``: a materialization while the archive is kept (numbers
    from the registry and, when ``manifests`` can read it, the manifest: files, archive bytes, compression
    ratio), an observation once the archive retention deleted it. ``manifests`` is a string when no manifest can
    be read (why)."""
    rows = info.row_count or 0
    values: dict[str, Any] = {
        "partition": info.name,
        "status": "archived",
        "state": info.state,
        "rows": rows,
        "dagster/row_count": rows,
        "bytes": info.bytes or 0,
        "archive_uri": redact(info.archive_uri or ""),
        "content_digest": info.archive_checksum or "",
        "manifest_sha256": info.archive_manifest_sha256 or "",
        "archived_at": _iso(info.archived_at),
        "detached": info.detached,
        "reported_by": REGISTRY_SENSOR_NAME,
    }
    if info.archive_deleted_at is not None:
        values.update({"status": "archive_deleted", "archive_deleted_at": _iso(info.archive_deleted_at)})
        return dg.AssetObservation(
            asset_key=ARCHIVE_ASSET, partition=key, metadata=values,
            description=f"the archive of {info.name} was deleted on {_iso(info.archive_deleted_at)[:10]} (its "
            "archive retention passed)",
        )
    try:
        manifest = manifests if isinstance(manifests, str) else manifests.read_manifest(info.name)
    except AuditError as exc:
        manifest = f"unreadable: {exc.message}"
    if manifest is None:
        manifest = "missing (archives_verified and archive_verification_job report it)"
    if isinstance(manifest, str):
        values["manifest"] = redact(manifest)
    else:
        archive_bytes = sum(f.bytes for f in manifest.files)
        values.update({"manifest": "read", "files": len(manifest.files), "archive_bytes": archive_bytes,
                       "compression": manifest.compression})
        if archive_bytes and info.bytes:
            values["compression_ratio"] = round(info.bytes / archive_bytes, 2)
    return dg.AssetMaterialization(
        asset_key=ARCHIVE_ASSET, partition=key, metadata=values,
        description=f"the verified archive of {info.name} (from the partition registry)",
    )


@dataclass
class RegistryReport:
    """What one reconciliation produced: the events, the fingerprints to keep in the cursor, and counts."""

    events: list[dg.AssetMaterialization | dg.AssetObservation]
    reported: dict[str, dict[str, str]]
    partitions: int = 0
    outside: list[str] = field(default_factory=list)
    deferred: int = 0

    def summary(self) -> str:
        """The tick's one line (its skip reason: the sensor never requests a run)."""
        parts = [f"{len(self.events)} asset event(s) reported" if self.events else "registry unchanged",
                 f"{self.partitions} registered partition(s)"]
        if self.outside:
            parts.append(f"{len(self.outside)} outside the Dagster partitions ({', '.join(self.outside[:3])}"
                         f"{', …' if len(self.outside) > 3 else ''})")
        if self.deferred:
            parts.append(f"{self.deferred} change(s) left for the next tick")
        return "; ".join(parts) + "; no run requested"


def reconcile_registry(
    infos: Sequence[PartitionInfo],
    reported: dict[str, dict[str, str]],
    keys: set[str],
    manifests: Callable[[], ManifestSource | str],
    *,
    max_events: int = MAX_EVENTS_PER_TICK,
) -> RegistryReport:
    """The events that bring Dagster up to the registry ``infos``, given the fingerprints ``reported`` by earlier
    ticks (``{"partitions": {key: fingerprint}, "archives": {...}}``); ``keys`` are the Dagster partition keys
    (rows outside them are counted, not reported); ``manifests`` is called once, only if an archive changed."""
    partitions = dict(reported.get("partitions", {}))
    archives = dict(reported.get("archives", {}))
    report = RegistryReport([], {"partitions": partitions, "archives": archives}, partitions=len(infos))
    store: list[ManifestSource | str] = []
    for info in infos:
        key = key_for_period(info.start)
        if key not in keys:
            report.outside.append(info.name)
            continue
        due: list[dg.AssetMaterialization | dg.AssetObservation] = []
        fingerprint, archive = partition_fingerprint(info), archive_fingerprint(info)
        if partitions.get(key) != fingerprint:
            due.append(registry_partition_event(info, key))
        if archive is not None and archives.get(key) != archive:
            if not store:
                store.append(manifests())
            due.append(registry_archive_event(info, key, store[0]))
        if not due:
            continue
        if len(report.events) + len(due) > max_events:
            report.deferred += 1
            continue
        report.events += due
        partitions[key] = fingerprint
        if archive is not None:
            archives[key] = archive
    return report


def _registry_cursor(cursor: str | None) -> dict[str, dict[str, str]]:
    """The fingerprints reported so far; an empty or unreadable cursor reports everything again (harmless)."""
    try:
        value = json.loads(cursor) if cursor else {}
    except ValueError:
        return {}
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if k in ("partitions", "archives") and isinstance(v, dict)}


def _archive_store(db: AuditDatabase) -> ManifestSource | str:
    try:
        return db.partitions.archive_store()
    except AuditError as exc:  # AUDIT_ARCHIVE__ROOT_URI not set: report the registry's numbers without the manifest
        return f"not read: {exc.message}"


@dg.sensor(
    name=REGISTRY_SENSOR_NAME,
    description="Shows the database as it is: every partition in the registry (audit_partitions) — made by "
    "migrations, the CLI, another deployment or a run — is reported to audit_log_partition (materialized, or "
    "observed as purged) and every archive to audit_log_archive, with rows, bytes and archive numbers, without a "
    "run. One registry read per tick; only changes since the last report are sent.",
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def partition_registry_sensor(
    context: dg.SensorEvaluationContext, audit_db: dg.ResourceParam[AuditDatabaseOpener]
) -> dg.SensorResult:
    """Reconcile the registry with Dagster: one ``list_partitions()`` per tick; an event for each partition (and
    archive) whose registry row changed since it was last reported (the cursor holds a fingerprint per partition
    key); manifests are read only for archives that changed. Never requests a run. A database failure fails the
    tick with a redacted :class:`PartitionRegistryError`; the cursor then stays as it was."""
    reported = _registry_cursor(context.cursor)
    try:
        with audit_db.open() as db:
            infos = db.partitions.list_partitions()
            keys = set(PARTITIONS.get_partition_keys())
            report = reconcile_registry(infos, reported, keys, lambda: _archive_store(db))
    except Exception as exc:  # noqa: BLE001 - re-raised redacted, without the driver's exception chain
        raise _redacted(PartitionRegistryError, "partition registry read failed", exc, "partition_registry") from None
    context.log.info(report.summary())
    return dg.SensorResult(asset_events=report.events, cursor=json.dumps(report.reported, sort_keys=True),
                           skip_reason=report.summary())


SENSORS: list[dg.SensorDefinition] = [run_failure_alert_sensor, default_partition_sensor, partition_registry_sensor]
