"""Core functions the Dagster code location relies on, against real PostgreSQL, replica and Redis: partition stats,
archive re-verification, ledger consistency, replica lag, Redis status, the extended health report and the new
settings (history start, replica lag bounds, partition settings without a database URL)."""

from __future__ import annotations

import datetime as dt
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from audit_db_core import AuditDatabase, AuditSettings, ConfigurationError, ConnectionManager
from audit_db_core.config import partition_settings_from_env
from audit_local.demo import demo_events
from audit_db_core.health import redis_status
from audit_db_core.ledger import entries
from tests.conftest import TestServers as Servers
from tests.conftest import with_dbname
from tests.replication import replay_paused
from tests.conftest import archive_dir

UTC = dt.UTC


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AUDIT_REPLICA_URLS", "AUDIT_REDIS_URL", "AUDIT_ARCHIVE__ROOT_URI", "AUDIT_PARTITIONS__INTERVAL",
                 "AUDIT_PARTITIONS__HISTORY_START", "AUDIT_PARTITIONS__PREMAKE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def needs_replica(servers: Servers) -> list[str]:
    if not servers.replica_urls:
        pytest.skip("no replica: AUDIT_TEST_DATABASE_URL is set without AUDIT_TEST_REPLICA_URLS")
    return servers.replica_urls


# -- settings -------------------------------------------------------------------------------------------------------


def test_history_start_defaults_to_january_seven_years_back_and_reads_the_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AUDIT_DATABASE_URL", raising=False)
    assert partition_settings_from_env().history_start == dt.date(dt.datetime.now(UTC).year - 7, 1, 1)
    monkeypatch.setenv("AUDIT_PARTITIONS__HISTORY_START", "2015-06-01")
    monkeypatch.setenv("AUDIT_PARTITIONS__INTERVAL", "quarterly")
    ps = partition_settings_from_env()  # no AUDIT_DATABASE_URL needed
    assert ps.history_start == dt.date(2015, 6, 1) and ps.interval.months == 3
    assert AuditSettings(database_url="postgresql://u@h/d").partitions == ps  # the same values as the full settings
    monkeypatch.setenv("AUDIT_PARTITIONS__HISTORY_START", "last tuesday")
    with pytest.raises(ConfigurationError, match="AUDIT_PARTITIONS__HISTORY_START"):
        partition_settings_from_env()


def test_replica_lag_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    s = AuditSettings(database_url="postgresql://u@h/d")
    assert (s.replicas.max_lag_seconds, s.replicas.max_lag_bytes) == (30.0, 64 * 1024 * 1024)
    monkeypatch.setenv("AUDIT_REPLICAS__MAX_LAG_SECONDS", "5")
    monkeypatch.setenv("AUDIT_REPLICAS__MAX_LAG_BYTES", "1024")
    s = AuditSettings(database_url="postgresql://u@h/d")
    assert (s.replicas.max_lag_seconds, s.replicas.max_lag_bytes) == (5.0, 1024)
    monkeypatch.setenv("AUDIT_REPLICAS__MAX_LAG_SECONDS", "0")
    with pytest.raises(ConfigurationError, match="AUDIT_REPLICAS__MAX_LAG_SECONDS"):
        AuditSettings(database_url="postgresql://u@h/d")


# -- partition stats ------------------------------------------------------------------------------------------------


def test_stats_measures_rows_bytes_and_indexes(db: AuditDatabase, fresh_database: str) -> None:
    db.partitions.create_partition("2021-03")
    db.insert_many(demo_events(300, now=dt.datetime(2021, 4, 1, tzinfo=UTC), span=dt.timedelta(days=30)))
    stats = db.partitions.stats("2021-03")
    with psycopg.connect(fresh_database) as conn:
        (rows,) = conn.execute("SELECT count(*) FROM audit_log_p2021_03").fetchone()  # type: ignore[misc]
        (size,) = conn.execute("SELECT pg_total_relation_size('audit_log_p2021_03')").fetchone()  # type: ignore[misc]
        (parent_indexes,) = conn.execute(
            "SELECT count(*) FROM pg_index WHERE indrelid = 'audit_log'::regclass").fetchone()  # type: ignore[misc]
    assert stats.name == "audit_log_p2021_03" and stats.exists and stats.state == "active"
    assert stats.rows == rows == 300 and stats.bytes == size > 0
    assert len(stats.indexes) == parent_indexes and all(i.valid for i in stats.index_details)
    assert {i.method for i in stats.index_details} >= {"btree", "brin", "gin"}
    assert db.partitions.archivable_from("2021-03") == dt.datetime(2021, 4, 1, tzinfo=UTC) + dt.timedelta(days=90)


# -- archive verification and the ledger ----------------------------------------------------------------------------


@pytest.fixture
def archived(settings: AuditSettings, tmp_path: Path) -> Iterator[tuple[AuditDatabase, Path]]:
    root = tmp_path / "archive"
    tuned = settings.with_overrides(archive={"root_uri": root.as_uri(), "batch_rows": 500})
    with AuditDatabase(tuned) as db:
        for month in ("2021-01", "2021-02"):
            db.partitions.create_partition(month)
        db.insert_many(demo_events(400, now=dt.datetime(2021, 3, 1, tzinfo=UTC), span=dt.timedelta(days=58)))
        db.partitions.archive("2021-01")
        db.partitions.archive("2021-02")
        yield db, root


def test_verify_archives_rereads_every_archive_and_records_it(archived: tuple[AuditDatabase, Path],
                                                              fresh_database: str) -> None:
    db, root = archived
    assert db.partitions.verify_archives() == [("audit_log_p2021_01", []), ("audit_log_p2021_02", [])]
    data = next((archive_dir(root, "audit_log_p2021_02")).glob("*.parquet"))
    blob = bytearray(data.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    data.write_bytes(bytes(blob))
    results = dict(db.partitions.verify_archives(record=True, run_id="check-run"))
    assert results["audit_log_p2021_01"] == []
    assert results["audit_log_p2021_02"] and any("sha256" in p for p in results["audit_log_p2021_02"])
    with psycopg.connect(fresh_database) as conn:
        recorded = {e.partition_name: (e.outcome, e.run_id) for e in entries(conn, operation="verify")}
    assert recorded == {"audit_log_p2021_01": ("ok", "check-run"), "audit_log_p2021_02": ("failed", "check-run")}
    # A missing manifest is a problem of that archive, not an exception.
    (archive_dir(root, "audit_log_p2021_01") / "manifest.json").unlink()
    assert "no manifest" in dict(db.partitions.verify_archives())["audit_log_p2021_01"][0]


def test_verify_archives_needs_the_archive_root_only_when_archives_exist(
    archived: tuple[AuditDatabase, Path], settings: AuditSettings
) -> None:
    # The same database, opened without AUDIT_ARCHIVE__ROOT_URI.
    with AuditDatabase(settings) as plain, pytest.raises(ConfigurationError, match="AUDIT_ARCHIVE__ROOT_URI"):
        plain.partitions.verify_archives()


def test_verify_archives_without_archives_is_empty(db: AuditDatabase) -> None:
    assert db.partitions.verify_archives() == []


def test_ledger_consistency(archived: tuple[AuditDatabase, Path], fresh_database: str) -> None:
    db, _ = archived
    assert db.partitions.ledger_consistency() == []
    # Registry rows the ledger does not account for (as a manual change behind the library's back would leave).
    with psycopg.connect(fresh_database) as conn:
        conn.execute("INSERT INTO audit_partitions (partition_name, range_start, range_end) VALUES (%s, %s, %s)",
                     ("audit_log_p2001_01", dt.datetime(2001, 1, 1, tzinfo=UTC), dt.datetime(2001, 2, 1, tzinfo=UTC)))
        conn.execute(
            "INSERT INTO audit_partitions (partition_name, range_start, range_end, state, archive_uri,"
            " archive_checksum, archive_verified_at, purged_at) VALUES (%s, %s, %s, 'purged', 'file:///x', 'd', now(),"
            " now())",
            ("audit_log_p2001_02", dt.datetime(2001, 2, 1, tzinfo=UTC), dt.datetime(2001, 3, 1, tzinfo=UTC)))
    problems = db.partitions.ledger_consistency()
    assert problems == [
        "audit_log_p2001_01: registered, but the ledger has no successful create",
        "audit_log_p2001_02: registered, but the ledger has no successful create",
        "audit_log_p2001_02: purged, but the ledger has no successful archive",
        "audit_log_p2001_02: purged, but the ledger has no successful purge",
    ]


# -- replicas -------------------------------------------------------------------------------------------------------


def replica_urls_for(database_url: str, replicas: list[str]) -> list[str]:
    """The replicas' URLs of ``database_url``'s database, once the replicas have replayed its creation."""
    name = database_url.rsplit("/", 1)[1]
    urls = [with_dbname(u, name) for u in replicas]
    for url in urls:
        deadline = time.monotonic() + 15
        while True:
            try:
                psycopg.connect(url, connect_timeout=2).close()
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    return urls


def _replica_settings(fresh_database: str, replica_servers: list[str], **overrides: object) -> AuditSettings:
    return AuditSettings(database_url=fresh_database, replica_urls=replica_urls_for(fresh_database, replica_servers),
                         **overrides)


def test_replica_status_measures_real_lag(fresh_database: str, needs_replica: list[str]) -> None:
    settings = _replica_settings(fresh_database, needs_replica)
    statuses = ConnectionManager(settings).replica_status()  # works without opening the pools
    assert [s.name for s in statuses] == [f"replica-{i}" for i in range(len(needs_replica))]
    for s in statuses:
        assert s.reachable and s.in_recovery is True, s
        assert s.lag_bytes is not None and s.lag_bytes >= 0
        assert s.lag_seconds is not None and s.lag_seconds >= 0
        assert s.healthy and s.problem is None


def test_replica_status_sees_replay_paused_behind_the_primary(fresh_database: str, needs_replica: list[str]) -> None:
    settings = _replica_settings(fresh_database, needs_replica[:1], replicas={"max_lag_bytes": 1024})
    replica = settings.replica_urls[0].get_secret_value()
    with replay_paused(replica):
        with AuditDatabase(settings) as db:  # real writes on the primary the replica does not replay
            db.insert_many(demo_events(2000, now=dt.datetime.now(UTC)))
        time.sleep(0.3)
        (status,) = ConnectionManager(settings).replica_status()
        assert status.reachable and status.in_recovery
        assert status.lag_bytes is not None and status.lag_bytes > 1024
        assert status.lag_seconds is not None and status.lag_seconds > 0.2
        assert not status.healthy and "exceeds 1024" in (status.problem or "")
        with AuditDatabase(settings) as db:
            report = db.health()
        # A lagging replica degrades the report (the primary serves every read today); it is not unhealthy.
        assert report.healthy and report.status == "degraded" and not report.components["replica-0"].healthy
        assert report.components["primary"].healthy
    for _ in range(100):  # caught up again: lag back to zero
        (status,) = ConnectionManager(settings).replica_status()
        if status.lag_bytes == 0:
            break
        time.sleep(0.05)
    assert status.lag_bytes == 0 and status.lag_seconds == 0 and status.healthy


def test_unreachable_replica_is_reported_without_its_password(fresh_database: str) -> None:
    settings = AuditSettings(database_url=fresh_database,
                             replica_urls=[f"postgresql://app:ReplicaPw@127.0.0.1:{closed_port()}/x"],
                             pool={"connect_timeout_seconds": 1})
    (status,) = ConnectionManager(settings).replica_status()
    assert not status.reachable and not status.healthy and status.lag_bytes is None
    assert "ReplicaPw" not in repr(status) + str(status.to_dict()) and "app:***@" in status.url
    assert status.problem and status.problem.startswith("unreachable")


def test_no_replicas_no_status(settings: AuditSettings) -> None:
    assert ConnectionManager(settings).replica_status() == []


# -- Redis and the health report ------------------------------------------------------------------------------------


def test_redis_status(servers: Servers) -> None:
    plain = AuditSettings(database_url="postgresql://u@h/d")
    assert redis_status(plain).configured is False and redis_status(plain).healthy
    dead = redis_status(plain.with_overrides(redis_url=f"redis://:RedisPw@127.0.0.1:{closed_port()}/0"))
    assert dead.configured and dead.reachable is False and not dead.healthy
    assert dead.error and "RedisPw" not in str(dead.to_dict())
    if not servers.redis_url:
        pytest.skip("no Redis: AUDIT_TEST_DATABASE_URL is set without AUDIT_TEST_REDIS_URL")
    live = redis_status(plain.with_overrides(redis_url=servers.redis_url))
    assert live.reachable and live.healthy and live.latency_ms is not None and live.latency_ms >= 0


def test_health_report_includes_replicas_and_redis(fresh_database: str, servers: Servers) -> None:
    if not servers.replica_urls or not servers.redis_url:
        pytest.skip("needs the session's replica and Redis")
    settings = _replica_settings(fresh_database, servers.replica_urls).with_overrides(redis_url=servers.redis_url)
    with AuditDatabase(settings) as db:
        report = db.health()
    assert report.healthy, report.to_dict()
    assert {"primary", "schema", "replica-0", "redis"} <= set(report.components)
    replica = report.to_dict()["components"]["replica-0"]
    assert replica["details"]["in_recovery"] is True and replica["details"]["lag_bytes"] >= 0
    assert report.components["redis"].details["reachable"] is True
    with AuditDatabase(settings.with_overrides(redis_url=f"redis://127.0.0.1:{closed_port()}/0")) as db:
        down = db.health()
    assert down.status == "degraded" and "unreachable" in (down.components["redis"].error or "")
