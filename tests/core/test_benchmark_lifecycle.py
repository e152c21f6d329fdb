"""The lifecycle benchmark runs end to end and reports consistent numbers (never judged on absolute speed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "lifecycle.py"
ROWS = 20_000
QUERY_ROWS = 24_000
CREATE_PERIODS = 6
MANY = 120

Run = tuple[subprocess.CompletedProcess[str], dict[str, Any]]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def small_run(servers: Any, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """One small run against the session's server (``servers.database_url``), so no second server starts."""
    output = tmp_path_factory.mktemp("bench") / "lifecycle.json"
    env = {**os.environ, "AUDIT_BENCH_DATABASE_URL": servers.database_url}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--rows", str(ROWS), "--quick", "--query-rows", str(QUERY_ROWS),
         "--create-periods", str(CREATE_PERIODS), "--output", str(output)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc, json.loads(output.read_text())


def approx(value: float) -> Any:
    return pytest.approx(value, rel=2e-3, abs=2e-3)


def test_report_shape_and_environment(small_run: Run) -> None:
    proc, report = small_run
    assert report["benchmark"] == "lifecycle"
    assert {"environment", "parameters", "creation", "purge", "query", "archive", "fill", "notes",
            "checks_passed", "elapsed_seconds"} <= set(report)
    env = report["environment"]
    assert env["server_version"] and env["python_version"] and env["cpu_count"]
    assert env["date_utc"].endswith("+00:00")
    assert set(env["loadavg"]) == {"start", "after_creation", "after_query", "after_archive_and_purge"}
    params = report["parameters"]
    assert params["rows"] == ROWS and params["quick"] is True and params["query_rows"] == QUERY_ROWS
    assert params["archive_rows"] == ROWS // 4 and params["drop_small_rows"] == ROWS // 10
    assert params["large_archive"] is False
    assert report["checks_passed"] > 0
    assert isinstance(report["notes"], list) and report["notes"]
    for heading in ("1. partition creation", "2. purge", "3. query", "4. archive", "DELETE / DROP", "target / actual"):
        assert heading in proc.stdout


def test_creation_counts_and_target_ratio(small_run: Run) -> None:
    _, report = small_run
    creation = report["creation"]
    assert creation["partitions"] == CREATE_PERIODS
    assert creation["per_partition_ms"]["n"] == CREATE_PERIODS
    assert creation["library_duration_ms"]["n"] == CREATE_PERIODS
    # the primary key, the 8 indexes of migration 0002 and the ingested_at BRIN of 0008
    assert creation["indexes_per_partition"] == 10
    premake = creation["premake"]
    assert premake["partitions"] == 12
    assert (premake["first_partition"], premake["last_partition"]) == ("audit_log_p2300_01", "audit_log_p2300_12")
    assert premake["ms_per_partition"] == approx(premake["seconds"] * 1000 / 12)
    target = creation["target"]
    assert target["target_seconds"] == 5.0 and target["actual_seconds"] == approx(premake["seconds"])
    assert target["target_over_actual"] == approx(target["target_seconds"] / target["actual_seconds"])
    assert target["met"] == (target["actual_seconds"] < target["target_seconds"])


def test_purge_counts_and_ratios(small_run: Run) -> None:
    _, report = small_run
    purge = report["purge"]
    assert purge["rows"] == ROWS
    assert purge["drop"]["rows"] == ROWS and purge["drop_small"]["rows"] == ROWS // 10
    assert purge["delete"]["rows"] == ROWS and purge["delete"]["deleted"] == ROWS
    assert purge["delete"]["indexes"] == 10
    assert "DROP TABLE" in purge["method_note"]
    ratios = purge["ratios"]
    assert ratios["delete_over_drop"] == approx(purge["delete"]["seconds"] / purge["drop"]["seconds"])
    assert ratios["delete_plus_vacuum_over_drop"] == approx(
        (purge["delete"]["seconds"] + purge["vacuum_after_delete"]["seconds"]) / purge["drop"]["seconds"])
    assert ratios["drop_over_drop_small"] == approx(purge["drop"]["seconds"] / purge["drop_small"]["seconds"])
    assert ratios["rows_over_rows_small"] == approx(10)
    assert ratios["bytes_over_bytes_small"] == approx(purge["drop"]["total_bytes"] / purge["drop_small"]["total_bytes"])
    assert ratios["drop_statement_over_drop_small_statement"] == approx(
        purge["drop"]["statement_seconds"] / purge["drop_small"]["statement_seconds"])
    for key in ("drop", "drop_small"):
        assert 0 <= purge[key]["commit_seconds"] <= purge[key]["seconds"], key
        assert purge[key]["statement_seconds"] + purge[key]["commit_seconds"] == approx(purge[key]["seconds"]), key
        assert purge[key]["total_bytes"] >= purge[key]["heap_bytes"] + purge[key]["index_bytes"] > 0, key
    fill = report["fill"]
    assert {f["rows"] for f in fill.values()} == {ROWS, ROWS // 10, ROWS // 4}


def test_query_rows_pruning_and_ratios(small_run: Run) -> None:
    _, report = small_run
    query = report["query"]
    assert query["total_rows"] == QUERY_ROWS and query["many_partitions"] == MANY
    cases = query["cases"]
    assert set(cases) == {"partitions_12", f"partitions_{MANY}", "unpartitioned"}
    assert (cases["partitions_12"]["partitions"], cases[f"partitions_{MANY}"]["partitions"]) == (12, MANY)
    assert cases["partitions_12"]["rows_in_queried_month"] == QUERY_ROWS // 12
    assert cases[f"partitions_{MANY}"]["rows_in_queried_month"] == QUERY_ROWS // MANY
    assert cases["unpartitioned"]["indexes"] == 10
    for label, case in cases.items():
        for mode in ("sql", "sql_unprepared"):
            assert case[mode]["ms"]["n"] == query["runs"], (label, mode)
            assert case[mode]["ms"]["median"] > 0, (label, mode)
            assert case[mode]["rows_returned"] == case["sql"]["rows_returned"], (label, mode)
        plans = case["sql"]["server_plans"]
        assert 0 < plans["generic"] + plans["custom"] <= query["runs"] + query["warmup_runs"] + 10, label
        assert case["sql_unprepared"]["server_plans"] == {"generic": 0, "custom": 0}, label  # never prepared
        limit_plus_one = query["query"]["limit"] + 1
        for principal, rows in case["sql"]["rows_returned"].items():
            assert rows == min(limit_plus_one, case["expected_rows"][principal]), (label, principal)
        assert sum(case["expected_rows"].values()) == case["rows_in_queried_month"], label
        explain = case["sql"]["explain"]
        assert explain["relations_scanned"], label
        generic = case["sql"]["explain_generic"]
        if case["partitions"]:
            assert explain["partitions_scanned"] == 1, (label, explain)  # pruned to the queried month
            assert explain["relations_scanned"] == ["audit_log_p2025_06"], label
            # the generic plan holds every partition and DEFAULT; all but one are pruned when it starts
            assert generic["relations_scanned"] == ["audit_log_p2025_06"], label
            assert generic["subplans_removed_at_run_time"] == case["partitions"], label
            assert case["library"]["ms"]["n"] == query["runs"] and case["library"]["content_hashes_verified"]
        else:
            assert explain["relations_scanned"] == ["audit_log_flat"]
    medians = {label: case["sql"]["ms"]["median"] for label, case in cases.items()}
    ratios = query["ratios"]
    assert ratios[f"p{MANY}_over_p12"] == approx(medians[f"partitions_{MANY}"] / medians["partitions_12"])
    assert ratios["unpartitioned_over_p12"] == approx(medians["unpartitioned"] / medians["partitions_12"])
    unprepared = {label: case["sql_unprepared"]["ms"]["median"] for label, case in cases.items()}
    base = unprepared["partitions_12"]
    assert ratios[f"unprepared_p{MANY}_over_p12"] == approx(unprepared[f"partitions_{MANY}"] / base)
    assert ratios["unprepared_unpartitioned_over_p12"] == approx(unprepared["unpartitioned"] / base)
    library = {label: cases[label]["library"]["ms"]["median"] for label in ("partitions_12", f"partitions_{MANY}")}
    assert ratios[f"library_p{MANY}_over_p12"] == approx(library[f"partitions_{MANY}"] / library["partitions_12"])


def test_archive_run_is_verified_and_consistent(small_run: Run) -> None:
    _, report = small_run
    archive = report["archive"]
    assert len(archive["runs"]) == 1 and archive["ratios"] == {}  # no 1M-row run below 1,000,000 rows
    run = archive["runs"][0]
    assert run["rows"] == ROWS // 4 and run["status"] == "archived" and run["verified"] is True
    assert run["partition"] == "audit_log_p2020_05"
    assert run["rows_per_second"] == approx(run["rows"] / run["seconds"])
    assert run["archive_over_relation"] == approx(run["archive_bytes"] / run["relation_bytes"])
    assert run["relation_bytes"] >= run["heap_bytes"] + run["index_bytes"] > 0
    assert run["files"] >= 1 and run["archive_bytes"] > 0
    assert run["rss_peak_delta_bytes"] == run["rss_peak_bytes"] - run["rss_baseline_bytes"]
    assert run["rss_peak_delta_bytes"] >= 0 and run["rss_samples"] > 0
    assert len(run["manifest_sha256"]) == 64 and len(run["registry_checksum"]) == 64
