"""The cache benchmark runs end to end at a tiny size and reports consistent numbers (never judged on speed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("cachetools", reason="the L1 benchmark's baseline comes with the 'dev' extra")

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "cache.py"
SIZES = (1000, 4000)
LOOKUPS = 40
IMPLEMENTATIONS = ("ours", "cachetools_lru", "cachetools_ttl", "functools_lru_cache")

pytestmark = pytest.mark.slow  # each module runs its benchmark twice: about 20-30 s

Run = tuple[subprocess.CompletedProcess[str], dict[str, Any]]


def bench_env(servers: Any) -> dict[str, str]:
    """The session's servers for the benchmark (so no second set starts); the replica and Redis when it has them."""
    env = {**os.environ, "AUDIT_BENCH_DATABASE_URL": servers.database_url,
           "AUDIT_BENCH_REPLICA_URLS": ",".join(servers.replica_urls)}
    env.pop("AUDIT_BENCH_REDIS_URL", None)
    if servers.redis_url:
        env["AUDIT_BENCH_REDIS_URL"] = servers.redis_url
    return env


def run_benchmark(script: Path, arguments: list[str], servers: Any, output: Path, *, timeout: float = 240) -> Run:
    """Run a benchmark script on the session's servers: (the finished process, its JSON report); it must exit 0."""
    proc = subprocess.run([sys.executable, str(script), *arguments, "--output", str(output)],
                          cwd=REPO, env=bench_env(servers), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc, json.loads(output.read_text())


@pytest.fixture(scope="module")
def small_run(servers: Any, tmp_path_factory: pytest.TempPathFactory) -> Run:
    output = tmp_path_factory.mktemp("bench") / "cache.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--sizes", ",".join(map(str, SIZES)), "--ops", "3000", "--repeats", "2",
         "--rows", "3000", "--days", "3", "--window-days", "2", "--principals", "20", "--shapes", "6",
         "--lookups", str(LOOKUPS), "--compare-rev", "HEAD", "--output", str(output)],
        cwd=REPO, env=bench_env(servers), capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc, json.loads(output.read_text())


def test_l1_every_implementation_at_every_size(small_run: Run) -> None:
    _, report = small_run
    l1 = report["l1"]
    assert l1["sizes"] == list(SIZES)
    assert set(l1["implementations"]) == set(IMPLEMENTATIONS)
    for name, impl in l1["implementations"].items():
        assert set(impl["sizes"]) == {str(n) for n in SIZES}, name
        for n in SIZES:
            m = impl["sizes"][str(n)]
            assert m["entries"] == n
            assert m["get_ops_per_second"] > 0 and m["put_ops_per_second"] > 0, name
        first, last = impl["sizes"][str(SIZES[0])], impl["sizes"][str(SIZES[-1])]
        for op in ("get", "put"):
            expected = last[f"{op}_ops_per_second"] / first[f"{op}_ops_per_second"]
            assert impl["flatness"][op] == pytest.approx(expected, rel=1e-2), (name, op)


def test_l1_ratios_are_ours_over_cachetools(small_run: Run) -> None:
    _, report = small_run
    impls = report["l1"]["implementations"]
    for n in SIZES:
        ours, peer = impls["ours"]["sizes"][str(n)], impls["cachetools_lru"]["sizes"][str(n)]
        for op in ("get", "put"):
            expected = ours[f"{op}_ops_per_second"] / peer[f"{op}_ops_per_second"]
            key = f"{op}_ours_over_cachetools_lru"
            assert report["l1"]["ratios"][str(n)][key] == pytest.approx(expected, rel=1e-2)
            assert report["ratios"][f"l1_{key}_at_{n}"] == report["l1"]["ratios"][str(n)][key]


def test_each_tier_was_served_where_it_claims(small_run: Run, servers: Any) -> None:
    _, report = small_run
    lat = report["latency"]
    tiers = lat["tiers"]
    expected_tiers = {"database", "l1"} | ({"l2"} if servers.redis_url else set())
    assert set(tiers) == expected_tiers
    assert lat["l2_measured"] == bool(servers.redis_url)
    assert tiers["l1"]["served_by"] == {"cache-l1": LOOKUPS}
    if servers.redis_url:
        assert tiers["l2"]["served_by"] == {"cache-l2": LOOKUPS}
    database_server = "replica-0" if servers.replica_urls else "primary"
    assert tiers["database"]["served_by"] == {database_server: LOOKUPS}
    assert lat["reads_by_server"][database_server] == LOOKUPS  # the router counted exactly the uncached reads
    for tier, s in tiers.items():
        assert s["samples"] == LOOKUPS, tier
        assert 0 < s["p50_ms"] <= s["p95_ms"] <= s["p99_ms"] <= s["max_ms"], tier
    stats = lat["cache_stats"]
    assert stats["l1_hits"] == LOOKUPS
    assert stats["hit_ratio"] > 0
    assert stats["l2_hits"] == (LOOKUPS if servers.redis_url else 0)
    assert lat["events_per_page"] > 0


def test_latency_ratios_and_targets_follow_the_figures(small_run: Run) -> None:
    proc, report = small_run
    tiers, ratios = report["latency"]["tiers"], report["latency"]["ratios"]
    for tier in [t for t in ("l1", "l2") if t in tiers]:
        for p in ("p50", "p99"):
            expected = tiers["database"][f"{p}_ms"] / tiers[tier][f"{p}_ms"]
            assert ratios[f"database_over_{tier}_{p}"] == pytest.approx(expected, rel=2e-2, abs=0.01)
    l1_target = report["targets"]["l1_hit_p99_ms"]
    assert l1_target["value"] == tiers["l1"]["p99_ms"] and l1_target["target"] == 1.0
    assert l1_target["met"] == (l1_target["value"] < 1.0)
    cached = report["targets"]["cached_p99_ms"]
    assert cached["target"] == 100.0 and cached["met"] == (cached["value"] < 100.0)
    assert "ours / cachetools_lru" in proc.stdout and "database / l1_p99" in proc.stdout
    env = report["environment"]
    assert env["rows"] == 3000 and env["server_version"] and env["date_utc"].endswith("+00:00")


def test_the_cache_code_is_compared_with_a_revision(small_run: Run, servers: Any) -> None:
    proc, report = small_run
    lat = report["latency"]
    if not servers.redis_url:
        assert "compare" not in lat and "l2_sealing" not in lat  # both need Redis
        return
    compare = lat["compare"]
    assert compare["rev"] == "HEAD" and compare["lookups_per_tier"] == LOOKUPS and set(compare["tiers"]) == {"l1", "l2"}
    for tier, c in compare["tiers"].items():
        for key in ("p50_us", "p95_us", "p99_us", "mean_us"):
            assert 0 < c["this"][key] and 0 < c["rev"][key], (tier, key)
            assert c["this_over_rev"][key] == pytest.approx(c["this"][key] / c["rev"][key], rel=1e-2, abs=1e-3)
    assert compare["tiers"]["l1"]["this"]["p50_us"] < compare["tiers"]["l2"]["this"]["p50_us"]
    sealing = lat["l2_sealing"]
    overhead = 17 + 12 + 16  # header (format, created, TTL), nonce, GCM tag
    assert sealing["envelope_bytes"] > sealing["compressed_bytes"]  # a page is compressed (LZ4)
    assert sealing["sealed_bytes"] == sealing["compressed_bytes"] + overhead
    assert sealing["seal_us_p50"] > 0 and sealing["open_us_p50"] > 0
    assert "the cache's code against HEAD" in proc.stdout


def test_redis_keys_of_the_run_are_removed(small_run: Run, servers: Any) -> None:
    _, report = small_run
    prefix = report["latency"]["cache_key_prefix"]
    assert prefix.startswith("audit-bench-")
    if servers.redis_url:  # without Redis there is nothing to clean up (l2_measured is False, checked above)
        import redis

        client = redis.Redis.from_url(servers.redis_url)
        try:
            assert list(client.scan_iter(match=f"{prefix}:*", count=1000)) == []
            assert list(client.scan_iter(match=f"{prefix}-ab:*", count=1000)) == []  # the compared caches' too
        finally:
            client.close()


SABOTAGE = """
import sys
import benchmarks.cache as bench
from audit_db_core import AuditDatabase
from audit_db_core.query import QueryPage

honest = AuditDatabase.query

def forgetful_query(self, query, **kwargs):
    page = honest(self, query, **kwargs)
    if page.extra.get("source") == "cache-l1":  # an L1 hit that loses the page's last event
        return QueryPage(events=page.events[:-1], next_cursor=page.next_cursor, limit=page.limit, extra=page.extra)
    return page

AuditDatabase.query = forgetful_query
sys.exit(bench.main(sys.argv[1:]))
"""


def test_a_wrong_cached_page_fails_the_run(servers: Any, tmp_path: Path) -> None:
    output = tmp_path / "cache.json"
    proc = subprocess.run(
        [sys.executable, "-c", SABOTAGE, "--sizes", "100", "--ops", "100", "--repeats", "1", "--rows", "600",
         "--days", "2", "--window-days", "1", "--principals", "5", "--shapes", "2", "--lookups", "4",
         "--output", str(output)],
        cwd=REPO, env=bench_env(servers), capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 2, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "CHECK FAILED" in proc.stderr and "events differ" in proc.stderr
    assert not output.exists()  # no report that would look like a result
