"""The read-path benchmark runs end to end at a tiny size and reports consistent numbers (never judged on speed)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.core.test_benchmark_cache import bench_env, run_benchmark

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "read_path.py"
LOOKUPS = 30
COUNTED = 10
SHAPES = 4

pytestmark = pytest.mark.slow  # two runs of the benchmark: about 20-40 s

Run = tuple[subprocess.CompletedProcess[str], dict[str, Any]]
SMALL = ["--rows", "3000", "--principals", "10", "--shapes", str(SHAPES), "--lookups", str(LOOKUPS),
         "--count-queries", str(COUNTED), "--codec-repeats", "5"]


@pytest.fixture(scope="module")
def small_run(servers: Any, tmp_path_factory: pytest.TempPathFactory) -> Run:
    return run_benchmark(SCRIPT, SMALL, servers, tmp_path_factory.mktemp("bench") / "read_path.json")


def test_every_method_was_timed_and_served_where_it_claims(small_run: Run, servers: Any) -> None:
    _, report = small_run
    timing = report["timing"]
    methods = timing["methods"]
    expected = {"raw", "query", "l1", "raw_tuned"} | ({"l2"} if servers.redis_url else set())
    assert set(methods) == expected and timing["l2_measured"] == bool(servers.redis_url)
    for name, m in methods.items():
        assert m["samples"] == LOOKUPS, name
        assert 0 < m["p50_ms"] <= m["p95_ms"] <= m["p99_ms"] <= m["max_ms"], name
    assert methods["query"]["served_by"] == {"primary": LOOKUPS}  # strong: the primary, never the cache
    assert methods["l1"]["served_by"] == {"cache-l1": LOOKUPS}
    if servers.redis_url:
        assert methods["l2"]["served_by"] == {"cache-l2": LOOKUPS}
    assert report["query"]["shapes"] == SHAPES and report["query"]["page_size"] == 100
    assert report["query"]["rows_in_month"] > SHAPES * 100  # every shape had more than a page
    assert report["environment"]["rows"] == 3000 and report["environment"]["date_utc"].endswith("+00:00")


def test_ratios_and_targets_follow_the_figures(small_run: Run) -> None:
    proc, report = small_run
    methods = report["timing"]["methods"]
    raw = methods["raw"]
    for name, m in methods.items():
        for p in ("p50", "p99"):
            assert m[f"over_raw_{p}"] == pytest.approx(m[f"{p}_ms"] / raw[f"{p}_ms"], rel=2e-2, abs=0.01), name
            if name != "raw":
                assert report["ratios"][f"{name}_over_raw_{p}"] == m[f"over_raw_{p}"]
    tuned = report["timing"]["query_over_raw_tuned"]
    assert tuned["p50"] == pytest.approx(methods["query"]["p50_ms"] / methods["raw_tuned"]["p50_ms"], rel=2e-2,
                                         abs=0.01)
    targets = report["targets"]
    assert targets["query_p50_over_raw"]["value"] == methods["query"]["over_raw_p50"]
    assert targets["query_p99_over_raw"]["value"] == methods["query"]["over_raw_p99"]
    assert targets["query_round_trips"]["value"] == report["round_trips"]["query"]
    assert {k: t["target"] for k, t in targets.items() if k != "l2_p50_over_raw"} == {
        "query_p50_over_raw": 1.25, "query_p99_over_raw": 1.5, "query_round_trips": 1}
    if "l2" in methods:
        assert targets["l2_p50_over_raw"] == {"value": methods["l2"]["over_raw_p50"], "target": 0.7,
                                              "met": methods["l2"]["over_raw_p50"] <= 0.7}
    for key, t in targets.items():
        assert t["met"] == (t["value"] <= t["target"]), key
        assert f"{key:<20}" in proc.stdout and ("met" in proc.stdout or "MISSED" in proc.stdout)


def test_round_trips_are_counted_per_query(small_run: Run, servers: Any) -> None:
    proc, report = small_run
    trips = report["round_trips"]
    assert trips["queries_counted"] == COUNTED
    assert trips["raw"] == 1.0  # one execute + fetchall in autocommit: one exchange on the wire
    variants = {"raw", "query"} | ({"query_eventual", "query_after_lsn"} if servers.replica_urls else set())
    assert set(trips) - {"queries_counted"} == variants
    assert all(trips[v] >= 1 for v in variants)
    assert "round trips" in proc.stdout


def test_l2_encodings_are_compared_on_a_page(small_run: Run, servers: Any) -> None:
    proc, report = small_run
    codecs = report["l2_codecs"]
    if not servers.redis_url:
        assert codecs is None
        return
    candidates = codecs["candidates"]
    # orjson is a candidate where it is installed (the dev extra has it; the core-only lane does not).
    names = {"json", "msgspec_json", "msgspec_msgpack"} | ({"orjson"} if importlib.util.find_spec("orjson") else set())
    assert set(candidates) == {n + c for n in names for c in ("", "+zlib", "+lz4")}
    assert codecs["stored"] == "msgspec_msgpack+lz4" and codecs["baseline"] == "msgspec_json+zlib"
    assert codecs["events"] == 100 and codecs["repeats"] == 5
    base = candidates[codecs["baseline"]]["hit_us"]
    overhead = 17 + 12 + 16  # header, nonce, GCM tag
    for name, c in candidates.items():
        assert c["hit_us"] == pytest.approx(c["open_and_decode_us"] + c["redis_get_us"], abs=0.2), name
        assert c["hit_over_baseline"] == pytest.approx(c["hit_us"] / base, rel=2e-2, abs=0.01), name
        assert c["encode_and_seal_us"] > 0 and c["redis_get_us"] > 0, name
        if name.endswith(("+zlib", "+lz4")):
            assert c["sealed_bytes"] < candidates[name.split("+")[0]]["plain_bytes"], name  # a page compresses
        else:
            assert c["sealed_bytes"] == c["plain_bytes"] + overhead, name
    assert "L2 encodings of one 100-event page" in proc.stdout and "msgspec_msgpack+lz4" in proc.stdout


CODEC_SABOTAGE = """
import sys
import dataclasses
import benchmarks.cache_codecs as codecs
import benchmarks.read_path as bench

honest = codecs._msgspec_json_decode
codecs._msgspec_json_decode = lambda text: dataclasses.replace(honest(text), events=honest(text).events[1:])
sys.exit(bench.main(sys.argv[1:]))
"""


def test_an_encoding_that_loses_an_event_fails_the_run(servers: Any, tmp_path: Path) -> None:
    if not servers.redis_url:
        pytest.skip("the encodings are compared only with Redis (no AUDIT_TEST_REDIS_URL for this server)")
    output = tmp_path / "read_path.json"
    proc = subprocess.run(
        [sys.executable, "-c", CODEC_SABOTAGE, "--rows", "1500", "--principals", "5", "--shapes", "2", "--lookups",
         "4", "--count-queries", "2", "--codec-repeats", "2", "--output", str(output)],
        cwd=REPO, env=bench_env(servers), capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 2, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "CHECK FAILED" in proc.stderr and "msgspec_json: the decoded page differs" in proc.stderr
    assert not output.exists()


SABOTAGE = """
import sys
import benchmarks.read_path as bench
from audit_db_core import AuditDatabase
from audit_db_core.query import QueryPage

honest = AuditDatabase.query

def forgetful_query(self, query, **kwargs):
    page = honest(self, query, **kwargs)
    if page.extra.get("source") == "primary":  # an uncached page that loses its last event
        return QueryPage(events=page.events[:-1], next_cursor=page.next_cursor, limit=page.limit, extra=page.extra)
    return page

AuditDatabase.query = forgetful_query
sys.exit(bench.main(sys.argv[1:]))
"""


def test_a_wrong_page_fails_the_run(servers: Any, tmp_path: Path) -> None:
    output = tmp_path / "read_path.json"
    proc = subprocess.run(
        [sys.executable, "-c", SABOTAGE, "--rows", "1500", "--principals", "5", "--shapes", "2", "--lookups", "4",
         "--count-queries", "2", "--output", str(output)],
        cwd=REPO, env=bench_env(servers), capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 2, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "CHECK FAILED" in proc.stderr and "events differ" in proc.stderr
    assert not output.exists()  # no report that would look like a result
