"""The replication benchmark runs end to end on its own synchronous standby and reports consistent numbers (never
judged on absolute speed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("psutil", reason="the local servers need the 'local' extra")

pytestmark = [pytest.mark.slow, pytest.mark.local_servers]

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "replication.py"


def test_a_small_run_measures_every_mode_against_a_synchronous_standby(tmp_path: Path) -> None:
    output = tmp_path / "replication.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDIT_BENCH_")}  # its own local servers
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--events", "60", "--batch-events", "600", "--batch-size", "200",
         "--threads", "3", "--rounds", "3", "--output", str(output)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    report = json.loads(output.read_text())
    assert report["environment"]["server_settings"]["synchronous_standby_names"]  # the standby was synchronous
    for mode, workloads in report["modes"].items():
        for workload, figures in workloads.items():
            expected = 600 if workload == "insert_many" else 60
            assert figures["events"] == expected and figures["events_per_second"] > 0, (mode, workload)
    for mode, per_workload in report["ratios"].items():
        for workload, ratio in per_workload.items():
            quotient = (report["modes"][mode][workload]["events_per_second"]
                        / report["modes"]["local"][workload]["events_per_second"])
            assert ratio == pytest.approx(quotient, rel=1e-2), (mode, workload)
    assert "remote_apply" in proc.stdout and "vs local" in proc.stdout
