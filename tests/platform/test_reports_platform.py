"""The ``compliance_summary`` asset materialized in process against real PostgreSQL, and its monthly schedule."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
import psycopg
import pytest

from audit_db_core import AuditDatabase, AuditEvent, AuditSettings
from audit_db_core.ledger import entries
from audit_db_core.reports import read_report
from audit_platform.assets import compliance_summary, summary_path
from audit_platform.jobs import compliance_summary_schedule
from audit_platform.resources import AuditDatabaseResource

UTC = dt.UTC
KEY = "2025-03-01"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AUDIT_REPLICA_URLS", "AUDIT_REDIS_URL", "AUDIT_REPORTS__DIRECTORY", "AUDIT_PARTITIONS__INTERVAL",
                 "AUDIT_PARTITIONS__PREMAKE", "AUDIT_REPORTS__TIMEZONE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def reports_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "reports"
    monkeypatch.setenv("AUDIT_REPORTS__DIRECTORY", str(directory))
    return directory


def materialize(url: str, key: str) -> dg.ExecuteInProcessResult:
    return dg.materialize([compliance_summary], partition_key=key, resources={"audit_db": AuditDatabaseResource(
        database_url=url)}, instance=dg.DagsterInstance.ephemeral(), raise_on_error=False)


def metadata_of(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    (mat,) = result.asset_materializations_for_node("compliance_summary")
    return {k: v.value for k, v in mat.metadata.items()}


def failure_description(result: dg.ExecuteInProcessResult) -> str:
    (event,) = result.get_step_failure_events()
    data = event.step_failure_data
    return (data.user_failure_data.description if data.user_failure_data else None) or (
        data.error.message if data.error else "")


def seed(url: str) -> None:
    def ev(org: str | None, day: int, hour: int, principal: str, **kw: Any) -> AuditEvent:
        return AuditEvent(event_time=dt.datetime(2025, 3, day, hour, tzinfo=UTC), action=kw.pop("action", "patient.record.read"),
                          status=kw.pop("status", "success"), principal_id=principal, organization_id=org, **kw)

    with AuditDatabase(AuditSettings(database_url=url)) as db:
        db.partitions.create_partition("2025-03")
        db.insert_many([
            ev("org-a", 3, 9, "dr.house", data_classification="PHI"),
            ev("org-a", 3, 23, "nurse.joy", data_classification="PHI", details={"break_glass": True}),
            ev("org-a", 4, 10, "clerk.7", action="patient.record.disclose", status="failure"),
            ev("org-b", 5, 12, "dr.who", data_classification="PHI"),
            ev(None, 8, 10, "system", action="system.config.read"),  # a Saturday: after hours
            AuditEvent(event_time=dt.datetime(2025, 4, 1, tzinfo=UTC), action="user.login", status="success",
                       principal_id="dr.house", organization_id="org-a"),  # April: not in the summary
        ])


def test_materializing_a_month_writes_the_summary_and_reports_it(fresh_database: str, reports_dir: Path) -> None:
    seed(fresh_database)
    result = materialize(fresh_database, KEY)
    assert result.success
    meta = metadata_of(result)
    assert meta["organizations"] == meta["dagster/row_count"] == 3
    assert (meta["events"], meta["failures"], meta["phi_accesses"], meta["after_hours"], meta["break_glass"],
            meta["disclosures"]) == (5, 1, 3, 2, 1, 1)
    assert meta["period_start"] == "2025-03-01T00:00:00+00:00" and meta["period_end"] == "2025-04-01T00:00:00+00:00"
    assert meta["complete"] is True

    path = summary_path(str(reports_dir), KEY)
    assert meta["path"] == str(path) and path.is_file()
    frame = read_report(path, "compliance_summary")
    assert list(frame["organization_id"].fillna("-")) == ["org-a", "org-b", "-"]
    assert frame["events"].tolist() == [3, 1, 1]
    with AuditDatabase(AuditSettings(database_url=fresh_database)) as db:
        expected = db.reports.compliance_summary("2025-03-01", "2025-04-01").frame
    pd.testing.assert_frame_equal(frame, expected)

    table = meta["summary"].splitlines()
    assert table[0].startswith("| organization | events | failures | PHI accesses |")
    assert table[2] == "| org-a | 3 | 1 | 2 | 1 | 1 | 1 | 3 |"
    assert table[4].startswith("| (no organization) | 1 |")

    with psycopg.connect(fresh_database) as conn:
        (entry,) = entries(conn, operation="report_export")
    assert entry.run_id == result.run_id and entry.row_count == 3 and entry.checksum == meta["sha256"]
    assert entry.details["report"] == "compliance_summary" and entry.details["requested_by"].startswith("dagster:")


def test_a_month_without_events_gives_an_empty_file_with_columns(fresh_database: str, reports_dir: Path) -> None:
    result = materialize(fresh_database, "2024-02-01")
    assert result.success
    meta = metadata_of(result)
    assert meta["organizations"] == 0 and meta["events"] == 0
    assert meta["summary"] == "No audit events in this period."
    frame = read_report(summary_path(str(reports_dir), "2024-02-01"), "compliance_summary")
    assert frame.empty and "phi_accesses" in frame.columns


def test_without_a_reports_directory_the_run_fails_naming_the_setting(fresh_database: str) -> None:
    result = materialize(fresh_database, KEY)
    assert not result.success
    assert "AUDIT_REPORTS__DIRECTORY" in failure_description(result)


def test_a_period_that_has_not_started_fails(fresh_database: str, reports_dir: Path) -> None:
    from audit_platform.partitions import PARTITIONS

    future = PARTITIONS.get_last_partition_key()  # the premake window reaches into the future
    assert future is not None
    result = materialize(fresh_database, future)
    assert not result.success and "has not started" in failure_description(result)
    assert not reports_dir.exists()


@pytest.mark.parametrize(
    ("tick", "key"),
    [
        (dt.datetime(2026, 12, 2, 6, tzinfo=UTC), "2026-11-01"),
        (dt.datetime(2026, 1, 2, 6, tzinfo=UTC), "2025-12-01"),  # across the year
    ],
)
def test_the_monthly_schedule_asks_for_the_month_that_closed(tick: dt.datetime, key: str) -> None:
    request = compliance_summary_schedule(dg.build_schedule_context(scheduled_execution_time=tick))
    assert isinstance(request, dg.RunRequest)
    assert request.partition_key == key and request.run_key == f"compliance_summary:{key}"


def test_the_schedule_skips_a_period_before_the_history_start() -> None:
    result = compliance_summary_schedule(dg.build_schedule_context(
        scheduled_execution_time=dt.datetime(2001, 2, 2, 6, tzinfo=UTC)))
    assert isinstance(result, dg.SkipReason) and "HISTORY_START" in (result.skip_message or "")
