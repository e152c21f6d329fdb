"""The ingest benchmark runs end to end and reports consistent numbers (never judged on absolute speed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "ingest.py"
EVENTS = 3000
METHODS = ("insert_many", "insert_many_from_dicts", "raw_copy", "row_by_row")

Run = tuple[subprocess.CompletedProcess[str], dict[str, Any]]


@pytest.fixture(scope="module")
def small_run(servers: Any, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """One small run against the session's server (``servers.database_url``), so no second server starts."""
    output = tmp_path_factory.mktemp("bench") / "ingest.json"
    env = {**os.environ, "AUDIT_BENCH_DATABASE_URL": servers.database_url}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--events", str(EVENTS), "--output", str(output)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc, json.loads(output.read_text())


def test_every_method_wrote_every_event(small_run: Run) -> None:
    _, report = small_run
    assert set(report["methods"]) == set(METHODS)
    for name in METHODS:
        method = report["methods"][name]
        assert method["events"] == EVENTS, name
        assert method["rows_per_second"] > 0, name
        assert method["seconds"] > 0, name
        assert method["rows_in_table"] == EVENTS + method["warmup_rows"], name


def test_ratios_are_the_quotients_of_the_rates(small_run: Run) -> None:
    _, report = small_run
    rates = {name: m["rows_per_second"] for name, m in report["methods"].items()}
    expected = {
        "insert_many_over_raw_copy": rates["insert_many"] / rates["raw_copy"],
        "insert_many_over_row_by_row": rates["insert_many"] / rates["row_by_row"],
    }
    for key, value in expected.items():
        assert report["ratios"][key] == pytest.approx(value, rel=1e-3, abs=1e-3), key
        target = report["targets"][key]
        assert target["value"] == report["ratios"][key]
        assert target["met"] == (target["value"] >= target["target"])
    assert report["targets"]["insert_many_over_raw_copy"]["target"] == 0.7
    assert report["targets"]["insert_many_over_row_by_row"]["target"] == 10


def test_environment_and_table_are_reported(small_run: Run) -> None:
    proc, report = small_run
    env = report["environment"]
    assert env["events"] == EVENTS and env["naive_events"] == EVENTS
    assert env["server_version"] and env["python_version"] and env["cpu_count"]
    assert env["batch_size"] > 0 and env["date_utc"].endswith("+00:00")
    for name in METHODS:
        assert name in proc.stdout
    assert "insert_many / raw_copy" in proc.stdout and "insert_many / row_by_row" in proc.stdout


SABOTAGE = """
import sys
import benchmarks.ingest as bench

honest = bench.insert_rows

def lying_insert_rows(conn, rows):
    honest(conn, rows[:-1])  # drops the last row but claims all of them
    return len(rows)

bench.insert_rows = lying_insert_rows
sys.exit(bench.main(sys.argv[1:]))
"""


def test_a_write_that_loses_rows_fails_the_run(servers: Any, tmp_path: Path) -> None:
    env = {**os.environ, "AUDIT_BENCH_DATABASE_URL": servers.database_url}
    output = tmp_path / "ingest.json"
    proc = subprocess.run(
        [sys.executable, "-c", SABOTAGE, "--events", "300", "--warmup-events", "50", "--output", str(output)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 2, proc.stderr
    assert "CHECK FAILED: row_by_row" in proc.stderr
    assert not output.exists()  # no report that would look like a result
