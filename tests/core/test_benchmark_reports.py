"""The reports benchmark runs end to end at a small size and reports consistent numbers (never judged on speed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("pandas", reason="HIPAA reports need the 'reports' extra")

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "reports.py"
EVENTS = 20_000
RUNS = 2
VARIANTS = {
    "access": ["library", "library_any_type", "sequential_scan", "pandas"],
    "activity": ["library", "sequential_scan", "pandas"],
    "compliance_summary": ["library", "pandas"],
}

Run = tuple[subprocess.CompletedProcess[str], dict[str, Any]]


def bench_env(servers: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDIT_")}
    return {**env, "AUDIT_BENCH_DATABASE_URL": servers.database_url}


@pytest.fixture(scope="module")
def small_run(servers: Any, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """One small run against the session's server, so no second server starts."""
    output = tmp_path_factory.mktemp("bench") / "reports.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--events", str(EVENTS), "--runs", str(RUNS), "--output", str(output)],
        cwd=REPO, env=bench_env(servers), capture_output=True, text=True, timeout=280,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc, json.loads(output.read_text())


def test_every_case_and_variant_is_timed(small_run: Run) -> None:
    proc, report = small_run
    assert report["load"]["events"] == EVENTS and report["load"]["unindexed_copy"]["rows"] == EVENTS
    assert report["parameters"]["runs"] == RUNS
    assert {name: list(case["ms"]) for name, case in report["cases"].items()} == VARIANTS
    for name, case in report["cases"].items():
        assert len(case["rows_per_run"]) == RUNS, name
        for variant, ms in case["ms"].items():
            assert ms["n"] == RUNS and 0 < ms["min"] <= ms["median"] <= ms["max"], (name, variant)
    assert report["cases"]["activity"]["rows_per_run"] == [EVENTS // 1000] * RUNS  # 1,000 users, 1 of 10 orgs each
    assert report["cases"]["compliance_summary"]["rows_per_run"] == [10] * RUNS
    assert report["checks_passed"] > 0
    for name in VARIANTS:
        assert name in proc.stdout


def test_ratios_are_the_quotients_of_the_medians(small_run: Run) -> None:
    _, report = small_run
    for case in report["cases"].values():
        library = case["ms"]["library"]["median"]
        for variant, ratio in case["speedup"].items():
            assert ratio == pytest.approx(case["ms"][variant]["median"] / library, rel=1e-2, abs=1e-3)


def test_plans_show_the_indexes_and_the_baseline_scan(small_run: Run) -> None:
    _, report = small_run
    plans = report["cases"]["access"]["plans"]
    assert any("target_resource" in (s["index"] or "") for s in plans["library"])
    assert [s["node"] for s in plans["sequential_scan"]] == ["Seq Scan"]
    assert [s["node"] for s in report["cases"]["activity"]["plans"]["sequential_scan"]] == ["Seq Scan"]


SABOTAGE = """
import sys
import benchmarks.reports as bench
from audit_db_core.reports import ReportManager

honest = ReportManager.activity_report

def lossy(self, *args, **kwargs):
    report = honest(self, *args, **kwargs)
    object.__setattr__(report, "frame", report.frame.iloc[1:])  # drops the first row
    return report

ReportManager.activity_report = lossy
sys.exit(bench.main(sys.argv[1:]))
"""


def test_a_report_that_loses_rows_fails_the_run(servers: Any, tmp_path: Path) -> None:
    output = tmp_path / "reports.json"
    proc = subprocess.run(
        [sys.executable, "-c", SABOTAGE, "--events", "5000", "--runs", "1", "--output", str(output)],
        cwd=REPO, env=bench_env(servers), capture_output=True, text=True, timeout=280,
    )
    assert proc.returncode == 2, proc.stderr
    assert "CHECK FAILED" in proc.stderr and "activity" in proc.stderr
    assert not output.exists()  # no report that would look like a result
