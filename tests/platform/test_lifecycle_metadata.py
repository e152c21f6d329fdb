"""The lifecycle ops record the figures the OpenTelemetry instruments carry as numeric Dagster metadata (plotted run
after run): durations of every lifecycle step, pool figures and finding counts of the health report, and the
action that fixes each finding in its table."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import dagster as dg
import pytest

from audit_db_core import AuditDatabase, AuditEvent, AuditSettings, health
from audit_platform.jobs import health_check_job, index_maintenance_job, partition_maintenance_job, retention_purge_job
from tests.platform.test_jobs import _clean_env, closed_port, output_metadata, resources  # noqa: F401 - a fixture


def run(job: dg.JobDefinition, url: str, **kwargs: str) -> dg.ExecuteInProcessResult:
    return job.execute_in_process(resources=resources(url, **kwargs), instance=dg.DagsterInstance.ephemeral(),
                                  raise_on_error=False)


def numeric(meta: dict[str, object], key: str) -> float:
    value = meta[key]
    assert isinstance(value, (int, float)) and not isinstance(value, bool), (key, value)
    return float(value)


def test_lifecycle_ops_report_their_durations(fresh_database: str, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDIT_ARCHIVE__ROOT_URI", str(tmp_path / "archive"))
    with AuditDatabase(AuditSettings(database_url=fresh_database)) as db:  # a row for the rescue to move
        db.insert(AuditEvent(action="user.login", status="success", principal_id="late",
                             event_time=dt.datetime(2001, 1, 1, tzinfo=dt.UTC)))
    maintenance = run(partition_maintenance_job, fresh_database)
    assert maintenance.success
    assert numeric(output_metadata(maintenance, "premake_partitions"), "duration_ms") >= 0
    rescue = output_metadata(maintenance, "rescue_default_rows")
    assert numeric(rescue, "duration_ms") >= 0 and rescue["rescued_rows"] == 1
    purge = run(retention_purge_job, fresh_database)
    assert purge.success
    purged = output_metadata(purge, "retention_purge")
    assert numeric(purged, "duration_ms") >= 0 and purged["purged_partitions"] == 0
    optimize = run(index_maintenance_job, fresh_database)
    assert optimize.success and numeric(output_metadata(optimize, "optimize_indexes"), "duration_ms") >= 0


def test_health_op_reports_pool_figures_findings_and_their_actions(fresh_database: str) -> None:
    result = run(health_check_job, fresh_database, redis_url=f"redis://127.0.0.1:{closed_port()}/0")
    assert result.success
    meta = output_metadata(result, "health_report")
    assert meta["status"] == "degraded"
    assert numeric(meta, "duration_ms") >= 0 and meta["components_not_healthy"] == 1
    assert meta["pool_primary_max_size"] >= 1 and meta["pool_primary_waiting"] == 0
    assert numeric(meta, "partitions_missing") == 0
    assert health.REDIS_DOWN in meta["components"]  # the table's action column
