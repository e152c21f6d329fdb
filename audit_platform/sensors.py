"""Sensors of the code location: run-failure alerts and the DEFAULT-partition watch.

* :data:`run_failure_alert_sensor` — one :class:`~audit_platform.alerts.Alert` per failed run of this code
  location (job, run id, failing step, the error's message, a link to the run). Dagster's run-status cursor
  guarantees each failed run is seen once; the sensor never raises into the sensor loop.
* :data:`default_partition_sensor` — every 5 minutes, asks ``audit_db_core`` which periods have rows in the
  DEFAULT partition (rows outside every partition); sends one warning per change of that row count (the last
  count alerted is kept in the sensor cursor) and requests no run.

Resources (keys in ``Definitions(resources=...)``): ``"alerts"`` → :class:`~audit_platform.alerts.AlertResource`
(both sensors); ``"audit_db"`` → an object whose ``open()`` is a context manager yielding an
:class:`audit_db_core.AuditDatabase` (``AuditDatabaseResource``; the DEFAULT sensor only).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

import dagster as dg
from audit_db_core import AuditDatabase
from audit_db_core.errors import redact

from audit_platform.alerts import Alert, AlertResource

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
        message = redact(f"DEFAULT partition check failed: {type(exc).__name__}: {exc}")
        logger.error(message, extra={"audit": {"check": "default_partition"}})
        raise DefaultPartitionCheckError(message) from None

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


SENSORS: list[dg.SensorDefinition] = [run_failure_alert_sensor, default_partition_sensor]
