"""The load benchmark runs end to end at a tiny size: no errors, every acknowledged event stored, the cache hit,
and a lost write fails the run (never judged on speed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.core.test_benchmark_cache import bench_env

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "load.py"
CLIENTS = 20
TINY = ["--clients", str(CLIENTS), "--duration", "3", "--baseline-duration", "1.5", "--shapes", "40",
        "--rows", "3000", "--days", "3", "--principals", "20"]
OPS = ("insert", "insert_many", "query", "count", "read", "write")

pytestmark = pytest.mark.slow  # each module runs its benchmark twice: about 20-30 s

Run = tuple[subprocess.CompletedProcess[str], dict[str, Any]]


@pytest.fixture(scope="module")
def small_run(servers: Any, tmp_path_factory: pytest.TempPathFactory) -> Run:
    output = tmp_path_factory.mktemp("bench") / "load.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), *TINY, "--output", str(output)],
                          cwd=REPO, env=bench_env(servers), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc, json.loads(output.read_text())


def test_no_errors_and_every_acknowledged_event_is_stored(small_run: Run) -> None:
    _, report = small_run
    assert set(report["phases"]) == {"cached", "uncached"}
    for name, phase in report["phases"].items():
        assert phase["errors"]["count"] == 0, (name, phase["errors"])
        events = phase["events"]
        assert events["acknowledged"] > 0, name
        assert events["acknowledged"] == events["stored"], name
        assert events["duplicates_reported"] == 0, name
    checks = report["checks"]
    assert checks == {"errors": 0, "acknowledged": checks["stored"], "stored": checks["stored"],
                      "acknowledged_equals_stored": True, "passed": True}
    assert checks["stored"] == sum(p["events"]["stored"] for p in report["phases"].values())


def test_phases_report_throughput_and_latency_per_operation(small_run: Run) -> None:
    _, report = small_run
    for name, phase in report["phases"].items():
        assert phase["clients"] == CLIENTS
        assert phase["elapsed_seconds"] > 0
        lat = phase["latency"]
        assert set(lat) == set(OPS), name
        assert lat["read"]["count"] == lat["query"]["count"] + lat["count"]["count"]
        assert lat["write"]["count"] == lat["insert"]["count"] + lat["insert_many"]["count"]
        assert phase["operations"] == lat["read"]["count"] + lat["write"]["count"] > 0
        assert phase["operations_per_second"] == pytest.approx(phase["operations"] / phase["elapsed_seconds"],
                                                               rel=1e-2)
        for op in ("read", "write"):
            s = lat[op]
            assert s["count"] > 0, (name, op)
            assert 0 < s["p50_ms"] <= s["p95_ms"] <= s["p99_ms"] <= s["max_ms"], (name, op)
    assert report["phases"]["uncached"]["use_cache"] is False and report["phases"]["cached"]["use_cache"] is True


def test_the_cache_served_the_cached_phase_only(small_run: Run, servers: Any) -> None:
    _, report = small_run
    cached, uncached = report["phases"]["cached"], report["phases"]["uncached"]
    assert cached["hit_ratio"] > 0
    assert cached["cache"]["hits"] > 0 and cached["cache"]["hit_ratio"] == cached["hit_ratio"]
    assert any(k.startswith("cache-") for k in cached["pages_served_by"])
    assert not any(k.startswith("cache-") for k in uncached["pages_served_by"])
    # Every uncached read reached a server; the router counted them (replica-N, or primary without replicas).
    servers_counted = sum(v for k, v in uncached["reads_by_server"].items() if k == "primary" or k.startswith("replica"))
    assert servers_counted == uncached["latency"]["read"]["count"]
    if servers.replica_urls:
        assert uncached["reads_by_server"].get("replica-0", 0) > 0
    target = report["targets"]["hit_ratio"]
    assert target["value"] == cached["hit_ratio"] and target["target"] == 0.9
    assert target["met"] == (target["value"] > 0.9)
    ratios = report["ratios"]
    expected = cached["reads_per_second"] / uncached["reads_per_second"]
    assert ratios["read_throughput_cached_over_uncached"] == pytest.approx(expected, rel=2e-2)


def test_workload_shapes_and_table(small_run: Run) -> None:
    proc, report = small_run
    wl = report["workload"]
    assert wl["shapes"] == 40
    assert sum(wl["shape_kinds"].values()) == 40
    assert len(wl["today_shapes"]) == 4
    assert 0 < wl["today_share_of_reads"] < 1
    for text in ("uncached", "cached", "hit ratio", "checks: errors 0"):
        assert text in proc.stdout


SABOTAGE = """
import sys, itertools
import benchmarks.load as bench
from audit_db_core import AuditDatabase

honest = AuditDatabase.insert
calls = itertools.count()

def lossy_insert(self, event):
    if next(calls) % 5 == 0:
        return True  # acknowledges an event it never stored
    return honest(self, event)

AuditDatabase.insert = lossy_insert
sys.exit(bench.main(sys.argv[1:]))
"""


def test_a_lost_write_fails_the_run(servers: Any, tmp_path: Path) -> None:
    output = tmp_path / "load.json"
    args = [*TINY, "--duration", "1.5", "--baseline-duration", "1"]
    proc = subprocess.run([sys.executable, "-c", SABOTAGE, *args, "--output", str(output)],
                          cwd=REPO, env=bench_env(servers), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 2, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "CHECK FAILED" in proc.stderr
    report = json.loads(output.read_text())
    assert report["checks"]["passed"] is False
    assert report["checks"]["acknowledged"] > report["checks"]["stored"]
