"""Schedules evaluated at chosen times and op jobs executed in process, against real PostgreSQL."""

from __future__ import annotations

import datetime as dt
import socket
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pytest

from audit_db_core import AuditDatabase, AuditSettings, ConfigurationError
from audit_local.demo import demo_events
from audit_db_core.ledger import entries
from audit_platform.jobs import (
    archive_schedule,
    env_flag,
    health_check_job,
    index_maintenance_job,
    partition_maintenance_job,
    retention_purge_job,
    retention_purge_schedule,
)
from audit_platform.resources import AuditDatabaseResource

UTC = dt.UTC


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AUDIT_REPLICA_URLS", "AUDIT_REDIS_URL", "AUDIT_ARCHIVE__ROOT_URI", "AUDIT_PARTITIONS__PREMAKE",
                 "AUDIT_RETENTION__DEFAULT", "AUDIT_PLATFORM_PURGE_EXECUTE"):
        monkeypatch.delenv(name, raising=False)


def resources(url: str, **kwargs: str) -> dict[str, Any]:
    return {"audit_db": AuditDatabaseResource(database_url=url, **kwargs)}


def output_metadata(result: dg.ExecuteInProcessResult, step: str) -> dict[str, Any]:
    (event,) = [e for e in result.all_node_events if e.step_key == step and e.event_type_value == "STEP_OUTPUT"]
    return {k: v.value for k, v in event.step_output_data.metadata.items()}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- schedules ------------------------------------------------------------------------------------------------------


def test_archive_schedule_requests_exactly_the_eligible_periods(fresh_database: str) -> None:
    with AuditDatabase(AuditSettings(database_url=fresh_database)) as db:
        for month in ("2021-01", "2021-02", "2021-03", "2021-04"):
            db.partitions.create_partition(month)
    # On 2021-06-15 the active window (90 days) reaches back to 2021-03-17: January and February are past it.
    context = dg.build_schedule_context(scheduled_execution_time=dt.datetime(2021, 6, 15, 1, tzinfo=UTC),
                                        resources=resources(fresh_database))
    requests = archive_schedule(context)
    assert isinstance(requests, list)
    assert [r.partition_key for r in requests] == ["2021-01-01", "2021-02-01"]
    assert all(r.run_key and r.run_key.endswith("2021-06-15") for r in requests)
    # A month later March has left the window too.
    later = dg.build_schedule_context(scheduled_execution_time=dt.datetime(2021, 7, 15, 1, tzinfo=UTC),
                                      resources=resources(fresh_database))
    assert [r.partition_key for r in archive_schedule(later)] == ["2021-01-01", "2021-02-01", "2021-03-01"]


def test_archive_schedule_skips_when_nothing_is_eligible(fresh_database: str) -> None:
    # Only the premade current and future periods exist: all inside the active window.
    context = dg.build_schedule_context(scheduled_execution_time=dt.datetime.now(UTC),
                                        resources=resources(fresh_database))
    result = archive_schedule(context)
    assert isinstance(result, dg.SkipReason) and "nothing to archive" in (result.skip_message or "")


def test_purge_schedule_is_a_dry_run_unless_execution_is_enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    def dry_run() -> bool:
        request = retention_purge_schedule(dg.build_schedule_context())
        return request.run_config["ops"]["retention_purge"]["config"]["dry_run"]

    assert dry_run() is True
    monkeypatch.setenv("AUDIT_PLATFORM_PURGE_EXECUTE", "false")
    assert dry_run() is True
    monkeypatch.setenv("AUDIT_PLATFORM_PURGE_EXECUTE", "TRUE")
    assert dry_run() is False
    monkeypatch.setenv("AUDIT_PLATFORM_PURGE_EXECUTE", "yes please")
    with pytest.raises(ConfigurationError, match="AUDIT_PLATFORM_PURGE_EXECUTE"):
        dry_run()


def test_env_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AUDIT_PLATFORM_X", raising=False)
    assert env_flag("AUDIT_PLATFORM_X", True) is True
    monkeypatch.setenv("AUDIT_PLATFORM_X", " False ")
    assert env_flag("AUDIT_PLATFORM_X", True) is False
    monkeypatch.setenv("AUDIT_PLATFORM_X", "")
    assert env_flag("AUDIT_PLATFORM_X", False) is False


# -- op jobs --------------------------------------------------------------------------------------------------------


def test_partition_maintenance_premakes_and_rescues(fresh_database: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDIT_PARTITIONS__PREMAKE", "5")  # the template premade 3: two more to make
    with AuditDatabase(AuditSettings(database_url=fresh_database)) as db:
        db.insert_many(demo_events(60, now=dt.datetime(2022, 3, 1, tzinfo=UTC), span=dt.timedelta(days=59)))
        assert db.partitions.default_row_count() == 60
    result = partition_maintenance_job.execute_in_process(resources=resources(fresh_database),
                                                          instance=dg.DagsterInstance.ephemeral())
    assert result.success
    premade = output_metadata(result, "premake_partitions")
    assert premade["created"] == 2 and premade["existing"] == 4
    rescued = output_metadata(result, "rescue_default_rows")
    assert rescued["default_rows_before"] == 60 and rescued["rescued_rows"] == 60 and rescued["default_rows_after"] == 0
    assert "audit_log_p2022_01" in rescued["partitions"] and "audit_log_p2022_02" in rescued["partitions"]
    with AuditDatabase(AuditSettings(database_url=fresh_database)) as db:
        assert db.partitions.default_row_count() == 0
        assert {"audit_log_p2022_01", "audit_log_p2022_02"} <= {p.name for p in db.partitions.list_partitions()}
    # What it created shows as materializations of the audit_log_partition asset.
    reported = [e.partition for e in result.asset_materializations_for_node("rescue_default_rows")]
    assert sorted(reported) == ["2022-01-01", "2022-02-01"]
    with psycopg.connect(fresh_database) as conn:
        rescues = entries(conn, operation="rescue")
    assert {e.run_id for e in rescues} == {result.run_id}


def test_retention_purge_dry_run_changes_nothing(fresh_database: str, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDIT_ARCHIVE__ROOT_URI", (tmp_path / "archive").as_uri())
    monkeypatch.setenv("AUDIT_RETENTION__DEFAULT", "1 year")
    with AuditDatabase(AuditSettings(database_url=fresh_database)) as db:
        db.partitions.create_partition("2021-03")
        db.insert_many(demo_events(100, now=dt.datetime(2021, 4, 1, tzinfo=UTC), span=dt.timedelta(days=30)))
        db.partitions.archive("2021-03")
    # The launchpad's default: no run config at all is a dry run.
    result = retention_purge_job.execute_in_process(resources=resources(fresh_database),
                                                    instance=dg.DagsterInstance.ephemeral())
    assert result.success
    meta = output_metadata(result, "retention_purge")
    assert meta["dry_run"] is True and meta["purge"] == 1 and meta["purged"] == "none"
    assert "audit_log_p2021_03" in meta["decisions"] and "archive verified" in meta["decisions"]
    with AuditDatabase(AuditSettings(database_url=fresh_database)) as db:
        assert db.partitions.get("2021-03").state == "archived"
    with psycopg.connect(fresh_database) as conn:
        assert conn.execute("SELECT count(*) FROM audit_log_p2021_03").fetchone() == (100,)
        assert entries(conn, operation="purge") == []
    # Run config cannot switch the purge to execute while the deployment keeps purges dry.
    refused = retention_purge_job.execute_in_process(
        resources=resources(fresh_database), instance=dg.DagsterInstance.ephemeral(), raise_on_error=False,
        run_config={"ops": {"retention_purge": {"config": {"dry_run": False}}}},
    )
    assert not refused.success
    [failure] = [e for e in refused.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "AUDIT_PLATFORM_PURGE_EXECUTE=true" in failure.event_specific_data.error.message
    with AuditDatabase(AuditSettings(database_url=fresh_database)) as db:
        assert db.partitions.get("2021-03").state == "archived"
    # Executed where the deployment allows it (what the schedule asks for then), it drops the partition.
    monkeypatch.setenv("AUDIT_PLATFORM_PURGE_EXECUTE", "true")
    executed = retention_purge_job.execute_in_process(
        resources=resources(fresh_database), instance=dg.DagsterInstance.ephemeral(),
        run_config={"ops": {"retention_purge": {"config": {"dry_run": False}}}},
    )
    assert executed.success and output_metadata(executed, "retention_purge")["purged"] == "audit_log_p2021_03"
    with AuditDatabase(AuditSettings(database_url=fresh_database)) as db:
        assert db.partitions.get("2021-03").state == "purged"


def test_index_maintenance(fresh_database: str) -> None:
    with AuditDatabase(AuditSettings(database_url=fresh_database)) as db:
        db.insert_many(demo_events(200, span=dt.timedelta(hours=1)))
    result = index_maintenance_job.execute_in_process(resources=resources(fresh_database),
                                                      instance=dg.DagsterInstance.ephemeral())
    assert result.success
    meta = output_metadata(result, "optimize_indexes")
    assert meta["partitions"] >= 4 and meta["brin_summarize"] >= 4 and meta["analyze"] >= 1
    with psycopg.connect(fresh_database) as conn:
        assert {e.run_id for e in entries(conn, operation="optimize")} == {result.run_id}


def test_health_job_passes_on_a_healthy_database(fresh_database: str) -> None:
    result = health_check_job.execute_in_process(resources=resources(fresh_database),
                                                 instance=dg.DagsterInstance.ephemeral())
    assert result.success
    meta = output_metadata(result, "health_report")
    assert meta["status"] == "healthy" and "primary" in meta["components"]


def test_health_job_reports_its_numbers_under_stable_keys(fresh_database: str, servers: Any) -> None:
    if not servers.replica_urls:
        pytest.skip("no replica: AUDIT_TEST_DATABASE_URL is set without AUDIT_TEST_REPLICA_URLS")
    from tests.core.test_platform_support import replica_urls_for

    replicas = replica_urls_for(fresh_database, servers.replica_urls[:1])
    with AuditDatabase(AuditSettings(database_url=fresh_database)) as db:  # three rows without a partition
        db.insert_many(demo_events(3, now=dt.datetime(1999, 3, 1, tzinfo=dt.UTC)))
    result = health_check_job.execute_in_process(resources=resources(fresh_database, replica_urls=replicas[0]),
                                                 instance=dg.DagsterInstance.ephemeral())
    meta = output_metadata(result, "health_report")
    # Plain numbers (Dagster plots them run after run): lag per replica, DEFAULT rows, breakers, the cache.
    assert isinstance(meta["replica-0_lag_bytes"], int) and meta["replica-0_lag_bytes"] >= 0
    assert isinstance(meta["replica-0_lag_seconds"], float)
    assert meta["default_rows"] == 3
    assert meta["breakers_not_closed"] == 0 and meta["breaker_opens"] == 0
    assert isinstance(meta["cache_hit_ratio"], float) and isinstance(meta["cache_lookups"], int)


def test_health_job_fails_when_the_primary_is_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDIT_POOL__TIMEOUT_SECONDS", "1")
    monkeypatch.setenv("AUDIT_POOL__CONNECT_TIMEOUT_SECONDS", "1")
    url = f"postgresql://app:HiddenPw@127.0.0.1:{closed_port()}/audit"
    result = health_check_job.execute_in_process(resources=resources(url), instance=dg.DagsterInstance.ephemeral(),
                                                 raise_on_error=False)
    assert not result.success
    (failure,) = result.get_step_failure_events()
    description = failure.step_failure_data.user_failure_data.description  # type: ignore[union-attr]
    assert description.startswith("unhealthy") and "primary" in description
    assert "HiddenPw" not in description and "app:***@" in description


def test_health_job_reports_degraded_when_redis_is_down(fresh_database: str) -> None:
    # Redis is the cache: the library bypasses it, so the run succeeds, degraded (the WARN check surfaces it).
    result = health_check_job.execute_in_process(
        resources=resources(fresh_database, redis_url=f"redis://127.0.0.1:{closed_port()}/0"),
        instance=dg.DagsterInstance.ephemeral(), raise_on_error=False,
    )
    assert result.success
    meta = output_metadata(result, "health_report")
    assert meta["status"] == "degraded"

def test_lifecycle_checks_job_runs_the_checks_alone(fresh_database: str) -> None:
    from audit_db_core import AuditDatabase, AuditEvent, AuditSettings
    from audit_platform.definitions import defs
    from audit_platform.jobs import lifecycle_checks_job

    job = defs.resolve_job_def(lifecycle_checks_job.name)
    with AuditDatabase(AuditSettings(database_url=fresh_database)) as db:  # a row in DEFAULT: one check must fail
        db.insert(AuditEvent(action="a", status="success", principal_id="u",
                             event_time=dt.datetime(1999, 1, 1, tzinfo=dt.UTC)))
    result = job.execute_in_process(resources=resources(fresh_database), instance=dg.DagsterInstance.ephemeral(),
                                    raise_on_error=False)
    evaluations = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert evaluations.get("default_partition_empty") is False and evaluations.get("ledger_consistent") is True
    assert evaluations.get("breakers_closed") is True
    assert "integrity_verified" not in evaluations  # the daily integrity_job verifies; hourly would re-read too much
    assert not result.get_asset_materialization_events()  # checks only, nothing materialized
