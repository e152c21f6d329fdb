"""The telemetry overhead benchmark runs end to end at a tiny size and reports consistent numbers (never judged on
speed): every variant timed in every round, ratios that follow the medians, the SDK's figures checked."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk", reason="the SDK variant needs the 'dev' extra")

from tests.core.test_benchmark_cache import run_benchmark  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "telemetry_overhead.py"
ROUNDS = 3
EVENTS, LOOKUPS, QUERIES = 30, 40, 4

pytestmark = pytest.mark.slow  # one run of the benchmark: about 10-20 s

Run = tuple[subprocess.CompletedProcess[str], dict[str, Any]]


@pytest.fixture(scope="module")
def small_run(servers: Any, tmp_path_factory: pytest.TempPathFactory) -> Run:
    output = tmp_path_factory.mktemp("bench") / "telemetry_overhead.json"
    return run_benchmark(SCRIPT, ["--rows", "1500", "--days", "3", "--principals", "10", "--shapes", "4",
                                  "--rounds", str(ROUNDS), "--events", str(EVENTS), "--lookups", str(LOOKUPS),
                                  "--queries", str(QUERIES)], servers, output)


def test_every_variant_of_every_operation_was_timed_in_every_round(small_run: Run) -> None:
    _, report = small_run
    timing = report["timing"]
    assert timing["rounds"] == ROUNDS
    assert timing["sizes"] == {"insert_many": EVENTS, "l1_hit": LOOKUPS, "query": QUERIES}
    assert set(timing["operations"]) == {"insert_many", "l1_hit", "query"}
    for operation, variants in timing["operations"].items():
        assert set(variants) == {"off", "api", "sdk"}, operation
        assert variants["off"]["ratio"] == 1.0 and variants["off"]["paired_ratio"] == 1.0
    assert timing["sdk_blocks_checked"] == 3 * ROUNDS  # each SDK block's figures were read back


def test_the_sdk_held_exactly_what_its_blocks_did(small_run: Run) -> None:
    _, report = small_run
    checks = report["timing"]["sdk_checks"]
    assert checks["insert_many"] == {"operations": 1, "events_written": EVENTS, "spans": 1}
    assert checks["l1_hit"] == {"durations": 0, "spans": 0}  # counted by the cache, never timed
    assert checks["query"] == {"query_durations": QUERIES, "spans": QUERIES}


def test_ratios_and_targets_follow_the_medians(small_run: Run) -> None:
    proc, report = small_run
    timing = report["timing"]
    for clock, key in (("clock", "operations"), ("cpu", "cpu")):
        assert set(timing[key]) == {"insert_many", "l1_hit", "query"}
        for operation, variants in timing[key].items():
            for variant, m in variants.items():
                assert m["blocks"] == ROUNDS and 0 < m["min_us"] <= m["median_us"], (clock, operation, variant)
                expected = m["median_us"] / variants["off"]["median_us"]
                assert m["ratio"] == pytest.approx(expected, rel=1e-2), (clock, operation, variant)
                low, high = m["paired_ratio_quartiles"]
                assert low <= m["paired_ratio"] <= high, (clock, operation, variant)
                assert (m["added_us"] == 0) if variant == "off" else isinstance(m["added_us"], float)
                if variant != "off":
                    assert report["ratios"][f"{operation}_{variant}_over_off_{clock}"] == m["paired_ratio"]
    targets = report["targets"]
    assert set(targets) == {f"{op}_{v}_over_off" for op in ("insert_many", "l1_hit") for v in ("api", "sdk")}
    for key, t in targets.items():
        operation, variant = key.split("_over_off")[0].rsplit("_", 1)
        assert t["value"] == timing["cpu"][operation][variant]["paired_ratio"]  # judged on the client's CPU
        assert t["target"] == {"api": 1.01, "sdk": 1.05}[variant] and t["met"] == (t["value"] <= t["target"])
        assert key in proc.stdout
    assert "paired" in proc.stdout and "CPU of the calling thread" in proc.stdout
    env = report["environment"]
    assert env["opentelemetry-sdk"] and env["rows"] == 1500 and env["date_utc"].endswith("+00:00")
