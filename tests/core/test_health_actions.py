"""Recovery recommendations: each finding of the health report, made real, carries the action that fixes it — and
where the action is a command, running it makes the finding go away.

Conditions made for real: rows in DEFAULT, partitions of the premake window missing, a schema behind the package,
callers waiting on a full pool, an unreachable primary, Redis and replica, a replica whose replay is paused (real
lag), an open circuit breaker.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from contextlib import ExitStack
from typing import Any

import pytest

from audit_db_core import AuditDatabase, AuditEvent, AuditQuery, AuditSettings, health
from tests.core.test_cli import run
from tests.core.test_platform_support import closed_port, replica_urls_for
from tests.replication import replay_paused

UTC = dt.UTC


def late_event() -> AuditEvent:
    return AuditEvent(action="user.login", status="success", principal_id="late", event_time=dt.datetime(2001, 1, 1,
                                                                                                          tzinfo=UTC))


def cli_health(env: dict[str, str]) -> tuple[int, str, dict[str, Any]]:
    text = run("health", env=env)
    as_json = run("health", "--json", env=env)
    return text.returncode, text.stdout, json.loads(as_json.stdout)


def test_default_rows_recommend_rescue_and_rescue_fixes_them(fresh_database: str) -> None:
    with AuditDatabase(AuditSettings(database_url=fresh_database)) as db:
        db.insert(late_event())
    env = {"AUDIT_DATABASE_URL": fresh_database}
    code, text, report = cli_health(env)
    assert code == 0 and report["status"] == "degraded"  # degraded: the library works around it
    assert report["components"]["partitions"]["action"] == health.DEFAULT_ROWS
    assert report["recommendations"] == {"partitions": health.DEFAULT_ROWS}
    assert "fix: `audit-platform partitions rescue`" in text
    rescued = run("partitions", "rescue", env=env)
    assert rescued.returncode == 0, rescued.stderr
    code, text, report = cli_health(env)
    assert report["status"] == "healthy" and report["recommendations"] == {} and "fix:" not in text


def test_missing_partitions_recommend_maintenance_and_create_fixes_them(fresh_database: str) -> None:
    env = {"AUDIT_DATABASE_URL": fresh_database, "AUDIT_PARTITIONS__PREMAKE": "6"}  # migrate made 3 ahead
    _, text, report = cli_health(env)
    assert report["components"]["partitions"]["action"] == health.PARTITIONS_MISSING
    assert "`audit-platform partitions create`" in text
    assert run("partitions", "create", env=env).returncode == 0
    assert cli_health(env)[2]["status"] == "healthy"


def test_schema_behind_recommends_migrate_and_migrate_fixes_it(empty_database: str) -> None:
    env = {"AUDIT_DATABASE_URL": empty_database}
    code, _, report = cli_health(env)
    assert code == 1 and report["components"]["schema"]["action"] == health.SCHEMA_BEHIND
    assert run("migrate", env=env).returncode == 0
    assert cli_health(env)[2]["status"] == "healthy"


def test_unreachable_primary_recommends_checking_the_server() -> None:
    env = {"AUDIT_DATABASE_URL": f"postgresql://app:HiddenPw@127.0.0.1:{closed_port()}/x",
           "AUDIT_POOL__TIMEOUT_SECONDS": "1", "AUDIT_POOL__CONNECT_TIMEOUT_SECONDS": "1"}
    code, text, report = cli_health(env)
    assert code == 1 and report["recommendations"] == {"primary": health.PRIMARY_DOWN}
    assert "fix: start PostgreSQL or fix AUDIT_DATABASE_URL" in text and "HiddenPw" not in text


def test_callers_waiting_on_a_full_pool_recommend_a_larger_pool(fresh_database: str) -> None:
    settings = AuditSettings(database_url=fresh_database, pool={"min_size": 0, "max_size": 2, "timeout_seconds": 60})
    with AuditDatabase(settings) as db, ExitStack() as held:
        for _ in range(settings.pool.max_size):
            held.enter_context(db.connections.connection(operation="hold"))

        def wait_for_one() -> None:
            with db.connections.connection(operation="waiter"):
                pass

        def waiting() -> int:
            return int(db.connections.pool_stats()["primary"]["waiting"])

        reports: list[Any] = []
        waiter = threading.Thread(target=wait_for_one)
        checker = threading.Thread(target=lambda: reports.append(db.health()))
        waiter.start()
        assert _eventually(lambda: waiting() == 1)
        checker.start()
        assert _eventually(lambda: waiting() == 2)  # the check read the pool, then queued for a connection itself
        held.close()  # the connections come back: the waiter, then the check, get one
        waiter.join(30)
        checker.join(30)
    (report,) = reports
    pools = report.components["pools"]
    assert report.status == "degraded" and not pools.healthy and not pools.critical
    assert pools.details["waiting"] == {"primary": 1} and pools.action == health.POOL_WAITING_PRIMARY
    assert "AUDIT_POOL__MAX_SIZE" in pools.action


def _eventually(predicate: Any, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


def test_open_breaker_says_what_fails_meanwhile(db: AuditDatabase) -> None:
    for name in ("primary", "redis"):
        breaker = db.breakers.get(name)
        for _ in range(breaker.settings.failure_threshold):
            breaker.record_failure(ConnectionError("refused"))
    action = db.health().components["breakers"].action or ""
    assert action.startswith("primary: writes fail fast with CircuitOpenError") and "redis: L2 is off" in action


def test_unreachable_redis_and_replica_recommend_their_fixes(fresh_database: str) -> None:
    dead = f"postgresql://postgres@127.0.0.1:{closed_port()}/x"
    settings = AuditSettings(database_url=fresh_database, replica_urls=[dead], pool={"connect_timeout_seconds": 1},
                             redis_url=f"redis://127.0.0.1:{closed_port()}/0", cache={"redis_timeout_seconds": 0.5})
    with AuditDatabase(settings) as db:
        report = db.health()
        source = db.query(AuditQuery(), consistency="eventual", use_cache=False).extra["source"]
    assert report.status == "degraded"
    assert report.components["redis"].action == health.REDIS_DOWN
    assert report.components["replica-0"].action == health.REPLICA_DOWN
    assert source == "primary"  # what the action says: reads fall back to the primary


@pytest.mark.slow
def test_redis_without_a_cache_key_is_a_finding_that_names_the_key(fresh_database: str, servers: Any) -> None:
    if not servers.redis_url:
        pytest.skip("no Redis given for this server (AUDIT_TEST_REDIS_URL)")
    env = {"AUDIT_DATABASE_URL": fresh_database, "AUDIT_REDIS_URL": servers.redis_url, "AUDIT_CACHE__KEY": ""}
    code, text, report = cli_health(env)
    redis = report["components"]["redis"]
    assert report["status"] == "degraded" and not redis["healthy"] and redis["details"]["reachable"] is True
    assert redis["error"] == "L2 is off: AUDIT_CACHE__KEY is not set" and redis["action"] == health.CACHE_KEY_MISSING
    assert "fix: set AUDIT_CACHE__KEY" in text
    code, text, report = cli_health({**env, "AUDIT_CACHE__KEY": "11" * 32})  # with a key, L2 runs on that Redis
    assert report["components"]["redis"]["healthy"] and report["components"]["redis"]["details"]["l2"] is True


def test_replica_lag_over_the_bound_recommends_checking_replication(fresh_database: str, servers: Any) -> None:
    if not servers.replica_urls:
        pytest.skip("no replica: AUDIT_TEST_DATABASE_URL is set without AUDIT_TEST_REPLICA_URLS")
    replicas = replica_urls_for(fresh_database, servers.replica_urls)
    settings = AuditSettings(database_url=fresh_database, replica_urls=replicas,
                             replicas={"max_lag_bytes": 0, "monitor_interval_seconds": 0.2})
    with AuditDatabase(settings) as db, replay_paused(replicas[0]):
        db.insert(AuditEvent(action="user.login", status="success", principal_id="lagging"))
        report = db.health()
        assert _eventually(lambda: db.router.in_rotation() == [])
        source = db.query(AuditQuery(), consistency="eventual", use_cache=False).extra["source"]
    replica = report.components["replica-0"]
    assert "exceeds" in (replica.error or "") and replica.action == health.REPLICA_LAGGING
    assert source == "primary"
