"""The code location loads (what `dagster dev` / the webserver do first), without a database, with every job,
schedule, sensor, asset and check the lifecycle needs, schedules RUNNING and in UTC."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import dagster as dg

REPO = Path(__file__).resolve().parents[2]

JOBS = {"partition_maintenance_job", "archive_job", "archive_verification_job", "retention_purge_job",
        "index_maintenance_job", "health_check_job", "lifecycle_checks_job", "compliance_summary_job", "integrity_job",
        "subject_request_job"}
SCHEDULES = {
    "partition_maintenance_schedule": ("15 0 * * *", "partition_maintenance_job"),
    "archive_schedule": ("0 1 * * *", "archive_job"),
    "archive_verification_schedule": ("30 4 * * *", "archive_verification_job"),
    "retention_purge_schedule": ("0 2 * * *", "retention_purge_job"),
    "index_maintenance_schedule": ("0 3 * * 1", "index_maintenance_job"),
    "health_check_schedule": ("*/5 * * * *", "health_check_job"),
    "lifecycle_checks_schedule": ("40 * * * *", "lifecycle_checks_job"),
    "compliance_summary_schedule": ("0 6 2 * *", "compliance_summary_job"),
    "integrity_schedule": ("45 0 * * *", "integrity_job"),
}
SENSORS = {"run_failure_alert_sensor", "default_partition_sensor", "partition_registry_sensor"}
ASSETS = {"audit_log_partition", "audit_log_archive", "compliance_summary"}
CHECKS = {"premake_coverage", "default_partition_empty", "archives_verified", "replica_lag", "redis_reachable",
          "breakers_closed", "ledger_consistent", "integrity_verified"}


def test_definitions_load() -> None:
    from audit_platform.definitions import defs

    assert isinstance(defs, dg.Definitions)
    defs.get_repository_def()  # resolves everything, as the webserver does


def test_everything_is_defined() -> None:
    from audit_platform.definitions import defs
    from audit_platform.partitions import PARTITIONS

    repo = defs.get_repository_def()
    assert JOBS <= {j.name for j in repo.get_all_jobs()}
    assert {s.name for s in repo.schedule_defs} == set(SCHEDULES)
    assert SENSORS <= {s.name for s in repo.sensor_defs}
    assert {k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()} == ASSETS
    checks = repo.asset_graph.asset_check_keys
    assert {c.name for c in checks} == CHECKS and {c.asset_key.to_user_string() for c in checks} == {"audit_log_partition"}
    for name in ASSETS:
        assert repo.asset_graph.get(dg.AssetKey(name)).partitions_def == PARTITIONS
    assert repo.get_job("archive_job").partitions_def == PARTITIONS
    upstream = repo.asset_graph.get(dg.AssetKey("audit_log_archive")).parent_keys
    assert upstream == {dg.AssetKey("audit_log_partition")}


def test_the_guide_lists_exactly_what_is_defined() -> None:
    """docs/guides/dagster-platform.md's first table names every job, schedule, sensor and check, and no other."""
    from audit_platform.definitions import defs

    guide = (REPO / "docs" / "guides" / "dagster-platform.md").read_text()
    listed: dict[str, set[str]] = {}
    for kind, names in re.findall(r"^\| (assets[^|]*|jobs|schedules|asset checks[^|]*|sensors) \| (.*) \|$", guide,
                                  re.M):
        listed.setdefault(kind.split(" (")[0], set()).update(re.findall(r"`(\w+)`", names))
    repo = defs.get_repository_def()
    assert listed["jobs"] == JOBS == {j.name for j in repo.get_all_jobs() if not j.name.startswith("__")}
    assert listed["schedules"] == set(SCHEDULES)
    assert listed["sensors"] == SENSORS == {s.name for s in repo.sensor_defs}
    assert listed["asset checks"] == CHECKS
    assert listed["assets"] - {"audit_log_lifecycle", "compliance_reports"} == ASSETS


def test_schedules_are_running_by_default_and_utc() -> None:
    from audit_platform.definitions import defs

    repo = defs.get_repository_def()
    for name, (cron, job) in SCHEDULES.items():
        schedule = repo.get_schedule_def(name)
        assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING, name
        assert schedule.execution_timezone == "UTC", name
        assert (schedule.cron_schedule, schedule.job_name) == (cron, job)


def test_resources_show_variable_names_not_values() -> None:
    from audit_platform.definitions import defs

    audit_db = defs.resources["audit_db"]
    assert isinstance(audit_db.database_url, dg.EnvVar) and audit_db.database_url.env_var_name == "AUDIT_DATABASE_URL"
    assert "alerts" in defs.resources


def _load_in_subprocess(env: dict[str, str]) -> dict[str, object]:
    code = (
        "import json\n"
        "from audit_platform.definitions import defs\n"
        "repo = defs.get_repository_def()\n"
        "print(json.dumps({s.name: s.default_status.value for s in repo.schedule_defs}))\n"
    )
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AUDIT_", "DAGSTER_"))}
    out = subprocess.run([sys.executable, "-c", code], check=False, cwd=REPO, env={**base, **env}, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_loading_needs_no_database_and_schedules_can_start_stopped() -> None:
    # No AUDIT_DATABASE_URL at all: the code location still loads (resources connect only when used).
    assert set(_load_in_subprocess({}).values()) == {"RUNNING"}
    stopped = _load_in_subprocess({"AUDIT_PLATFORM_SCHEDULES_ENABLED": "false",
                                   "AUDIT_DATABASE_URL": "postgresql://nobody:pw@127.0.0.1:1/none"})
    assert set(stopped) == set(SCHEDULES) and set(stopped.values()) == {"STOPPED"}


def test_partitions_follow_the_interval_setting() -> None:
    code = (
        "from audit_platform.partitions import PARTITIONS\n"
        "print(type(PARTITIONS).__name__, PARTITIONS.cron_schedule, PARTITIONS.get_first_partition_key())\n"
    )
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AUDIT_", "DAGSTER_"))}
    env = {**base, "AUDIT_PARTITIONS__INTERVAL": "quarterly", "AUDIT_PARTITIONS__HISTORY_START": "2020-05-17"}
    out = subprocess.run([sys.executable, "-c", code], check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["TimeWindowPartitionsDefinition", "0", "0", "1", "1,4,7,10", "*", "2020-04-01"]
    bad = subprocess.run([sys.executable, "-c", code], check=False, cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={**base, "AUDIT_PARTITIONS__INTERVAL": "10 days"})
    assert bad.returncode != 0 and "AUDIT_PARTITIONS__INTERVAL" in bad.stderr
