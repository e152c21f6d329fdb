"""Asset checks run through Dagster against real states: PostgreSQL, the session's streaming replica and Redis."""

from __future__ import annotations

import datetime as dt
import socket
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pytest

from audit_db_core import AuditDatabase, AuditSettings
from audit_local.demo import demo_events
from audit_db_core.ledger import entries
from audit_platform.assets import audit_log_partition
from audit_platform.checks import (
    CHECKS,
    archives_verified,
    breakers_closed,
    default_partition_empty,
    ledger_consistent,
    premake_coverage,
    redis_reachable,
    replica_lag,
)
from audit_platform.resources import AuditDatabaseResource
from tests.conftest import TestServers as Servers
from tests.core.test_platform_support import replica_urls_for
from tests.replication import replay_paused
from tests.conftest import archive_dir

UTC = dt.UTC
WARN, ERROR = dg.AssetCheckSeverity.WARN, dg.AssetCheckSeverity.ERROR


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AUDIT_REPLICA_URLS", "AUDIT_REDIS_URL", "AUDIT_ARCHIVE__ROOT_URI", "AUDIT_PARTITIONS__PREMAKE",
                 "AUDIT_REPLICAS__MAX_LAG_BYTES", "AUDIT_REPLICAS__MAX_LAG_SECONDS"):
        monkeypatch.delenv(name, raising=False)


def run_check(check: dg.AssetChecksDefinition, url: str, **resource_config: str) -> dg.AssetCheckEvaluation:
    """Execute one check in a Dagster run (only the check is selected) and return its evaluation."""
    result = dg.materialize(
        [audit_log_partition, *CHECKS],
        selection=dg.AssetSelection.checks(check),
        resources={"audit_db": AuditDatabaseResource(database_url=url, **resource_config)},
        instance=dg.DagsterInstance.ephemeral(),
    )
    (evaluation,) = result.get_asset_check_evaluations()
    return evaluation


def meta(evaluation: dg.AssetCheckEvaluation) -> dict[str, Any]:
    return {k: v.value for k, v in evaluation.metadata.items()}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_premake_coverage(fresh_database: str, monkeypatch: pytest.MonkeyPatch) -> None:
    ok = run_check(premake_coverage, fresh_database)
    assert ok.passed and ok.severity == WARN
    monkeypatch.setenv("AUDIT_PARTITIONS__PREMAKE", "6")  # three more periods than the migration premade
    short = run_check(premake_coverage, fresh_database)
    assert not short.passed and short.severity == WARN
    assert meta(short)["missing"] == 3 and "missing" in (short.description or "")


def test_default_partition_empty(fresh_database: str) -> None:
    assert run_check(default_partition_empty, fresh_database).passed
    with AuditDatabase(AuditSettings(database_url=fresh_database)) as db:
        db.insert_many(demo_events(7, now=dt.datetime(2022, 6, 1, tzinfo=UTC), span=dt.timedelta(days=20)))
    failed = run_check(default_partition_empty, fresh_database)
    assert not failed.passed and failed.severity == WARN
    values = meta(failed)
    assert values["default_rows"] == 7 and values["periods"] == 1
    assert "| audit_log_p2022_05 | 2022-05-01 | 2022-06-01 | 7 |" in values["rows_per_period"]


@pytest.fixture
def two_archives(fresh_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "archive"
    monkeypatch.setenv("AUDIT_ARCHIVE__ROOT_URI", root.as_uri())
    with AuditDatabase(AuditSettings(database_url=fresh_database)) as db:
        for month in ("2021-01", "2021-02"):
            db.partitions.create_partition(month)
        db.insert_many(demo_events(200, now=dt.datetime(2021, 3, 1, tzinfo=UTC), span=dt.timedelta(days=58)))
        db.partitions.archive("2021-01")
        db.partitions.archive("2021-02")
    return root


def test_archives_verified(fresh_database: str, two_archives: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ok = run_check(archives_verified, fresh_database)
    assert ok.passed and ok.severity == ERROR and meta(ok)["archives"] == 2
    # Corrupt one data file: the check fails with ERROR and names the partition.
    data = next((archive_dir(two_archives, "audit_log_p2021_02")).glob("*.parquet"))
    blob = bytearray(data.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    data.write_bytes(bytes(blob))
    bad = run_check(archives_verified, fresh_database)
    assert not bad.passed and bad.severity == ERROR
    assert meta(bad)["failed"] == 1 and "audit_log_p2021_02" in (bad.description or "")
    assert "sha256 differs" in meta(bad)["results"]
    with psycopg.connect(fresh_database) as conn:
        outcomes = sorted((e.partition_name, e.outcome) for e in entries(conn, operation="verify"))
    assert outcomes == [("audit_log_p2021_01", "ok"), ("audit_log_p2021_01", "ok"),
                        ("audit_log_p2021_02", "failed"), ("audit_log_p2021_02", "ok")]
    # Archives exist but the root is not configured: they cannot be verified (WARN, says which variable).
    monkeypatch.delenv("AUDIT_ARCHIVE__ROOT_URI")
    unset = run_check(archives_verified, fresh_database)
    assert not unset.passed and unset.severity == WARN
    assert (unset.description or "").startswith("AUDIT_ARCHIVE__ROOT_URI not set")


def test_archives_verified_passes_without_archives_or_root(fresh_database: str) -> None:
    result = run_check(archives_verified, fresh_database)
    assert result.passed and meta(result)["results"] == "no archived partitions"


def test_ledger_consistent(fresh_database: str, two_archives: Path) -> None:
    assert run_check(ledger_consistent, fresh_database).passed
    with psycopg.connect(fresh_database) as conn:  # a registry row no lifecycle operation made
        conn.execute("INSERT INTO audit_partitions (partition_name, range_start, range_end) VALUES (%s, %s, %s)",
                     ("audit_log_p2001_01", dt.datetime(2001, 1, 1, tzinfo=UTC), dt.datetime(2001, 2, 1, tzinfo=UTC)))
    failed = run_check(ledger_consistent, fresh_database)
    assert not failed.passed and failed.severity == ERROR
    assert "audit_log_p2001_01: registered, but the ledger has no successful create" in (failed.description or "")


def test_redis_reachable(fresh_database: str, servers: Servers) -> None:
    unset = run_check(redis_reachable, fresh_database)
    assert unset.passed and meta(unset)["status"] == "not configured"
    down = run_check(redis_reachable, fresh_database, redis_url=f"redis://:RedisPw@127.0.0.1:{closed_port()}/0")
    assert not down.passed and down.severity == WARN and "RedisPw" not in str(meta(down)) + (down.description or "")
    if not servers.redis_url:
        pytest.skip("no Redis: AUDIT_TEST_DATABASE_URL is set without AUDIT_TEST_REDIS_URL")
    up = run_check(redis_reachable, fresh_database, redis_url=servers.redis_url)
    assert up.passed and meta(up)["status"] == "reachable" and meta(up)["latency_ms"] >= 0


def test_replica_lag_without_replicas_passes(fresh_database: str) -> None:
    result = run_check(replica_lag, fresh_database)
    assert result.passed and meta(result)["status"] == "no replicas configured"


def test_replica_lag_measured_on_the_sessions_replica(fresh_database: str, servers: Servers,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    if not servers.replica_urls:
        pytest.skip("no replica: AUDIT_TEST_DATABASE_URL is set without AUDIT_TEST_REPLICA_URLS")
    replicas = replica_urls_for(fresh_database, servers.replica_urls[:1])
    ok = run_check(replica_lag, fresh_database, replica_urls=",".join(replicas))
    values = meta(ok)
    assert ok.passed and values["replicas"] == 1 and values["replica-0_lag_bytes"] >= 0
    assert values["replica-0_lag_seconds"] >= 0 and values["max_lag_seconds"] == 30.0
    # Hold replay on the replica, write on the primary: the lag is real, and over a 1 KiB bound.
    monkeypatch.setenv("AUDIT_REPLICAS__MAX_LAG_BYTES", "1024")
    with replay_paused(replicas[0]):
        with AuditDatabase(AuditSettings(database_url=fresh_database)) as db:
            db.insert_many(demo_events(2000))
        lagging = run_check(replica_lag, fresh_database, replica_urls=",".join(replicas))
    assert not lagging.passed and lagging.severity == WARN
    assert meta(lagging)["replica-0_lag_bytes"] > 1024 and meta(lagging)["replica-0_lag_seconds"] > 0
    assert "exceeds 1024" in (lagging.description or "")


def test_breakers_closed_sees_open_breakers_of_other_processes(fresh_database: str, servers: Servers) -> None:
    if not servers.redis_url:
        pytest.skip("no Redis given for this server (AUDIT_TEST_REDIS_URL)")
    alone = run_check(breakers_closed, fresh_database)
    assert alone.passed and "this run only" in alone.description
    clean = run_check(breakers_closed, fresh_database, redis_url=servers.redis_url)
    assert clean.passed and "every process sharing the Redis" in clean.description
    # An application process whose replica breaker, then primary breaker, opened.
    with AuditDatabase(AuditSettings(database_url=fresh_database, redis_url=servers.redis_url)) as app:
        assert app.cache.wait_synced()
        replica = app.breakers.get("replica-0")
        for _ in range(replica.settings.failure_threshold):
            replica.record_failure(ConnectionError("refused"))

        def evaluate() -> dg.AssetCheckEvaluation:
            for _ in range(100):  # the app publishes from its background thread
                ev = run_check(breakers_closed, fresh_database, redis_url=servers.redis_url)
                if not ev.passed:
                    return ev
            return ev

        warn = evaluate()
        assert not warn.passed and warn.severity == WARN and "replica-0 open" in warn.description
        primary = app.breakers.get("primary")
        for _ in range(primary.settings.failure_threshold):
            primary.record_failure(ConnectionError("refused"))
        for _ in range(100):
            err = run_check(breakers_closed, fresh_database, redis_url=servers.redis_url)
            if err.severity == ERROR:
                break
        assert not err.passed and err.severity == ERROR and "primary open" in err.description
        assert meta(err)["not_closed"] == 2
    # the app closed: its breakers are withdrawn with it
    assert run_check(breakers_closed, fresh_database, redis_url=servers.redis_url).passed
