"""Asset checks run through Dagster against real states: PostgreSQL, the session's streaming replica and Redis."""

from __future__ import annotations

import datetime as dt
import json
import socket
import time
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
    rotation_pick,
)
from audit_platform.jobs import archive_verification_job
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


def _flip_a_byte(path: Path) -> None:
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    path.write_bytes(bytes(blob))


def _ledger(url: str, operation: str) -> list[tuple[str | None, str]]:
    with psycopg.connect(url) as conn:
        return sorted((e.partition_name, e.outcome) for e in entries(conn, operation=operation))


ARCHIVES = ["audit_log_p2021_01", "audit_log_p2021_02"]


def test_archives_verified_reads_manifests_and_one_archive_per_hour(fresh_database: str, two_archives: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    ok = run_check(archives_verified, fresh_database)
    values = meta(ok)
    assert ok.passed and ok.severity == ERROR and values["archives"] == 2 and values["failed"] == 0
    assert values["reread_in_full"] in ARCHIVES and isinstance(values["duration_ms"], float)
    assert _ledger(fresh_database, "verify") == []  # a passing hourly check adds nothing to the ledger

    # Corrupt a data file of BOTH archives (their manifests stay intact): only the archive re-read this hour can
    # notice — the other one's data files are not read by this run.
    for name in ARCHIVES:
        _flip_a_byte(next(archive_dir(two_archives, name).glob("*.parquet")))
    bad = run_check(archives_verified, fresh_database)
    values = meta(bad)
    sampled = values["reread_in_full"]
    assert not bad.passed and bad.severity == ERROR and values["failed"] == 1
    assert f"1 of 2 archive(s) do not verify: {sampled}" == bad.description
    assert "sha256 differs" in values["results"] and "manifest verified" in values["results"]
    assert _ledger(fresh_database, "verify") == [(sampled, "failed")]  # failures are ledgered

    # The rotation: each hour another archive is re-read, so every one is within len(archives) hours.
    hour = dt.datetime(2026, 11, 30, 14, 5, tzinfo=UTC)
    picks = [rotation_pick(ARCHIVES, hour + dt.timedelta(hours=h)) for h in range(4)]
    assert picks[0] != picks[1] and picks[:2] == picks[2:] and set(picks) == set(ARCHIVES)
    assert rotation_pick(ARCHIVES, hour) == rotation_pick(ARCHIVES, hour + dt.timedelta(minutes=50))
    assert rotation_pick([], hour) is None

    # A manifest changed after archival is seen on every run, whichever archive is re-read.
    other = next(n for n in ARCHIVES if n != sampled)
    manifest = archive_dir(two_archives, other) / "manifest.json"
    content = json.loads(manifest.read_bytes())
    content["created_at"] = "2021-03-01T00:00:00.000000Z"  # rewritten: its SHA-256 is no longer the registry's
    manifest.write_text(json.dumps(content))
    assert "manifest differs from the one recorded at archival" in meta(run_check(archives_verified,
                                                                             fresh_database))["results"]

    # Archives exist but the root is not configured: they cannot be verified (WARN, says which variable).
    monkeypatch.delenv("AUDIT_ARCHIVE__ROOT_URI")
    unset = run_check(archives_verified, fresh_database)
    assert not unset.passed and unset.severity == WARN
    assert (unset.description or "").startswith("AUDIT_ARCHIVE__ROOT_URI not set")


def test_archive_verification_job_rereads_every_archive_daily(fresh_database: str, two_archives: Path) -> None:
    resources = {"audit_db": AuditDatabaseResource(database_url=fresh_database)}
    ok = archive_verification_job.execute_in_process(resources=resources, instance=dg.DagsterInstance.ephemeral())
    assert ok.success
    (output,) = [e for e in ok.all_node_events if e.event_type_value == "STEP_OUTPUT"]
    values = {k: v.value for k, v in output.step_output_data.metadata.items()}
    assert values["archives"] == 2 and values["failed"] == 0 and values["duration_ms"] > 0
    assert _ledger(fresh_database, "verify") == [(n, "ok") for n in ARCHIVES]  # full verifications are ledgered

    _flip_a_byte(next(archive_dir(two_archives, ARCHIVES[1]).glob("*.parquet")))
    bad = archive_verification_job.execute_in_process(resources=resources, instance=dg.DagsterInstance.ephemeral(),
                                                      raise_on_error=False)
    assert not bad.success
    (failure,) = bad.get_step_failure_events()
    description = failure.step_failure_data.user_failure_data.description
    assert description.startswith(f"1 of 2 archive(s) do not verify: {ARCHIVES[1]}: ") and "sha256" in description
    assert _ledger(fresh_database, "verify") == [(ARCHIVES[0], "ok"), (ARCHIVES[0], "ok"), (ARCHIVES[1], "failed"),
                                                 (ARCHIVES[1], "ok")]


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


def _scans(url: str) -> dict[str, int]:
    """Sequential plus index scans started on each partition of ``audit_log`` (PostgreSQL's statistics)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        rows = conn.execute(
            "SELECT c.relname, coalesce(s.seq_scan, 0) + coalesce(s.idx_scan, 0) FROM pg_inherits i"
            " JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_stat_user_tables s ON s.relid = c.oid"
            " WHERE i.inhparent = 'audit_log'::regclass").fetchall()
    return {name: int(n) for name, n in rows}


def test_breakers_closed_probes_one_partition_not_the_whole_log(fresh_database: str) -> None:
    with AuditDatabase(AuditSettings(database_url=fresh_database)) as db:
        for month in ("2021-01", "2021-02", "2021-03"):
            db.partitions.create_partition(month)
        db.insert_many(demo_events(300, now=dt.datetime(2021, 4, 1, tzinfo=UTC), span=dt.timedelta(days=89)))
        db.insert_many(demo_events(50, span=dt.timedelta(days=2)))
        current = db.partitions.find_partition(dt.datetime.now(UTC))
    assert current is not None
    before = _scans(fresh_database)
    assert len(before) >= 7  # three old months, DEFAULT, the current period and the premade ones

    result = run_check(breakers_closed, fresh_database)
    assert result.passed and "this run only" in (result.description or "")
    assert meta(result)["open"] == meta(result)["half_open"] == meta(result)["not_closed"] == 0
    # The check's connections are closed, so their statistics reach the server; wait until the probe's scan shows.
    after = before
    for _ in range(50):
        after = _scans(fresh_database)
        if after[current.name] > before[current.name]:
            break
        time.sleep(0.1)
    changed = {name for name in after if after[name] != before.get(name)}
    assert changed == {current.name}  # one probe of the current period; no other partition (nor DEFAULT) read
