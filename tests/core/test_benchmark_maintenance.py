"""The maintenance benchmark runs end to end and reports consistent numbers (never judged on absolute speed).

Against the test session's server: where that server has no pg_partman (the local PostgreSQL the suite starts),
the comparison is skipped with its reason printed, and our side is still measured and checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "maintenance.py"
PASSES = 12
PREMAKE = 2
TINY = ["--passes", str(PASSES), "--warmup", "2", "--premake", str(PREMAKE)]
OURS = ("run_maintenance", "premake + rescue_default")
PARTMAN = "partman.run_maintenance"

Run = tuple[subprocess.CompletedProcess[str], dict[str, Any]]


def bench_env(servers: Any) -> dict[str, str]:
    return {**os.environ, "AUDIT_BENCH_DATABASE_URL": servers.database_url}


@pytest.fixture(scope="module")
def small_run(servers: Any, tmp_path_factory: pytest.TempPathFactory) -> Run:
    output = tmp_path_factory.mktemp("bench") / "maintenance.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), *TINY, "--output", str(output)],
                          cwd=REPO, env=bench_env(servers), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc, json.loads(output.read_text())


def test_report_shape_and_environment(small_run: Run) -> None:
    proc, report = small_run
    assert report["benchmark"] == "maintenance" and report["checks_passed"] is True
    env = report["environment"]
    assert env["server_version"] and env["python_version"] and env["cpu_count"]
    assert env["date_utc"].endswith("+00:00") and set(env["loadavg"]) == {"start", "after_passes"}
    params = report["parameters"]
    assert params == {"passes": PASSES, "warmup": 2, "premake": PREMAKE, "partitions": PREMAKE + 2,
                      "target_pass": "run_maintenance"}  # the window (current + PREMAKE) and DEFAULT
    assert "idle pass" in proc.stdout and "round trips" in proc.stdout


def test_our_idle_passes_are_measured_and_counted(small_run: Run) -> None:
    proc, report = small_run
    for name in OURS:
        v = report["passes"][name]
        assert v["n"] == PASSES, name
        assert 0 < v["min_ms"] <= v["median_ms"] <= v["p90_ms"] <= v["max_ms"], name
        assert v["min_ms"] <= v["mean_ms"] <= v["max_ms"], name
        # Each wait for the server is a statement or the pool's empty liveness query.
        assert v["round_trips"] == v["statements"] + v["liveness_checks"], name
        assert f"{name:<28}{v['median_ms']:>11.3f}" in proc.stdout
    idle = report["passes"]["run_maintenance"]
    # Nothing to do: one statement, no transaction around it, no lock, nothing written.
    assert idle["statements"] == 1 and idle["transaction_control"] == 0
    assert report["passes"]["premake + rescue_default"]["statements"] == 2


def test_the_pg_partman_comparison_or_why_it_was_skipped(small_run: Run) -> None:
    proc, report = small_run
    c = report["comparison"]
    if not c["available"]:
        assert PARTMAN not in report["passes"] and c["skipped_reason"]
        assert f"pg_partman comparison skipped: {c['skipped_reason']}" in proc.stdout
        return
    assert c["skipped_reason"] is None and c["pg_partman_version"]
    ours, theirs = report["passes"]["run_maintenance"], report["passes"][PARTMAN]
    assert theirs["n"] == PASSES and theirs["round_trips"] == 1
    assert c["ratio_median"] == pytest.approx(ours["median_ms"] / theirs["median_ms"], rel=2e-3, abs=2e-3)
    assert c["ratio_p90"] == pytest.approx(ours["p90_ms"] / theirs["p90_ms"], rel=2e-3, abs=2e-3)
    assert c["target_ratio"] == 1.5 and c["met"] == (ours["median_ms"] / theirs["median_ms"] <= 1.5)
    assert "run_maintenance / partman.run_maintenance" in proc.stdout


SABOTAGE = """
import sys
import benchmarks.maintenance as bench
from audit_db_core import ledger
from audit_db_core.partitions import PartitionManager

honest = PartitionManager.run_maintenance

def noisy(self, **kwargs):
    result = honest(self, **kwargs)
    with self._conn("sabotage") as conn:  # says nothing to do, yet writes to the ledger
        ledger.record(conn, "optimize", None, details={"idle": True})
    return result

PartitionManager.run_maintenance = noisy
sys.exit(bench.main(sys.argv[1:]))
"""


def test_an_idle_pass_that_writes_fails_the_run(servers: Any, tmp_path: Path) -> None:
    output = tmp_path / "maintenance.json"
    proc = subprocess.run([sys.executable, "-c", SABOTAGE, "--passes", "2", "--warmup", "0", "--output", str(output)],
                          cwd=REPO, env=bench_env(servers), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 2, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "CHECK FAILED" in proc.stderr and "ledger" in proc.stderr
    assert not output.exists()
